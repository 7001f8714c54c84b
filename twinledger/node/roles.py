"""The node's optional components, each enabled by its configuration: the peer network,
the off-chain store (with the re-encryption proxy) and the ingest listener.

Each is a small class the composition root builds, starts and stops; they reach the
chain only through the ledger service.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from twinledger.config import NodeConfig, passphrase
from twinledger.contracts.membership import node_standing, organisation_key, organisations
from twinledger.contracts.sharing import GRANT_PREFIX
from twinledger.crypto.certs import NodeIdentity, identity_of, read_certificate
from twinledger.crypto.tls import client_context, server_context
from twinledger.errors import DecodeError, TwinledgerError
from twinledger.ingest.journal import IngestJournal
from twinledger.ingest.service import IngestService
from twinledger.net.peers import Peer, PeerManager
from twinledger.net.wire import Frame
from twinledger.node.ledger import LedgerService
from twinledger.node.sync import BlockSync
from twinledger.sharing.proxy import ProxyService
from twinledger.store.client import StoreClient
from twinledger.store.disk import ChunkStore
from twinledger.store.items import ReadGrant
from twinledger.store.placement import Replication, store_nodes
from twinledger.store.protocol import StoreTls
from twinledger.store.server import Directory, StoreService

log = logging.getLogger("twinledger.node")
MAX_GOSSIP_TXS = 10_000


class PeerNetwork:
    """Mutual-TLS connections to the other nodes: gossip of transactions and consensus
    messages, and block sync."""

    def __init__(self, config: NodeConfig, ledger: LedgerService) -> None:
        self.config = config
        self.ledger = ledger
        self.manager: PeerManager | None = None
        self.sync = BlockSync(ledger, self.peers)
        self._standings: tuple[int, dict[tuple[str, bytes], str]] = (-1, {})

    @property
    def address(self) -> str | None:
        return self.manager.address if self.manager is not None else None

    def peers(self) -> list[Peer]:
        return list(self.manager.peers.values()) if self.manager is not None else []

    def broadcast(self, message_type: str, body: dict[str, Any]) -> None:
        if self.manager is not None:
            self.manager.broadcast(message_type, body)

    async def start(self) -> None:
        config = self.config
        assert config.p2p_port is not None
        secret = passphrase()
        org_cert = read_certificate(config.cert("organisation"))
        self.manager = PeerManager(
            me=identity_of(read_certificate(config.cert("node"))),
            chain_id=self.ledger.chain_id,
            genesis_hash=self.ledger.genesis.header().hash,
            listen_host=config.p2p_host,
            listen_port=config.p2p_port,
            advertise=config.p2p_advertise,
            seeds=list(config.seeds),
            target_peers=config.target_peers,
            server_ssl=server_context(config.cert("consortium-ca"), config.cert("node-chain"), config.key("tls"), secret),
            client_ssl=client_context(
                config.cert("consortium-ca"), config.cert("node-chain"), config.key("tls"), secret, check_hostname=False
            ),  # fmt: skip
            ca_cert=read_certificate(config.cert("consortium-ca")),
            org_cert_der=org_cert.public_bytes(Encoding.DER),
            handler=self._on_frame,
            height=lambda: self.ledger.head.height,
            standing=self._standing,
        )
        loop = asyncio.get_running_loop()
        self.ledger.after_block.append(lambda: loop.call_soon_threadsafe(self.manager.wake) if self.manager else None)
        await self.manager.start()

    def _standing(self, identity: NodeIdentity) -> str:
        """What the membership at the head says of a peer's node, asked once per head."""
        height = self.ledger.head.height
        if self._standings[0] != height:
            self._standings = (height, {})
        known = self._standings[1]
        if (identity.organisation, identity.signing_key) not in known:
            known[identity.organisation, identity.signing_key] = node_standing(self.ledger.head_state(),
                                                                               identity.organisation,
                                                                               identity.signing_key)  # fmt: skip
        return known[identity.organisation, identity.signing_key]

    async def stop(self) -> None:
        if self.manager is not None:
            await self.manager.stop()

    async def _on_frame(self, peer: Peer, frame: Frame) -> bool:
        """Everything peers send; True relays a gossip frame."""
        body = frame.body
        ledger = self.ledger
        if frame.type == "txs":
            raw = body.get("txs")
            if not isinstance(raw, list) or not all(isinstance(t, bytes) for t in raw) or len(raw) > MAX_GOSSIP_TXS:
                raise DecodeError("txs: expected a list of transaction byte strings")
            results = await ledger.submit(raw, from_peer=True)
            return any(r.tx_hash is not None and not r.duplicate for r in results)
        if frame.type in ("proposal", "vote"):
            return ledger.consensus.receive(frame.type, body)
        if frame.type == "status":
            if peer.height > ledger.head.height:
                self.sync.request_blocks(ledger.head.height + 1)
            return False
        if frame.type == "get_blocks":
            if not peer.member:  # not known to this node's head: it syncs from members only
                return False
            start = body.get("from")
            if isinstance(start, int) and not isinstance(start, bool) and start > 0:
                blocks = await ledger.read(self.sync.raw_blocks, start)
                if blocks:
                    peer.send("blocks", {"blocks": blocks})
            return False
        if frame.type == "blocks":
            await self.sync.import_blocks(body.get("blocks"))
            return False
        return False


