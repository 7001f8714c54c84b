"""A session: one party (an organisation's home, or one of its twin's devices) working
with the consortium through its node.

It holds what every workflow needs — the node's API, a store client as the home's node,
the key that signs, the organisation's keys — and the one way to change the chain:
``transact`` signs a typed contract call, submits it, waits for the commit and checks the
receipt. Workflows (``services.*``) are plain async functions over a session, so the CLI,
the demo, the device agent and the benchmarks run the same code.
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from twinledger.config import NodeConfig, load_config, passphrase
from twinledger.contracts import calls
from twinledger.contracts.calls import ContractCall
from twinledger.core.types import Transaction, resigned
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import EncryptionKey, SigningKey, read_secret_file
from twinledger.errors import BadRequest, NotCommitted, TransactionFailed, TwinledgerError
from twinledger.services import intents
from twinledger.services.remote import NodeClient, NodeUnreachable, segment, sharing_public, store_client
from twinledger.store.client import StoreClient
from twinledger.store.documents import CapsuleKey

T = TypeVar("T")
COMMIT_WAIT = 30.0
"""Seconds ``transact`` waits for a commit by default ..."""
COMMIT_WAIT_ENV = "TWINLEDGER_COMMIT_WAIT"
"""... unless this variable gives another number of seconds."""
Progress = Callable[[int], None]
"""Called with how much more is done (bytes or samples); never prints."""
Precheck = Callable[[Transaction], Awaitable[None]]


class UnknownOrganisation(TwinledgerError):
    code = "unknown_organisation"


@dataclass(frozen=True)
class Outcome:
    """A submitted transaction: its hash and, if waited for, its committed view (receipt ok)."""

    tx_hash: bytes
    view: dict[str, Any] | None = None
    earlier: bool = False
    """An earlier attempt of the same write, which committed after its command gave up:
    this one sent nothing."""

    @property
    def committed(self) -> bool:
        return self.view is not None

    @property
    def height(self) -> int:
        assert self.view is not None, "the transaction was not waited for"
        return int(self.view["block"]["height"])

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.view["receipt"]["events"]) if self.view is not None else []

    def event(self, event_type: str) -> dict[str, Any]:
        """The data of the receipt's (first) event of ``event_type``."""
        return next(e["data"] for e in self.events if e["type"] == event_type)

    def json(self) -> dict[str, Any]:
        """What ``--json`` prints: the committed transaction, or that it was accepted."""
        if self.view is None:
            return {"hash": self.tx_hash.hex(), "status": "accepted"}
        return {**self.view, "earlier_attempt": True} if self.earlier else self.view


def read_signing_key(path: Path) -> SigningKey:
    return SigningKey(read_secret_file(path, "ed25519", passphrase()))


