"""Membership is the revocation list (security review, finding 7): a removed
organisation's nodes keep valid certificates for months, so every node checks the
membership at its head — peers drop them, and the store, proxies and ingest refuse them."""

from __future__ import annotations

import httpx
from network_helpers import Load, make_network, wait_for
from store_helpers import ok

OWNER, AUDITOR = 1, 3


def test_a_removed_organisation_s_node_is_dropped_by_its_peers_and_syncs_no_further(tmp_path):
    network = make_network(tmp_path / "net")
    try:
        for i in range(4):
            network.start(i)
        with Load(network, targets=[0, 1, 2]):  # blocks from work, not from the empty-block interval
            wait_for(lambda: all(network.height(i) >= 2 for i in range(4)), "every node to follow the chain")
            removed = ok("member", "remove", "auditor", "--home", str(network.homes[OWNER]),
                         "--key", str(tmp_path / "net" / "consortium" / "admin.key"))  # fmt: skip
            assert removed["applied"]
            view = httpx.get(f"{network.url(OWNER)}/v1/transactions/{removed['tx']}", params={"wait": "30"},
                             headers=network.headers(OWNER), timeout=40).json()  # fmt: skip
            removal = view["block"]["height"]

            wait_for(lambda: all(network.height(i) >= removal + 3 for i in range(3)), "the others to go on")
            assert network.height(AUDITOR) <= removal + 1, "the removed node got no block past its removal"
            for i in range(3):
                said = (network.homes[i] / "node.log").read_text()
                assert "auditor/node-1 is not a member node" in said, f"node {i} kept talking to the removed one"

            # restarted, it is refused at every handshake and stays where it was
            def refusals() -> int:
                return sum((network.homes[i] / "node.log").read_text().count("auditor/node-1 is not a member node")
                           for i in range(3))  # fmt: skip

            network.kill(AUDITOR)
            before = refusals()
            network.start(AUDITOR)
            wait_for(lambda: refusals() > before, "the others to refuse the restarted node")
            wait_for(lambda: all(network.height(i) >= removal + 5 for i in range(3)), "the others to go on again")
            assert network.height(AUDITOR) <= removal + 1
    finally:
        network.stop_all()
