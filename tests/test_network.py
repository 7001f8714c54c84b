"""Four real validator processes on loopback running bft over mutual TLS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import time

import httpx
import pytest
from network_helpers import Load, Network, make_network, wait_for

from twinledger.config import init_home, load_config
from twinledger.core.killpoints import ENVIRONMENT
from twinledger.core.types import Transaction, sign_transaction
from twinledger.crypto.keys import SigningKey
from twinledger.crypto.tls import client_context
from twinledger.net.wire import encode_frame, read_frame


@pytest.fixture
def network(tmp_path):
    created: list[Network] = []

    def create(proxied: bool = False) -> Network:
        net = make_network(tmp_path / f"net{len(created)}", proxied=proxied)
        created.append(net)
        for i in range(len(net.homes)):
            net.start(i)
        return net

    yield create
    for net in created:
        net.stop_all()


async def connect_as(member, target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to ``target``'s peer port with ``member``'s certificate, past hello."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from twinledger.crypto.certs import read_certificate
    from twinledger.ledger.genesis import Genesis

    context = client_context(member.cert("consortium-ca"), member.cert("node-chain"), member.key("tls"),
                             check_hostname=False)  # fmt: skip
    reader, writer = await asyncio.open_connection(target.p2p_host, target.p2p_port, ssl=context)
    genesis = Genesis.read(member.genesis_path)
    org_der = read_certificate(member.cert("organisation")).public_bytes(Encoding.DER)
    writer.write(encode_frame("hello", {"chain_id": genesis.chain_id, "genesis_hash": genesis.header().hash,
                                        "listen": "127.0.0.1:1", "height": 0, "organisation_certificate": org_der}))
    assert (await read_frame(reader)).type == "hello"
    return reader, writer


def assert_identical_chains(net: Network, nodes: list[int]) -> int:
    """Every node has the same block hashes and state roots up to the lowest head."""
    height = min(net.height(i) for i in nodes)
    chains = {tuple(net.block_hashes(i, height)) for i in nodes}
    assert len(chains) == 1, "the nodes disagree on the chain"
    return height


def test_validators_commit_the_same_chain_and_every_transaction(network):
    net = network()
    with Load(net, targets=[0, 1, 2, 3]) as load:
        wait_for(lambda: len(load.accepted) >= 400, "400 accepted transactions", 60)
    assert load.errors == 0
    for i in range(4):
        assert not net.missing(i, load.accepted), f"node {i} lacks accepted transactions"
    assert assert_identical_chains(net, [0, 1, 2, 3]) >= 1
    view = httpx.get(f"{net.url(0)}/v1/network", headers=net.headers(0)).json()
    assert {p["organisation"] for p in view["peers"]} == {"owner", "maintainer", "auditor"}
    metrics = httpx.get(f"{net.url(0)}/metrics", headers=net.headers(0)).text
    assert "twinledger_peers 3" in metrics and "twinledger_height" in metrics


def test_killed_validator_does_not_stop_the_chain_and_catches_up(network):
    net = network()
    with Load(net, targets=[0, 1, 2]) as load:
        assert net.wait_height(0, 2)
        net.kill(3)  # kill -9
        before = net.height(0)
        assert net.wait_height(0, before + 3), "three validators of four must keep committing"
        net.start(3)
        target = net.height(0)
        assert net.wait_height(3, target), "the restarted validator must catch up"
    for i in range(4):
        missing = net.missing(i, load.accepted)
        assert not missing, f"node {i}: {len(missing)} accepted transactions are missing"
    assert_identical_chains(net, [0, 1, 2, 3])


def test_two_of_four_down_stops_commits_until_one_returns(network):
    net = network()
    assert net.wait_height(0, 1)
    net.kill(2)
    net.kill(3)
    height = net.height(0)
    load = Load(net, targets=[0, 1], batch=5)
    with load:
        deadline = time.monotonic() + 5
        while not load.accepted and time.monotonic() < deadline:
            time.sleep(0.05)
    assert load.accepted, "the live nodes still accept transactions"
    assert not net.wait_height(0, height + 1, timeout=6), "2 of 4 validators must not commit a block"
    net.start(2)
    assert net.wait_height(0, height + 1, timeout=60), "commits resume with 3 of 4"
    assert not net.missing(1, load.accepted)
    assert_identical_chains(net, [0, 1, 2])


def test_cut_off_node_heals_without_fork(network):
    net = network(proxied=True)
    assert net.wait_height(0, 1)
    with Load(net, targets=[0, 1, 2]) as load:
        net.cut_off(3)
        cut_height = net.height(3)
        assert net.wait_height(0, net.height(0) + 3), "the other three keep committing"
        assert net.height(3) <= cut_height + 1, "the cut-off node cannot commit on its own"
        net.cut_off(3, cut=False)
        assert net.wait_height(3, net.height(0)), "the healed node catches up"
    assert not net.missing(3, load.accepted)
    assert_identical_chains(net, [0, 1, 2, 3])


def test_peer_with_certificate_of_another_ca_is_refused(network, tmp_path):
    net = network()
    outsider = init_home(tmp_path / "outsider", "intruder", api_port=0)
    p2p = load_config(net.homes[0])

    async def attempt() -> str:
        context = client_context(outsider.cert("consortium-ca"), outsider.cert("node-chain"), outsider.key("tls"),
                                 check_hostname=False)  # fmt: skip
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the outsider does not even check the server
        try:
            reader, writer = await asyncio.open_connection(p2p.p2p_host, p2p.p2p_port, ssl=context)
            writer.write(encode_frame("status", {"height": 1}))
            await writer.drain()
            await asyncio.wait_for(read_frame(reader), 10)
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError):
            return "refused"
        return "accepted"

    assert asyncio.run(attempt()) == "refused"
    peers = httpx.get(f"{net.url(0)}/v1/network", headers=net.headers(0)).json()["peers"]
    assert "intruder" not in {p["organisation"] for p in peers}


def test_equivocating_validator_is_caught_and_the_evidence_stored(network):
    """Node 3's key signs two different prevotes for one round; the honest nodes keep
    both signed votes as evidence and expose them."""
    net = network()
    assert net.wait_height(0, 1)
    net.kill(3)
    rogue = load_config(net.homes[3])
    key = rogue.signing_key()
    target = load_config(net.homes[0])

    async def equivocate(height: int) -> None:
        from twinledger.consensus.messages import signed_vote_message, vote_body
        from twinledger.consensus.tendermint import Vote, VoteKind

        reader, writer = await connect_as(rogue, target)
        for block_hash in (bytes(32), bytes([1]) * 32):
            message = signed_vote_message(net.chain_id, VoteKind.PREVOTE, height, 0, block_hash)
            vote = Vote(VoteKind.PREVOTE, height, 0, block_hash, key.public, key.sign(message))
            writer.write(encode_frame("vote", vote_body(vote)))
        await writer.drain()
        writer.close()  # the node reads what was sent before the close
        with contextlib.suppress(ssl.SSLError, ConnectionError):  # it may still be talking as we hang up
            await writer.wait_closed()

    found: list = []
    for _ in range(5):  # if the height is decided before the votes arrive, they are stale: try the next
        height = net.height(0) + 1
        asyncio.run(equivocate(height))
        assert net.wait_height(0, height)  # the height ran, its log took the votes in
        found = httpx.get(f"{net.url(0)}/v1/evidence", headers=net.headers(0)).json()["evidence"]
        if found:
            break
    assert len(found) == 1
    first, second = found[0]["first"], found[0]["second"]
    assert first["validator"] == second["validator"] == key.public.hex()
    assert first["height"] == second["height"] == height and first["block_hash"] != second["block_hash"]
    assert "twinledger_equivocations_total 1" in httpx.get(f"{net.url(0)}/metrics", headers=net.headers(0)).text


def test_poa_authorities_commit_and_survive_a_lost_leader(tmp_path):
    net = make_network(tmp_path / "poa", orgs=["plant-a", "plant-b", "plant-c"], consensus="poa")
    try:
        for i in range(3):
            net.start(i)
        with Load(net, targets=[0, 1]) as load:
            assert net.wait_height(0, 2)
            net.kill(2)
            assert net.wait_height(0, net.height(0) + 3), "two of three authorities (2 signatures) keep going"
        assert not net.missing(1, load.accepted)
        net.start(2)
        assert net.wait_height(2, net.height(0))
        assert_identical_chains(net, [0, 1, 2])
    finally:
        net.stop_all()
    assert not net.logs_with_tracebacks(), "peers dropped at a stop end quietly"


@pytest.mark.parametrize("point", ["reorganisation.rewound", "reorganisation.part-way", "reorganisation.switched"])
def test_poa_branches_built_apart_heal_into_one_and_lose_no_transaction(tmp_path, point):
    """Two authorities that each certify alone build separate branches while cut apart.
    Joined again they follow one (highest, then lowest hash), and the transactions of the
    branch given up are pending again and commit on it — even when the authority that
    reorganises is killed (kill -9) at ``point`` of its reorganisation and restarted."""
    net = make_network(tmp_path / "fork", orgs=["plant-a", "plant-b"], consensus="poa", proxied=True,
                       authority_signatures=1)  # fmt: skip
    try:
        for i in range(2):
            net.start(i)
        sent: list[Transaction] = []
        keys = [SigningKey.generate() for _ in range(2)]

        def put(i: int, nonces: range) -> None:
            """Records submitted to authority ``i``: blocks come from transactions, not the
            empty-block interval, so the test waits for work rather than a clock."""
            txs = [sign_transaction(keys[i], chain_id=net.chain_id, nonce=n, contract="records", method="put",
                                    args={"payload": os.urandom(16)}, timestamp=int(time.time() * 1000))
                   for n in nonces]  # fmt: skip
            assert all(r["status"] == "accepted" for r in net.submit(i, txs)["results"])
            sent.extend(txs)

        put(0, range(1))
        assert net.wait_height(0, 1) and net.wait_height(1, 1)  # connected: both hold the block with it
        net.cut_off(1)
        fork = max(net.height(0), net.height(1)) + 1
        for batch in range(3):  # three blocks on each side from `fork - 1`
            for i in range(2):
                first = 1 if i == 0 else 0
                put(i, range(first + 7 * batch, first + 7 * (batch + 1)))
            for i in range(2):
                assert net.wait_height(i, fork + batch)
        # A block on its way when the cut fell may still reach both, at height `fork` at most.
        assert net.block_hashes(0, fork + 2)[-1] != net.block_hashes(1, fork + 2)[-1], "the two built separate branches"
        for i in range(2):  # both armed: whichever reorganises dies at the point
            net.kill(i)
            os.environ[ENVIRONMENT] = point
            try:
                net.start(i)
            finally:
                del os.environ[ENVIRONMENT]
        net.cut_off(1, cut=False)
        died = wait_for(lambda: [i for i in range(2) if net.processes[i].process.poll() is not None],
                        f"an authority killed at {point}", 90)  # fmt: skip
        assert all(net.processes[i].process.returncode == -signal.SIGKILL for i in died)
        for i in range(2):
            net.kill(i)
            net.start(i)

        def one_chain_with_everything() -> bool:
            views = [httpx.get(f"{net.url(i)}/v1/transactions/{tx.hash.hex()}", headers=net.headers(i), timeout=10).json()
                     for i in range(2) for tx in sent]  # fmt: skip
            return all(v.get("status") == "committed" and v["receipt"]["status"] == "ok" for v in views) and \
                net.block_hashes(0, fork + 2) == net.block_hashes(1, fork + 2)  # fmt: skip

        wait_for(one_chain_with_everything, "one branch holding every transaction on both authorities", 90)
        assert_identical_chains(net, [0, 1])
    finally:
        net.stop_all()
    assert not net.logs_with_tracebacks()


def test_peer_exchange_completes_the_mesh_from_one_seed(tmp_path):
    import tomllib

    import tomli_w

    net = make_network(tmp_path / "pex")
    seed = load_config(net.homes[0])
    for home in net.homes:
        doc = tomllib.loads((home / "node.toml").read_text())
        doc["p2p"]["seeds"] = [] if home == net.homes[0] else [f"{seed.p2p_host}:{seed.p2p_port}"]
        (home / "node.toml").write_text(tomli_w.dumps(doc))
    try:
        for i in range(4):
            net.start(i)

        def full_mesh() -> bool:
            return all(len(httpx.get(f"{net.url(i)}/v1/network", headers=net.headers(i)).json()["peers"]) == 3 for i in range(4))

        wait_for(full_mesh, "every node to learn every other from the one seed", 30)
        assert net.wait_height(3, 1)
    finally:
        net.stop_all()


def test_garbage_from_a_member_drops_only_that_connection(network):
    net = network()
    assert net.wait_height(0, 1)
    net.kill(3)
    member = load_config(net.homes[3])
    target = load_config(net.homes[0])

    async def send_garbage() -> bool:
        reader, writer = await connect_as(member, target)
        writer.write((12).to_bytes(4, "big") + b"not msgpack!")
        await writer.drain()
        try:
            while True:
                await asyncio.wait_for(reader.read(65536), 10)
                if reader.at_eof():
                    return True
        except (ConnectionError, ssl.SSLError):
            return True

    assert asyncio.run(send_garbage()), "the node hangs up on a peer that sends garbage"
    log = net.processes[0].log_path.read_text()
    assert "WARNING twinledger.net: dropping peer node-1: trailing bytes" in log
    assert "refusing peer node-1 (auditor) for 60 s" in log

    async def come_back() -> bytes:
        reader, writer = await connect_as(member, target)  # the hello still answers: then it hangs up
        try:
            return await asyncio.wait_for(reader.read(65536), 10)
        except (ConnectionError, ssl.SSLError):
            return b""
        finally:
            writer.close()

    assert asyncio.run(come_back()) == b"", "a peer that sent garbage is refused for a while"
    assert net.health(0)["status"] == "ok"
    with Load(net, targets=[0]) as load:
        wait_for(lambda: len(load.accepted) >= 50, "50 accepted transactions", 30)
    assert not net.missing(1, load.accepted), "the network carries on"