@dataclass
class Opened:
    """A session's lazily opened parts."""

    chain_id: str | None = None
    store: StoreClient | None = None
    encryption_key: EncryptionKey | None = None
    sharing_key: kpcpre.SecretKey | None = None
    store_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Concurrent workflows of one session open one store client."""


class Session:
    """One party's way to the consortium; ``async with`` closes its store client."""

    def __init__(self, config: NodeConfig, key: SigningKey | None = None, timeout: float = 30.0,
                 precheck: Precheck | None = None) -> None:  # fmt: skip
        self.config = config
        self.node = NodeClient(config, timeout=timeout)
        self._key = key
        self.precheck = precheck
        """Asked before a signed transaction is submitted (in the node: a dry run on the head)."""
        self.opened = Opened()
        """What this session opened on first use; sessions made by ``with_signer`` share it."""

    @classmethod
    def of_home(cls, home: Path, key_file: Path | None = None) -> Session:
        """A session of the home, signing with its operator key or the key in ``key_file``."""
        return cls(load_config(home), read_signing_key(key_file) if key_file is not None else None)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.opened.store is not None:
            await self.opened.store.close()
            self.opened.store = None
        self.node.close()

    def with_signer(self, key: SigningKey) -> Session:
        """This session's node, store and organisation keys (shared, also what either
        opens later), signing with ``key`` (a principal's): close only the session it was
        made from."""
        other = copy.copy(self)
        other._key = key
        return other

    async def reconnect(self) -> None:
        """Reach the node and the store nodes wherever they now listen (after a restart)."""
        if self.opened.store is not None:
            await self.opened.store.close()
            self.opened.store = None
        self.node.close()
        self.node = NodeClient(self.config, timeout=self.node.http.timeout.read or 30.0)

    # -- who ---------------------------------------------------------------------------------

    @property
    def organisation(self) -> str:
        return self.config.organisation

    @property
    def signer(self) -> SigningKey:
        """The key this session signs with: the one given, or the home's operator key."""
        if self._key is None:
            self._key = self.config.signing_key("operator")
        return self._key

    @property
    def encryption_key(self) -> EncryptionKey:
        if self.opened.encryption_key is None:
            self.opened.encryption_key = self.config.encryption_key()
        return self.opened.encryption_key

    @property
    def sharing_key(self) -> kpcpre.SecretKey:
        if self.opened.sharing_key is None:
            self.opened.sharing_key = self.config.sharing_key()
        return self.opened.sharing_key

    # -- reading -------------------------------------------------------------------------------

    async def get(self, path: str, **params: Any) -> Any:
        """A JSON resource of the node's API (None-valued parameters are left out)."""
        query = {name: value for name, value in params.items() if value is not None}
        return await asyncio.to_thread(self.node.request, "GET", path, params=query)

    async def post(self, path: str, body: Any = None) -> Any:
        """POST to the node's API (a JSON body if given)."""
        kwargs = {"json": body} if body is not None else {}
        return await asyncio.to_thread(self.node.request, "POST", path, **kwargs)

    async def delete(self, path: str) -> Any:
        return await asyncio.to_thread(self.node.request, "DELETE", path)

    async def text(self, path: str, **params: Any) -> str:
        query = {name: value for name, value in params.items() if value is not None}
        return await asyncio.to_thread(self.node.text, path, params=query)

    async def twin(self, reference: str, at: int | None = None) -> dict[str, Any]:
        """A twin by id or device id, as the node's API shows it."""
        return dict(await self.get(f"/v1/twins/{segment(reference, 'twin')}", at=at))

    async def members(self, at: int | None = None) -> dict[str, Any]:
        return dict(await self.get("/v1/members", at=at))

    async def member(self, name: str) -> dict[str, Any]:
        for org in (await self.members())["organisations"]:
            if org["name"] == name:
                return dict(org)
        raise UnknownOrganisation(f"no member organisation is named {name}")

    async def sharing_public(self, organisation: str | None = None) -> kpcpre.PublicKey | None:
        """An organisation's (default: this one's) public sharing key as the membership lists it."""
        name = organisation or self.organisation
        await self.member(name)  # an unknown organisation is an error, not "no key"
        return sharing_public(await self.members(), name)

    async def capsule_key(self, twin_id: str) -> CapsuleKey | None:
        """What the organisation's new capsules for ``twin_id`` are made under now: its
        public sharing key and the twin's access generation (None: it has no sharing key)."""
        public = await self.sharing_public()
        return CapsuleKey(public, int((await self.twin(twin_id))["generation"])) if public is not None else None

    def sharing_now(self, twin_id: str) -> Callable[[], Awaitable[CapsuleKey | None]]:
        return lambda: self.capsule_key(twin_id)

    async def chain_id(self) -> str:
        if self.opened.chain_id is None:
            self.opened.chain_id = str((await asyncio.to_thread(self.node.health))["chain_id"])
        return self.opened.chain_id

    async def store(self) -> StoreClient:
        """A client of the consortium's store nodes, as this home's node (opened once)."""
        async with self.opened.store_lock:
            if self.opened.store is None:
                self.opened.store = store_client(self.config, await self.members())
            return self.opened.store

    # -- changing the chain ---------------------------------------------------------------------

    async def check(self, call: ContractCall) -> None:
        """Ask the precheck (in the node: a dry run on the head) whether ``call`` would go
        through, before work it depends on (an upload) is done; nothing is submitted."""
        if self.precheck is not None:
            await self.precheck(await self._signed(call, self.signer))

    async def _signed(self, call: ContractCall, signer: SigningKey) -> Transaction:
        nonce = await asyncio.to_thread(self.node.next_nonce, signer.public)
        return calls.sign(signer, call, chain_id=await self.chain_id(), nonce=nonce, timestamp=int(time.time() * 1000))

    async def transact(self, call: ContractCall, wait: bool = True, timeout: float | None = None,
                       key: SigningKey | None = None, intent: str | None = None) -> Outcome:  # fmt: skip
        """Sign ``call`` (with ``key`` or the session's signer) and submit it; with ``wait``,
        wait for the commit and raise TransactionFailed if the contract refused it, or
        NotCommitted (pending) if it did not commit within ``timeout`` seconds but may.

        A write commits once (``services.intents``): sent again — the same call by the
        same signer, or the same ``intent`` key — while an earlier attempt may still
        commit, it resends that attempt instead of writing twice."""
        signer = key or self.signer
        named = intents.intent_key(signer.public, intent) if intent else intents.intent_of(signer.public, call)
        async with intents.claimed(self.config.home, named) as journal:
            earlier = await self._resend(journal, named, signer)
            if isinstance(earlier, Outcome):
                return earlier
            tx = earlier
            if tx is None:
                tx = await self._signed(call, signer)
                if self.precheck is not None:
                    await self.precheck(tx)
                await journal.add(named, tx)
                await self._submit(journal, tx)
        if not wait:
            return Outcome(tx.hash)
        return await self._committed(named, tx, commit_wait() if timeout is None else timeout)

    async def resume(self, intent: str, timeout: float | None = None, key: SigningKey | None = None) -> Outcome | None:
        """The outcome of the write ``intent`` names if an attempt of it was sent before and
        may still commit or committed (resent and waited for like ``transact``), else None:
        what a workflow asks before doing work it would otherwise do twice (an upload)."""
        signer = key or self.signer
        named = intents.intent_key(signer.public, intent)
        async with intents.claimed(self.config.home, named) as journal:
            earlier = await self._resend(journal, named, signer)
        if earlier is None or isinstance(earlier, Outcome):
            return earlier
        return await self._committed(named, earlier, commit_wait() if timeout is None else timeout)

    async def wait_for(self, tx_hash: bytes, timeout: float | None = None) -> Outcome:
        """Wait for a write reported pending, by the transaction it named: its outcome,
        TransactionFailed if the contract refused it, NotCommitted if it is still pending.
        Its intent's newest attempt is what is waited for (one signed again replaces it)."""
        timeout = commit_wait() if timeout is None else timeout
        async with intents.opened(self.config.home) as journal:
            named = await journal.intent_of_attempt(tx_hash)
            attempts = await journal.attempts(named) if named is not None else []
        if named is not None and attempts and attempts[-1].tx.hash != tx_hash:
            return await self._committed(named, attempts[-1].tx, timeout)
        try:
            view = dict(await asyncio.to_thread(self.node.transaction, tx_hash.hex(), wait=timeout))
        except TwinledgerError as exc:  # unknown here, or unreachable: it may still commit elsewhere
            raise NotCommitted(f"transaction {tx_hash.hex()}: {exc.message}; it may still commit") from None
        if view.get("status") != "committed":
            raise NotCommitted(f"transaction {tx_hash.hex()} was not committed within {timeout:.0f} s"
                               f"{await self._why()}; it may still commit")  # fmt: skip
        if named is not None:
            async with intents.opened(self.config.home) as journal:
                await journal.forget(named)
        return _checked(tx_hash, view)

    async def _committed(self, intent: bytes, tx: Transaction, timeout: float) -> Outcome:
        """Wait for a journaled attempt; whatever keeps this from knowing its fate is
        NotCommitted (it may still commit), never a failure."""
        try:
            view = dict(await asyncio.to_thread(self.node.transaction, tx.hash.hex(), wait=timeout))
        except TwinledgerError as exc:
            raise NotCommitted(f"transaction {tx.hash.hex()}: {exc.message}; it may still commit "
                               f"(twinledger tx wait {tx.hash.hex()})") from None  # fmt: skip
        if view.get("status") != "committed":
            raise NotCommitted(f"transaction {tx.hash.hex()} was not committed within {timeout:.0f} s{await self._why()}; "
                               f"it may still commit (twinledger tx wait {tx.hash.hex()}), and the same command sends "
                               "the same transaction again instead of a second one")  # fmt: skip
        async with intents.opened(self.config.home) as journal:
            await journal.forget(intent)
        return _checked(tx.hash, view)

    async def _submit(self, journal: intents.Journal, tx: Transaction) -> None:
        """Submit a journaled attempt: refused, it is forgotten (it cannot commit); not
        known to have arrived, it stays, and the write is pending."""
        try:
            await asyncio.to_thread(self.node.submit, tx)
        except NodeUnreachable as exc:
            raise NotCommitted(f"transaction {tx.hash.hex()}: {exc.message}; if it reached the node it may still "
                               "commit, and the same command sends the same transaction again") from None  # fmt: skip
        except TwinledgerError:
            await journal.forget_attempt(tx.hash)
            raise

    async def _resend(self, journal: intents.Journal, intent: bytes,
                      signer: SigningKey) -> Outcome | Transaction | None:  # fmt: skip
        """For an intent sent before: the outcome of an attempt that committed (if it
        stands for the intent now), the attempt to wait for (resent if the node lost it),
        or None when none can commit any more (a new write)."""
        attempts = await journal.attempts(intent)
        if not attempts:
            return None
        settled = await self._settled(journal, intent, attempts)
        if settled is not UNSETTLED:
            return settled
        latest = attempts[-1].tx
        try:
            await asyncio.to_thread(self.node.submit, latest)
            return latest
        except NodeUnreachable as exc:
            raise NotCommitted(f"transaction {latest.hash.hex()} could not be sent again: {exc.message}") from None
        except TwinledgerError as exc:
            if exc.code == "nonce_replayed":  # an attempt committed meanwhile, or the nonce went to none of them
                settled = await self._settled(journal, intent, attempts)
                if settled is UNSETTLED:
                    await journal.forget(intent)
                    return None
                return settled
            if exc.code != "bad_timestamp":
                raise NotCommitted(f"transaction {latest.hash.hex()} could not be sent again: {exc.message}; it may "
                                   "still commit") from None  # fmt: skip
        again = resigned(signer, latest)  # the same nonce: at most one of them can commit
        await journal.add(intent, again)
        await self._submit(journal, again)
        return again

    async def _settled(self, journal: intents.Journal, intent: bytes,
                       attempts: list[intents.Attempt]) -> Outcome | Transaction | object | None:  # fmt: skip
        """What the chain says of an intent's attempts: the outcome of one that committed
        and stands for it, None if one committed but no longer stands (a new write), the
        attempt still pending on the node, or UNSETTLED if the node knows none of them."""
        for attempt in attempts:
            view = await self._status(attempt.tx)
            if view is None:
                continue
            if view.get("status") == "pending":
                return attempt.tx
            if view["receipt"]["error"] == "nonce_replayed":  # committed without effect: not written
                await journal.forget_attempt(attempt.tx.hash)
                continue
            await journal.forget(intent)
            return _checked(attempt.tx.hash, view, earlier=True) if attempt.stands else None
        return UNSETTLED

    async def _why(self) -> str:
        """Why writes do not commit, as the node sees it ('' if it sees no reason)."""
        try:
            quorum = (await self.get("/v1/network"))["quorum"]
        except (TwinledgerError, KeyError, TypeError):
            return ""
        return "" if quorum["can_commit"] else f": the chain cannot commit now — {cannot_commit(quorum, 'this node')}"

    async def _status(self, tx: Transaction) -> dict[str, Any] | None:
        """The node's view of a transaction; None if it knows none such. Not knowing
        whether the node knows it is NotCommitted: the write may still commit."""
        try:
            return dict(await asyncio.to_thread(self.node.transaction, tx.hash.hex()))
        except TwinledgerError as exc:
            if exc.code == "not_found":
                return None
            raise NotCommitted(f"transaction {tx.hash.hex()}: {exc.message}; it may still commit") from None


