"""How a program working from a node's home reaches the consortium: its node's HTTP API
(``NodeClient``) and the store nodes (``store_client``, as the home's node, over mutual
TLS). ``services.session.Session`` builds on these; tests and benchmarks that speak raw
transactions use ``NodeClient`` directly."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import httpx

from twinledger.config import NodeConfig, passphrase, read_run_file
from twinledger.core.encoding import encode
from twinledger.core.types import MAX_COMMIT_WAIT_SECONDS, Transaction, encode_transaction, sign_transaction
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import SigningKey
from twinledger.crypto.tls import client_context
from twinledger.errors import BadRequest, NotCommitted, TransactionFailed, TwinledgerError
from twinledger.ledger.genesis import Genesis
from twinledger.store.client import StoreClient
from twinledger.store.placement import Replication, store_nodes
from twinledger.store.protocol import StoreTls


class NodeUnreachable(TwinledgerError):
    code = "node_unreachable"


def segment(value: str, what: str = "reference") -> str:
    """``value`` as one path segment of an API address: never empty, never more than one
    segment (a reference like ``../auth/tokens`` must not address another resource)."""
    if not value or value in (".", ".."):
        raise BadRequest(f"the {what} {value!r} names no single resource")
    return quote(value, safe="")


def api_url(config: NodeConfig) -> str:
    run = read_run_file(config)
    if run is not None:
        return str(run["api"])
    scheme = "https" if config.api_needs_tls else "http"
    return f"{scheme}://{config.api_host}:{config.api_port}"


class NodeClient:
    def __init__(self, config: NodeConfig, timeout: float = 30.0) -> None:
        self.config = config
        self.url = api_url(config)
        verify: Any = True
        if self.url.startswith("https"):  # the home's own node, by its own certificate: no other member's will do
            verify = client_context(config.cert("consortium-ca"), config.cert("node-chain"),
                                    config.key("tls"), passphrase(), pinned=config.cert("node-chain"))  # fmt: skip
        self.http = httpx.Client(base_url=self.url, timeout=timeout, verify=verify)

    def close(self) -> None:
        self.http.close()

    @property
    def auth_headers(self) -> dict[str, str]:
        """What authenticates a request as the home's operator (its node writes the token
        when it starts; a request made before then goes without)."""
        token = self.config.api_token()
        return {"authorization": f"Bearer {token}"} if token is not None else {}

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs["headers"] = {**self.auth_headers, **kwargs.get("headers", {})}
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise NodeUnreachable(
                f"node at {self.url} is not reachable; is it running? "
                f"(twinledger node start --home {self.config.home})"
            ) from exc
        if response.status_code >= 400:
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise TwinledgerError(error.get("message", f"HTTP {response.status_code}"),
                                  code=error.get("code", "http_error"))  # fmt: skip
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """A JSON resource ({} if the answer is not JSON)."""
        response = self._send(method, path, **kwargs)
        return response.json() if response.headers.get("content-type", "").startswith("application/json") else {}

    def text(self, path: str, **kwargs: Any) -> str:
        return self._send("GET", path, **kwargs).text

    def next_nonce(self, sender: bytes) -> int:
        return int(self.request("GET", f"/v1/accounts/{sender.hex()}/nonce")["next_nonce"])

    def submit(self, tx: Transaction) -> dict[str, Any]:
        return self.request("POST", "/v1/transactions", content=encode_transaction(tx),
                            headers={"content-type": "application/octet-stream"})  # fmt: skip

    def submit_batch(self, txs: list[Transaction]) -> dict[str, Any]:
        body = encode([encode_transaction(tx) for tx in txs])
        return self.request("POST", "/v1/transactions/batch", content=body,
                            headers={"content-type": "application/octet-stream"})  # fmt: skip

    def call(self, key: SigningKey, contract: str, method: str, args: dict[str, Any], chain_id: str) -> Transaction:
        """Sign and submit one call with the key's next nonce; returns the transaction."""
        tx = sign_transaction(key, chain_id=chain_id, nonce=self.next_nonce(key.public), contract=contract,
                              method=method, args=args, timestamp=int(time.time() * 1000))  # fmt: skip
        self.submit(tx)
        return tx

    def commit(self, key: SigningKey, contract: str, method: str, args: dict[str, Any], chain_id: str,
               wait: float = 30.0, check: bool = False) -> dict[str, Any]:  # fmt: skip
        """Sign, submit and wait for the commit; the committed transaction's view, whose
        receipt says whether the call succeeded (with ``check``, TransactionFailed if not)."""
        tx = self.call(key, contract, method, args, chain_id)
        view = self.transaction(tx.hash.hex(), wait=wait)
        if view.get("status") != "committed":
            raise NotCommitted(f"transaction {tx.hash.hex()} was not committed within {wait:.0f} s")
        receipt = view["receipt"]
        if check and receipt["status"] != "ok":
            raise TransactionFailed(receipt["message"] or receipt["error"], code=receipt["error"])
        return view

    def transaction(self, tx_hash: str, *, proof: bool = False, wait: float = 0.0) -> dict[str, Any]:
        """A transaction as the node knows it; waits up to ``wait`` seconds for its commit
        (the node waits a minute at most per request, so a longer wait asks again)."""
        deadline = time.monotonic() + wait
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            step = min(left, MAX_COMMIT_WAIT_SECONDS)
            view = self.request("GET", f"/v1/transactions/{tx_hash}", params={"proof": str(proof).lower(),
                                "wait": str(step)}, timeout=step + (self.http.timeout.read or 30.0))  # fmt: skip
            if view.get("status") != "pending" or left <= MAX_COMMIT_WAIT_SECONDS:
                return dict(view)

    def block(self, block_id: str, wait: float = 0.0) -> dict[str, Any]:
        return self.request("GET", f"/v1/blocks/{block_id}", params={"wait": str(wait)})

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/v1/health")


def store_client(config: NodeConfig, members: dict[str, Any]) -> StoreClient:
    """A client of the store nodes ``members`` (GET /v1/members) lists, as this home's node.
    The home's own node is reached where its run file says it listens (its configured port
    may be 0: any free port)."""
    genesis = Genesis.read(config.genesis_path)
    tls = StoreTls.of_home(config)
    own = config.signing_key().public
    running = (read_run_file(config) or {}).get("storage")
    nodes = [replace(node, endpoint=running) if node.signing_key == own and running else node
             for node in store_nodes(members["organisations"])]  # fmt: skip
    return StoreClient(nodes, tls, Replication(genesis.store_replication, genesis.store_write_quorum))


def sharing_public(members: dict[str, Any], organisation: str) -> kpcpre.PublicKey | None:
    """``organisation``'s public sharing key as a membership view lists it (None if it has none)."""
    for org in members["organisations"]:
        if org["name"] == organisation and org.get("kpcpre_key"):
            return kpcpre.PublicKey.from_bytes(bytes.fromhex(org["kpcpre_key"]))
    return None
