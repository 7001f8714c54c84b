"""A Byzantine consortium member, for ``bench network --byzantine`` and its test: a real
validator's key and certificates in the hands of a process that attacks the other nodes
over the real protocol, with every attack issue 19 lists. It floods validly signed votes
for unbounded rounds and equivocates in every slot, floods peer addresses, gossips
committed transactions again, and at each of its proposer turns proposes a block timed
far in the future, one that carries committed transactions again, or one too large.

Nothing here is a mock: it speaks the wire protocol over mutual TLS, signs with the key
the genesis names, and the honest nodes it attacks are ordinary node processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from twinledger.config import load_config, passphrase
from twinledger.consensus import tendermint as tm
from twinledger.consensus.messages import proposal_body, proposal_message, signed_vote_message, vote_body
from twinledger.contracts import calls
from twinledger.core.merkle import merkle_root
from twinledger.core.proof import validators_hash
from twinledger.core.types import (
    MAX_TX_BYTES,
    Block,
    BlockHeader,
    Transaction,
    decode_header,
    decode_transaction,
)
from twinledger.crypto.certs import read_certificate
from twinledger.crypto.keys import SigningKey
from twinledger.crypto.tls import client_context
from twinledger.errors import TwinledgerError
from twinledger.ledger.genesis import Genesis
from twinledger.net.wire import encode_frame, read_frame

TICK = 0.2
"""Seconds between rounds of attack."""
FLOOD_VOTES = 60
"""Junk votes per tick: for rounds far ahead and, equivocating, for every slot in reach."""
OVERSIZED_EVERY = 5.0
"""Seconds between two oversized proposals (each is a 34 MB frame to every peer)."""


class ByzantineMember:
    def __init__(self, home: Path, targets: list[str]) -> None:
        config = load_config(home)
        self.genesis = Genesis.read(config.genesis_path)
        self.chain_id = self.genesis.chain_id
        self.key: SigningKey = config.signing_key()
        self.validators = self.genesis.validator_keys
        self.targets = targets
        self._tls = client_context(config.cert("consortium-ca"), config.cert("node-chain"), config.key("tls"),
                                   passphrase(), check_hostname=False)  # fmt: skip
        self._org = read_certificate(config.cert("organisation")).public_bytes(Encoding.DER)
        self.sent: Counter[str] = Counter()
        self.head = (0, self.genesis.header().hash)
        self.seen: list[tuple[float, bytes]] = []
        """Transactions the honest nodes gossiped, with when: committed a few seconds later."""
        self._writers: dict[str, asyncio.StreamWriter] = {}
        self._links: dict[str, asyncio.Task[None]] = {}
        self._oversized: list[Transaction] = []
        self._last_oversized = 0.0

    # -- the run ---------------------------------------------------------------------------------
    async def run(self, stop: Callable[[], bool], ready: Callable[[], None] = lambda: None) -> Counter[str]:
        """Attack until ``stop()`` says so; ``ready()`` once connected to every target.
        Returns what was sent, by attack."""
        self._oversized = await asyncio.to_thread(self._oversized_transactions)
        announced = False
        try:
            while not stop():
                for target in self.targets:
                    if target not in self._links or self._links[target].done():
                        self._links[target] = asyncio.create_task(self._link(target))
                await asyncio.sleep(TICK)
                self._attack()
                if not announced and len(self._writers) == len(self.targets):
                    announced = True
                    ready()
        finally:
            for task in self._links.values():
                task.cancel()
            for writer in self._writers.values():
                writer.close()
        return self.sent

    @property
    def committed(self) -> list[bytes]:
        """Gossiped transactions old enough to be committed."""
        cutoff = time.monotonic() - 5.0
        return [raw for at, raw in self.seen if at < cutoff]

    def _broadcast(self, attack: str, frame: bytes) -> None:
        for target, writer in list(self._writers.items()):
            if writer.is_closing():
                del self._writers[target]
                continue
            writer.write(frame)
            self.sent[attack] += 1

    def _attack(self) -> None:
        height = self.head[0] + 1
        self._broadcast("block requests", encode_frame("get_blocks", {"from": height}))
        self._flood_votes(height)
        self._flood_addresses()
        if self.committed:
            sample = random.sample(self.committed, min(50, len(self.committed)))
            self._broadcast("committed transactions gossiped again", encode_frame("txs", {"txs": sample}))
        for round_ in range(3):
            if tm.proposer(self.validators, height, round_) == self.key.public:
                self._propose(height, round_)

    # -- attacks ---------------------------------------------------------------------------------
    def _flood_votes(self, height: int) -> None:
        for n in range(FLOOD_VOTES):
            far = n % 2 == 0
            round_ = random.randrange(tm.MAX_ROUND_LEAD + 1, 1 << 40) if far else random.randrange(tm.MAX_ROUND_LEAD)
            kind = random.choice((tm.VoteKind.PREVOTE, tm.VoteKind.PRECOMMIT))
            value = os.urandom(32)
            signature = self.key.sign(signed_vote_message(self.chain_id, kind, height, round_, value))
            vote = tm.Vote(kind, height, round_, value, self.key.public, signature)
            self._broadcast("votes for far rounds" if far else "equivocating votes", encode_frame("vote", vote_body(vote)))

    def _flood_addresses(self) -> None:
        addresses = [f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(256)}:{random.randrange(1, 65536)}"
                     for _ in range(1000)]  # fmt: skip
        self._broadcast("peer addresses", encode_frame("peers", {"addresses": addresses}))

    def _propose(self, height: int, round_: int) -> None:
        now = int(time.time() * 1000)
        if round_ == 0:
            attack, timestamp, txs = "far-future proposals", 2**63 - 1, []
        elif round_ == 1 and self.committed:
            attack, timestamp, txs = "proposals of committed transactions", now, [decode_transaction(raw)
                                                                                  for raw in self.committed[-20:]]
        elif time.monotonic() - self._last_oversized > OVERSIZED_EVERY:
            self._last_oversized = time.monotonic()
            attack, timestamp, txs = "oversized proposals", now, list(self._oversized)
        else:
            return
        header = BlockHeader(self.chain_id, height, timestamp, self.head[1], merkle_root([tx.hash for tx in txs]),
                             len(txs), os.urandom(32), validators_hash(list(self.validators)), self.key.public)  # fmt: skip
        unsigned = tm.Proposal(height, round_, header.hash, -1, self.key.public)
        signed = tm.Proposal(height, round_, header.hash, -1, self.key.public,
                             self.key.sign(proposal_message(self.chain_id, unsigned)))  # fmt: skip
        self._broadcast(attack, encode_frame("proposal", proposal_body(signed, Block(header, tuple(txs)))))

    def _oversized_transactions(self) -> list[Transaction]:
        """Valid transactions adding up to more than a block may hold (32 MiB)."""
        key, now = SigningKey.generate(), int(time.time() * 1000)
        return [calls.sign(key, calls.put_record("application/octet-stream", {}, payload=os.urandom(MAX_TX_BYTES - 600)),
                           chain_id=self.chain_id, nonce=n, timestamp=now)
                for n in range(530)]  # fmt: skip

    # -- connections -----------------------------------------------------------------------------
    async def _link(self, target: str) -> None:
        """One connection to an honest node, read until it ends (the next tick dials again)."""
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, TwinledgerError):
            await self._connect(target)
        self._writers.pop(target, None)

    async def _connect(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), ssl=self._tls), 10)
        writer.write(encode_frame("hello", {"chain_id": self.chain_id, "genesis_hash": self.genesis.header().hash,
                                            "listen": "127.0.0.1:9", "height": self.head[0],
                                            "organisation_certificate": self._org}))  # fmt: skip
        await writer.drain()
        if (await read_frame(reader)).type != "hello":
            writer.close()
            return
        self._writers[target] = writer
        while True:  # read everything, so the honest node never finds this peer too slow
            frame = await read_frame(reader)
            if frame.type == "blocks":
                for item in frame.body.get("blocks") or []:
                    header = decode_header(item["header"])
                    if header.height > self.head[0]:
                        self.head = (header.height, header.hash)
            elif frame.type == "txs":
                self.seen.extend((time.monotonic(), raw) for raw in (frame.body.get("txs") or [])[:20])
                del self.seen[:-2000]


def attack_main(home: str, targets: list[str], stop: Any, report: Any) -> None:
    """Entry point of the attacking process: attack until ``stop`` (an Event) is set; put
    what was sent on ``report`` (a Queue)."""
    member = ByzantineMember(Path(home), targets)
    sent = asyncio.run(member.run(stop.is_set, lambda: report.put("ready")))
    report.put(dict(sent))