UNSETTLED = object()
"""``Session._settled``: the node knows none of the intent's attempts."""


def cannot_commit(quorum: dict[str, Any], seen_from: str) -> str:
    """Why blocks cannot commit, as a node's ``quorum`` (GET /v1/network) says it."""
    return (f"{seen_from} reaches {len(quorum['reachable'])} of the {quorum['validators']} validators and a block needs "
            f"{quorum['needed']}; out of reach: {', '.join(quorum['unreachable'])}")


def commit_wait() -> float:
    """Seconds a write waits for its commit (COMMIT_WAIT_ENV, else COMMIT_WAIT)."""
    value = os.environ.get(COMMIT_WAIT_ENV)
    if value is None:
        return COMMIT_WAIT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise BadRequest(f"{COMMIT_WAIT_ENV}={value[:40]!r} is not a number of seconds between 0 and 3600")
    return seconds


def _checked(tx_hash: bytes, view: dict[str, Any], earlier: bool = False) -> Outcome:
    receipt = view["receipt"]
    if receipt["status"] != "ok":
        raise TransactionFailed(receipt["message"] or receipt["error"], code=receipt["error"])
    return Outcome(tx_hash, view, earlier)


@asynccontextmanager
async def open_session(home: Path, key_file: Path | None = None) -> AsyncIterator[Session]:
    session = Session.of_home(home, key_file)
    try:
        yield session
    finally:
        await session.close()
