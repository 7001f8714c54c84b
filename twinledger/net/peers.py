"""The peer manager (safe-UR-chain §II-C): mutual-TLS connections between consortium
nodes, bootstrap from seeds, peer exchange so every node learns the online list, a
target number of connections, reconnection, and flooding gossip with de-duplication.

A peer is who its certificate says: TLS checks the chain to the consortium CA, the hello
message carries the organisation certificate so the organisation is checked too, and the
ledger keys come from the node certificate. Nothing a peer sends is trusted further:
the handler validates every message before it is relayed.

The address book keeps what it has checked apart from what it was told: *verified*
addresses are the seeds and the listen addresses of peers that completed a handshake;
*learned* ones are what each peer's latest ``peers`` message said, a bounded few per peer,
dialled but never passed on. So one member cannot grow another's memory or its outgoing
frames, nor spread addresses it made up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from twinledger.core.tasks import Tasks
from twinledger.crypto.certs import CertificateError, NodeIdentity, verify_node_chain
from twinledger.errors import DecodeError, TwinledgerError
from twinledger.net.wire import Frame, encode_frame, parse_frame, read_frame, read_payload

log = logging.getLogger("twinledger.net")

HANDSHAKE_TIMEOUT = 10.0
PEER_EXCHANGE_INTERVAL = 5.0
MAX_QUEUED_FRAMES = 20_000
SEEN_CAPACITY = 200_000
GOSSIP_TYPES = frozenset({"txs", "proposal", "vote"})
MAX_LEARNED_PER_PEER = 64
MAX_LEARNED = 1024
MAX_VERIFIED = 1024
MAX_SHARED = 256
"""Addresses one ``peers`` message carries at most."""
MAX_DIAL_FAILURES = 8
"""Failed dials after which an address that is not a seed is forgotten."""
BAN_SECONDS = 60.0
MAX_BAN_SECONDS = 3600.0
"""A peer that sends what no correct node sends (a malformed frame, a bad signature) is
refused for a minute, twice as long each time again, up to an hour."""

Handler = Callable[["Peer", Frame], Awaitable[bool]]
"""Handles a frame from a peer; True if a gossip frame is valid and should be relayed."""


@dataclass(frozen=True)
class Hello:
    chain_id: str
    genesis_hash: bytes
    listen: str
    height: int


@dataclass(eq=False)
class Peer:
    identity: NodeIdentity
    address: str
    """The peer's listen address (host:port), as it announced it."""
    outbound: bool
    writer: asyncio.StreamWriter
    height: int = 0
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(MAX_QUEUED_FRAMES))
    member: bool = True
    """False while this node's head does not know the peer's key (it may have joined
    since): it may send blocks to sync from, but is told nothing (no gossip, no blocks)."""

    @property
    def key(self) -> bytes:
        return self.identity.signing_key

    def send_raw(self, frame: bytes) -> bool:
        try:
            self.queue.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            return False

    def send(self, message_type: str, body: dict[str, Any]) -> bool:
        return self.send_raw(encode_frame(message_type, body))