class ChainDirectory:
    """Store nodes, member nodes and active grants as the contracts say at the head,
    built again only when the head moves (the store asks on every request)."""

    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger
        self._built: tuple[int, Directory] | None = None

    def at_head(self) -> Directory:
        height = self.ledger.head.height
        if self._built is None or self._built[0] != height:
            state = self.ledger.head_state()
            orgs = [state.get(organisation_key(name)) for name in organisations(state)]
            members = {node["signing_key"]: org["name"] for org in orgs for node in org["nodes"].values()}
            grants = tuple(ReadGrant.of(g) for _, g in self.ledger.chain_store.state_items(GRANT_PREFIX, height)
                           if g["status"] == "active")  # fmt: skip
            self._built = (height, Directory(store_nodes(orgs), members, grants))
        return self._built[1]

    def replication(self) -> Replication:
        genesis = self.ledger.genesis
        return Replication(genesis.store_replication, genesis.store_write_quorum)


def _node_identity(config: NodeConfig) -> NodeIdentity:
    """Who this node is to the store and ingest protocols (its TLS identity is StoreTls)."""
    return identity_of(read_certificate(config.cert("node")))


class StoreRole:
    """The off-chain store: this node keeps encrypted chunks for the consortium and, with
    the proxy role, organisations' re-encryption keys."""

    def __init__(self, config: NodeConfig, ledger: LedgerService, directory: ChainDirectory) -> None:
        self.config = config
        self.ledger = ledger
        self.directory = directory
        self.service: StoreService | None = None
        self.proxy: ProxyService | None = None

    @property
    def address(self) -> str | None:
        return self.service.address if self.service is not None else None

    async def start(self) -> None:
        config = self.config
        assert config.storage_port is not None
        tls, me = StoreTls.of_home(config), _node_identity(config)
        if "proxy" in config.roles:
            self.proxy = ProxyService(config.home / "data" / "proxy-keys.db", me, self.ledger.head_state,
                                      self.ledger.wait_for_height, self._grants)  # fmt: skip
            self.ledger.after_block.append(self._sweep_proxy_keys)
        self.service = StoreService(ChunkStore(config.storage_dir), tls, me, self.directory.at_head,
                                    self.directory.replication(), config.repair_interval,
                                    self.proxy.handlers() if self.proxy else None)  # fmt: skip
        await self.service.start(config.storage_host, config.storage_port)

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            log.info("store node stopped")
        if self.proxy is not None:
            self.proxy.close()

    def _grants(self) -> list[dict[str, Any]]:
        """Every grant at the head, as the sharing contract stores it."""
        return [grant for _, grant in self.ledger.chain_store.state_items(GRANT_PREFIX, self.ledger.head.height)]

    def _sweep_proxy_keys(self) -> None:
        """Delete the re-encryption keys of grants that ended (after every block)."""
        assert self.proxy is not None
        try:
            self.proxy.sweep(self.ledger.head_state())
        except (sqlite3.Error, TwinledgerError) as exc:
            log.warning("could not sweep the proxy's keys: %s", exc)


class IngestRole:
    """The ingest listener: devices send records over TCP, the node stores them off-chain
    and signs their transactions."""

    def __init__(self, config: NodeConfig, ledger: LedgerService, directory: ChainDirectory,
                 local_store: StoreRole | None) -> None:  # fmt: skip
        self.config = config
        self.ledger = ledger
        self.directory = directory
        self.local_store = local_store
        """This node's own store role, if it has one: records go through its client."""
        self.service: IngestService | None = None
        self._remote: StoreClient | None = None

    @property
    def address(self) -> str | None:
        return self.service.address if self.service is not None else None

    async def start(self) -> None:
        config = self.config
        assert config.ingest_port is not None
        tls, me = StoreTls.of_home(config), _node_identity(config)
        self.service = IngestService(IngestJournal(config.home / "data" / "ingest.db"), config.signing_key(), me, tls,
                                     self.ledger, lambda: self._store(tls), self.ledger.head_state,
                                     lambda: self.directory.at_head().members, config.ingest_window,
                                     config.ingest_max_record)  # fmt: skip
        await self.service.start(config.ingest_host, config.ingest_port)

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()

    def _store(self, tls: StoreTls) -> StoreClient:
        """A client of the store nodes: this node's own store's, or one of its own that
        follows the directory."""
        if self.local_store is not None and self.local_store.service is not None:
            return self.local_store.service.client()
        nodes = self.directory.at_head().nodes
        if self._remote is None or self._remote.nodes != nodes:
            self._remote = StoreClient(nodes, tls, self.directory.replication())
        return self._remote
