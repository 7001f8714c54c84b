"""The node process: the composition root that wires the components its configuration
enables, serves the API and runs consensus.

Threads: the asyncio loop serves the API and drives consensus; the ledger service
(``ledger.py``) owns the chain on a thread of its own. The components: ``roles.py``
(the peer network, the off-chain store, the ingest listener), ``sync.py`` (block sync,
part of the peer network) and ``status.py`` (what the node reports about itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import uvicorn

from twinledger.abc import RunningNode, StateReader, SubmitResult, TransactionLocation
from twinledger.api.app import create_app
from twinledger.config import NodeConfig, passphrase
from twinledger.consensus import create_consensus
from twinledger.contracts import default_runtime
from twinledger.core.proof import InclusionProof
from twinledger.core.types import BlockHeader, Receipt, Transaction
from twinledger.crypto.tls import server_context
from twinledger.errors import CannotListen
from twinledger.ingest.service import IngestService
from twinledger.ledger.chain import Chain, KeepFilter, keep_all, keep_filter
from twinledger.ledger.genesis import Genesis
from twinledger.ledger.mempool import Mempool
from twinledger.ledger.store import open_store
from twinledger.net.peers import PeerManager
from twinledger.node import status
from twinledger.node.certificate import CertificateRenewal
from twinledger.node.ledger import LedgerService
from twinledger.node.roles import ChainDirectory, IngestRole, PeerNetwork, StoreRole
from twinledger.services.accounts import AccountStore, ensure_home_token
from twinledger.store.server import StoreService

log = logging.getLogger("twinledger.node")
T = TypeVar("T")


class ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: it re-raises SIGTERM after serving, which
    would end the process before the node closes its store and workers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def stop(self) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


def _keep(config: NodeConfig) -> KeepFilter:
    """Which transactions' arguments this node keeps (all, for an archive or full node)."""
    if config.keeps_everything:
        return keep_all
    own = frozenset({config.signing_key().public, config.signing_key("operator").public})
    return keep_filter(frozenset(config.keep_contracts), own)