class PeerManager:
    def __init__(self, *, me: NodeIdentity, chain_id: str, genesis_hash: bytes, listen_host: str, listen_port: int,
                 advertise: str | None, seeds: list[str], target_peers: int, server_ssl: ssl.SSLContext,
                 client_ssl: ssl.SSLContext, ca_cert: x509.Certificate, org_cert_der: bytes,
                 handler: Handler, height: Callable[[], int],
                 standing: Callable[[NodeIdentity], str] = lambda _: "member") -> None:  # fmt: skip
        self.me = me
        self.standing = standing
        """What the membership at the head says of a peer's node: member, refused or unknown."""
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.listen_host, self.listen_port = listen_host, listen_port
        self.advertise = advertise
        self.seeds = list(seeds)
        self.verified: set[str] = set(seeds)
        self.learned: dict[bytes, set[str]] = {}
        """Per peer key: the unchecked addresses of its latest ``peers`` message."""
        self.target_peers = target_peers
        self.server_ssl, self.client_ssl = server_ssl, client_ssl
        self.ca_cert = ca_cert
        self.org_cert_der = org_cert_der
        self.handler = handler
        self.height = height
        self.peers: dict[bytes, Peer] = {}
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._tasks = Tasks()
        self._server: asyncio.Server | None = None
        self._dialing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._changed = asyncio.Event()
        self.refused = 0
        self._banned: dict[bytes, tuple[float, float]] = {}
        """Peer key -> (refused until, by monotonic clock; the ban's length)."""

    @property
    def address(self) -> str:
        return self.advertise or f"{self.listen_host}:{self.listen_port}"

    @property
    def known(self) -> set[str]:
        """Every address worth dialling."""
        return self.verified.union(*self.learned.values())

    def shared(self) -> list[str]:
        """What a ``peers`` message says: verified addresses only, bounded."""
        return sorted(self.verified | {self.address})[:MAX_SHARED]

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._tasks.connections(self._accept), self.listen_host,
                                                  self.listen_port, ssl=self.server_ssl,
                                                  ssl_handshake_timeout=HANDSHAKE_TIMEOUT)  # fmt: skip
        if self.listen_port == 0:
            self.listen_port = self._server.sockets[0].getsockname()[1]
        self._tasks.spawn(self._maintain())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._tasks.cancel()
        for peer in list(self.peers.values()):
            peer.writer.close()
        await self._tasks.join()
        self.peers.clear()

    # -- gossip ------------------------------------------------------------------------------
    def _remember(self, digest: bytes) -> None:
        self._seen[digest] = None
        if len(self._seen) > SEEN_CAPACITY:
            self._seen.popitem(last=False)

    def broadcast(self, message_type: str, body: dict[str, Any], exclude: Peer | None = None) -> None:
        frame = encode_frame(message_type, body)
        self._remember(hashlib.sha256(frame[4:]).digest())
        self._flood(frame, exclude)

    def _flood(self, frame: bytes, exclude: Peer | None) -> None:
        for peer in list(self.peers.values()):
            if peer is not exclude and peer.member and not peer.send_raw(frame):
                log.warning("peer %s cannot keep up; disconnecting it", peer.identity.node)
                peer.writer.close()

    # -- connections ---------------------------------------------------------------------------
    async def _maintain(self) -> None:
        """Keep the target number of connections, and exchange peer lists."""
        while True:
            self._changed.clear()
            try:
                self._dial_and_announce()
            except Exception as exc:  # noqa: BLE001 - the task that keeps this node connected outlives any error
                log.error("peer maintenance: %s: %s (it goes on)", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):  # not wait_for: on 3.11 it can swallow a cancellation
                async with asyncio.timeout(PEER_EXCHANGE_INTERVAL):
                    await self._changed.wait()

    def wake(self) -> None:
        """Look at the peers again now (the head moved: the membership may have changed)."""
        self._changed.set()

    def _dial_and_announce(self) -> None:
        self._drop_non_members()
        candidates = sorted(self.known - {self.address} - {p.address for p in self.peers.values()} - self._dialing)
        random.shuffle(candidates)
        for address in candidates[: max(0, self.target_peers - len(self.peers))]:
            self._dialing.add(address)
            self._tasks.spawn(self._dial(address))
        for peer in list(self.peers.values()):
            peer.send("peers", {"addresses": self.shared()})  # where to find members: no secret
            peer.send("status", {"height": self.height()})

    async def _dial(self, address: str) -> None:
        try:
            failures = self._failures.get(address, 0)
            if failures:
                await asyncio.sleep(min(10.0, 0.2 * 2**failures))
            host, port = address.rsplit(":", 1)
            source = None if self.listen_host in ("0.0.0.0", "::", "") else (self.listen_host, 0)
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port), ssl=self.client_ssl, server_hostname=None,
                                        local_addr=source),  # fmt: skip
                HANDSHAKE_TIMEOUT,
            )
        except (OSError, TimeoutError, ValueError, ssl.SSLError) as exc:
            self._failures[address] = self._failures.get(address, 0) + 1
            log.debug("cannot reach %s: %s", address, exc)
            if self._failures[address] >= MAX_DIAL_FAILURES and address not in self.seeds:
                self._forget(address)
            self._dialing.discard(address)
            self._changed.set()
            return
        self._dialing.discard(address)
        self._failures.pop(address, None)
        await self._run_peer(reader, writer, outbound=True, dialed=address)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._run_peer(reader, writer, outbound=False, dialed=None)

    async def _run_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, outbound: bool,
                        dialed: str | None) -> None:  # fmt: skip
        peer: Peer | None = None
        try:
            peer = await asyncio.wait_for(self._handshake(reader, writer, outbound, dialed), HANDSHAKE_TIMEOUT)
            if peer is None:
                return
            sender = self._tasks.spawn(self._write_loop(peer))
            try:
                await self._read_loop(peer, reader)
            finally:
                sender.cancel()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except TwinledgerError as exc:
            log.warning("dropping peer %s: %s", peer.identity.node if peer else "(handshake)", exc.message)
            if peer is not None:
                self._ban(peer)
        finally:
            if peer is not None and self.peers.get(peer.key) is peer:
                del self.peers[peer.key]
                log.info("peer %s (%s) disconnected", peer.identity.node, peer.identity.organisation)
            writer.close()
            self._changed.set()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outbound: bool,
                         dialed: str | None) -> Peer | None:  # fmt: skip
        ssl_object = writer.get_extra_info("ssl_object")
        leaf_der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if leaf_der is None:
            raise CertificateError("peer presented no certificate")
        writer.write(encode_frame("hello", {"chain_id": self.chain_id, "genesis_hash": self.genesis_hash,
                                            "listen": self.address, "height": self.height(),
                                            "organisation_certificate": self.org_cert_der}))  # fmt: skip
        await writer.drain()
        frame = await read_frame(reader)
        if frame.type != "hello":
            raise DecodeError("peer did not start with hello")
        try:
            org_cert = x509.load_der_x509_certificate(bytes(frame.body["organisation_certificate"]))
            identity = verify_node_chain(x509.load_der_x509_certificate(leaf_der), org_cert, self.ca_cert)
            hello = Hello(str(frame.body["chain_id"]), bytes(frame.body["genesis_hash"]), str(frame.body["listen"]),
                          int(frame.body["height"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError("malformed hello") from exc
        if (hello.chain_id, hello.genesis_hash) != (self.chain_id, self.genesis_hash):
            raise TwinledgerError(f"peer {identity.node} is on another chain ({hello.chain_id})", code="wrong_chain")
        if identity.signing_key == self.me.signing_key:
            self._forget(hello.listen)
            return None  # dialled ourselves
        member = self.check_member(identity, hello.height)
        if self.banned(identity.signing_key):
            self.refused += 1
            return None
        existing = self.peers.get(identity.signing_key)
        if existing is not None:
            # Both sides dialled at once: keep the connection the smaller key initiated.
            initiator = self.me.signing_key if outbound else identity.signing_key
            keep_new = initiator == min(self.me.signing_key, identity.signing_key)
            if not keep_new:
                return None
            existing.writer.close()
        peer = Peer(identity, hello.listen, outbound, writer, hello.height, member=member)
        peer.send("peers", {"addresses": self.shared()})
        if dialed is not None and dialed != hello.listen:
            self._forget(dialed)
        if _valid_address(hello.listen) and (len(self.verified) < MAX_VERIFIED or hello.listen in self.verified):
            self.verified.add(hello.listen)
        self.peers[peer.key] = peer  # last: a handshake that fails leaves nothing half-registered
        log.info("peer %s (%s) connected at %s", identity.node, identity.organisation, hello.listen)
        self._changed.set()
        return peer

    def _drop_non_members(self) -> None:
        for peer in list(self.peers.values()):
            try:
                self.check_member(peer.identity, peer.height)
            except TwinledgerError as exc:
                log.warning("dropping peer %s: %s", peer.identity.node, exc.message)
                self._ban(peer)
                del self.peers[peer.key]
                peer.writer.close()

    def check_member(self, identity: NodeIdentity, height: int) -> bool:
        """Membership is the revocation list: a node whose key or organisation was removed
        is refused, whatever certificate it shows. A key this node does not know is
        admitted only while the peer is ahead (it may have joined after this node's head),
        and then only to be synced from: True if the peer is a member."""
        standing = self.standing(identity)
        if standing == "refused" or (standing == "unknown" and height <= self.height()):
            raise TwinledgerError(f"{identity.organisation}/{identity.node} is not a member node", code="not_a_member")
        return standing == "member"

    async def _write_loop(self, peer: Peer) -> None:
        while True:
            frame = await peer.queue.get()
            peer.writer.write(frame)
            while not peer.queue.empty() and peer.writer.transport.get_write_buffer_size() < 1 << 20:
                peer.writer.write(peer.queue.get_nowait())
            await peer.writer.drain()

    async def _read_loop(self, peer: Peer, reader: asyncio.StreamReader) -> None:
        while True:
            payload = await read_payload(reader)
            digest = hashlib.sha256(payload).digest()
            if digest in self._seen:
                continue  # gossip already handled (another peer relayed it first): dropped unparsed
            frame = parse_frame(payload)
            peer.member = self.check_member(peer.identity, peer.height)
            if frame.type == "txs":
                self._remember(digest)
            if frame.type == "peers":
                self._learn(peer, frame.body.get("addresses"))
                continue
            if frame.type == "status":
                height = frame.body.get("height")
                if isinstance(height, int) and not isinstance(height, bool):
                    peer.height = height
            relay = await self.handler(peer, frame)
            if relay and frame.type in GOSSIP_TYPES:
                self._remember(digest)  # a vote or proposal not taken now (out of reach) is read again when resent
                self._flood(len(frame.raw).to_bytes(4, "big") + frame.raw, exclude=peer)

    def _learn(self, peer: Peer, addresses: Any) -> None:
        """Take a peer's list in place of its previous one: a few valid, new addresses."""
        if not isinstance(addresses, list):
            raise DecodeError("peers: addresses must be a list")
        fresh: set[str] = set()
        for address in addresses[:MAX_SHARED]:
            if len(fresh) < MAX_LEARNED_PER_PEER and _valid_address(address) and address not in self.verified:
                fresh.add(address)
        previous = self.learned.pop(peer.key, set())
        room = MAX_LEARNED - sum(len(a) for a in self.learned.values())
        self.learned[peer.key] = fresh if len(fresh) <= room else set(sorted(fresh)[: max(0, room)])
        if self.learned[peer.key] - previous:
            self._changed.set()

    def banned(self, key: bytes) -> bool:
        until = self._banned.get(key, (0.0, 0.0))[0]
        return time.monotonic() < until

    def _ban(self, peer: Peer) -> None:
        length = min(MAX_BAN_SECONDS, 2 * self._banned.get(peer.key, (0.0, BAN_SECONDS / 2))[1])
        self._banned[peer.key] = (time.monotonic() + length, length)
        log.warning("refusing peer %s (%s) for %d s", peer.identity.node, peer.identity.organisation, length)

    def _forget(self, address: str) -> None:
        self.verified.discard(address)
        for addresses in self.learned.values():
            addresses.discard(address)
        self._failures.pop(address, None)


def _valid_address(address: Any) -> bool:
    """host:port with a plausible host name or IP and a port number."""
    if not isinstance(address, str) or not 3 <= len(address) <= 262:
        return False
    host, _, port = address.rpartition(":")
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536 or not host:
        return False
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return all(c.isalnum() or c in ".-:_" for c in host)
