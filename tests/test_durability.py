"""Accepted means durable: kill -9 a node under load; every acknowledged transaction is
in the chain after restart."""

from __future__ import annotations

import threading
import time

import httpx
from test_node import OCTETS, signed

from twinledger.config import load_config
from twinledger.core.encoding import encode
from twinledger.core.types import encode_transaction
from twinledger.crypto.keys import SigningKey
from twinledger.launcher import start_node
from twinledger.ledger.store import open_store
from twinledger.services.remote import NodeClient


def test_acknowledged_transactions_survive_kill_9(home_factory):
    config = home_factory("durable")
    node = start_node(config.home)
    acknowledged: list[bytes] = []
    killed = threading.Event()
    enough = threading.Event()

    def load(lane: int) -> None:
        key = SigningKey.generate()
        nonce = 0
        with httpx.Client(base_url=node.url, headers=node.headers, timeout=10) as http:
            while not killed.is_set():
                batch = [signed(key, nonce + i, chain_id="durable-chain") for i in range(50)]
                try:
                    response = http.post("/v1/transactions/batch", headers=OCTETS,
                                         content=encode([encode_transaction(t) for t in batch]))  # fmt: skip
                except httpx.TransportError:
                    return
                if response.status_code == 200:
                    for item in response.json()["results"]:
                        if "hash" in item:
                            acknowledged.append(bytes.fromhex(item["hash"]))
                nonce += 50
                if len(acknowledged) >= 1500:
                    enough.set()

    lanes = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in lanes:
        t.start()
    assert enough.wait(60), "the load never got going"
    node.kill()
    killed.set()
    for t in lanes:
        t.join()
    snapshot = list(acknowledged)

    restarted = start_node(config.home)
    try:
        client = NodeClient(load_config(config.home))
        # The restarted node reloads its durable mempool and commits it; wait for the last one.
        client.transaction(snapshot[-1].hex(), wait=30)
        deadline = time.monotonic() + 30
        while client.health()["pending"] and time.monotonic() < deadline:
            client.block(str(client.health()["height"] + 1), wait=5)
        client.close()
    finally:
        restarted.stop()
    store = open_store(load_config(config.home).store_url)
    try:
        missing = [h for h in snapshot if store.transaction(h) is None]
    finally:
        store.close()
    assert missing == [], f"{len(missing)} of {len(snapshot)} acknowledged transactions were lost"