class Node(RunningNode):
    """Builds the ledger service and the components the configuration enables, and wires
    them through the ledger's hooks; runs them until told to stop."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.certificate = CertificateRenewal(config)
        self.certificate.renew_or_warn()  # before any TLS context is made from it
        genesis = Genesis.read(config.genesis_path)
        self.chain_store = open_store(config.store_url)
        self.consensus = create_consensus(genesis, config.signing_key() if config.produces_blocks else None)
        chain = Chain(self.chain_store, default_runtime(), self.consensus, genesis, _keep(config))
        self.ledger = LedgerService(chain, Mempool(config.mempool_max_txs), config.home / "keys" / "vote-guard")
        self.peers = PeerNetwork(config, self.ledger) if config.p2p_port is not None else None
        if self.peers is not None:
            self.ledger.gossip = self.peers.broadcast
            self.ledger.fetch_blocks = self.peers.sync.request_blocks
        directory = ChainDirectory(self.ledger)
        self.store_role = StoreRole(config, self.ledger, directory) if config.storage_port is not None else None
        self.ingest_role = (IngestRole(config, self.ledger, directory, self.store_role)
                            if config.ingest_port is not None else None)  # fmt: skip
        self.accounts = AccountStore(config.home / "data" / "accounts.db")
        ensure_home_token(config, self.accounts)
        self.started = time.time()
        self.stopping = False

    # -- running -------------------------------------------------------------------------------
    async def run(self, ready: Callable[[str], None] | None = None) -> None:
        """Serve the API and produce blocks until SIGINT/SIGTERM."""
        sock, url = self._api_socket()
        server = self._api_server()

        def stop() -> None:
            self.stopping = True
            server.stop()

        loop = asyncio.get_running_loop()
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(stop_signal, stop)
        await self._start_roles()
        producer = asyncio.create_task(self.consensus.run(self.ledger), name="consensus")
        renewal = asyncio.create_task(self.certificate.run(), name="certificate")
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="api")
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            await serving
        self._write_run_file(url)
        log.info("node %s/%s serving on %s", self.config.organisation, self.config.name, url)
        if ready is not None:
            ready(url)
        try:
            done, _ = await asyncio.wait({producer, serving}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is producer and not task.cancelled() and task.exception() is not None:
                    log.error("block production stopped: %s", task.exception())
                    server.should_exit = True
            await serving
        finally:
            renewal.cancel()
            await self._stop(producer)

    def _api_socket(self) -> tuple[socket.socket, str]:
        """The API's socket, bound first so that a port in use fails the start, and its URL."""
        config = self.config
        sock = socket.socket(socket.AF_INET6 if ":" in config.api_host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.api_host, config.api_port))
        except OSError as exc:
            sock.close()
            raise CannotListen.of("the API", config.api_host, config.api_port, exc,
                                  f"[api] port in {config.home / 'node.toml'}") from None  # fmt: skip
        sock.listen(1024)
        host, port = sock.getsockname()[:2]
        scheme = "https" if config.api_needs_tls else "http"
        return sock, f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"

    def _api_server(self) -> ApiServer:
        config = self.config
        server_config = uvicorn.Config(create_app(self, self.accounts), log_level="warning", access_log=False,
                                       proxy_headers=False,  # the client's address is the peer's, never a header's
                                       timeout_graceful_shutdown=5, lifespan="off")  # fmt: skip
        server_config.load()
        if config.api_needs_tls:
            server_config.ssl = server_context(config.cert("consortium-ca"), config.cert("node-chain"),
                                               config.key("tls"), passphrase())  # fmt: skip
        return ApiServer(server_config)

    async def _start_roles(self) -> None:
        """The peer network first, and the store before ingest, which stores through it."""
        config, toml = self.config, self.config.home / "node.toml"
        starts = [(self.peers, "peers", config.p2p_host, config.p2p_port, "p2p"),
                  (self.store_role, "the store", config.storage_host, config.storage_port, "storage"),
                  (self.ingest_role, "ingest", config.ingest_host, config.ingest_port, "ingest")]  # fmt: skip
        for part, what, host, port, section in starts:
            if part is None:
                continue
            try:
                await part.start()
            except OSError as exc:
                raise CannotListen.of(what, host, port or 0, exc, f"[{section}] port in {toml}") from None

    def _write_run_file(self, url: str) -> None:
        """Where this node listens, for the command line and the launcher (written atomically)."""
        run_file = self.config.run_file
        run_file.parent.mkdir(parents=True, exist_ok=True)
        run_doc = {"pid": os.getpid(), "api": url, "chain_id": self.chain_id, "started": self.started,
                   "p2p": self.peers.address if self.peers is not None else None,
                   "storage": self.store_role.address if self.store_role is not None else None,
                   "ingest": self.ingest_role.address if self.ingest_role is not None else None}  # fmt: skip
        tmp = run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(run_doc))
        tmp.replace(run_file)

    async def _stop(self, producer: asyncio.Task[None]) -> None:
        """Consensus first, then ingest (which submits and stores), the peers and the store."""
        config = self.config
        log.info("node %s/%s stopping", config.organisation, config.name)
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
            await producer
        if self.ingest_role is not None:
            await self.ingest_role.stop()
        if self.peers is not None:
            await self.peers.stop()
        if self.store_role is not None:
            await self.store_role.stop()
        config.run_file.unlink(missing_ok=True)
        self.close()
        log.info("node %s/%s stopped", config.organisation, config.name)

    def close(self) -> None:
        self.ledger.close()
        self.chain_store.close()
        self.accounts.close()

    # -- what the API uses (RunningNode) -------------------------------------------------------
    @property
    def chain_id(self) -> str:
        return self.ledger.chain_id

    @property
    def head(self) -> BlockHeader:
        return self.ledger.head

    def head_state(self) -> StateReader:
        return self.ledger.head_state()

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.ledger.read(fn, *args)

    async def submit(self, raw: list[bytes]) -> list[SubmitResult]:
        return await self.ledger.submit(raw)

    def is_pending(self, tx_hash: bytes) -> bool:
        return tx_hash in self.ledger.mempool

    def pending_count(self) -> int:
        return len(self.ledger.mempool)

    async def wait_committed(self, tx_hash: bytes, timeout: float) -> TransactionLocation | None:
        return await self.ledger.wait_committed(tx_hash, timeout)

    async def wait_for_height(self, height: int, timeout: float) -> bool:
        return await self.ledger.wait_for_height(height, timeout)

    async def proof(self, tx_hash: bytes) -> InclusionProof:
        return await self.ledger.proof(tx_hash)

    async def next_nonce(self, sender: bytes) -> int:
        return await self.ledger.next_nonce(sender)

    async def simulate(self, tx: Transaction) -> Receipt:
        return await self.ledger.simulate(tx)

    def evidence(self) -> list[dict[str, Any]]:
        return self.ledger.evidence()

    def network_status(self) -> dict[str, Any]:
        return status.network_view(self.config, self.ledger, self._peer_manager())

    def metrics_text(self) -> str:
        return status.metrics_text(self.ledger, self._peer_manager())

    def _peer_manager(self) -> PeerManager | None:
        return self.peers.manager if self.peers is not None else None

    @property
    def offchain_store(self) -> StoreService | None:
        return self.store_role.service if self.store_role is not None else None

    @property
    def ingest_service(self) -> IngestService | None:
        return self.ingest_role.service if self.ingest_role is not None else None
