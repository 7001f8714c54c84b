"""kill -9 of a loaded four-validator network, at random moments and at each named kill
point of commit, block sync, journaling and voting (core/killpoints.py): a node dies
while it commits, while it catches up by block sync, while it journals what a client just
submitted, right after its vote guard recorded a vote, before a block it decided is
written. Each restarts. Nothing any node
acknowledged is lost, and every node ends on the same chain. Reorganisations (poa) are
killed at their points in test_network.py."""

from __future__ import annotations

import random
import time

from network_helpers import Load, make_network, wait_for
from test_network import assert_identical_chains

from twinledger.core.killpoints import KILL_POINTS

KILLS = 10
POINTS = sorted(point for point in KILL_POINTS if not point.startswith("reorganisation."))
"""Every point a bft validator reaches (its blocks are final: it never reorganises)."""
STORE_COMMIT = {"commit.before", "commit.written", "commit.durable"}


def test_kill_9_at_random_moments_and_at_kill_points_loses_nothing(tmp_path):
    seed = time.time_ns()
    rng = random.Random(seed)
    points = rng.sample(POINTS, len(POINTS))  # every point once, in a random order, then random moments
    net = make_network(tmp_path / "net")
    try:
        for i in range(4):
            net.start(i)
        assert net.wait_height(0, 1)
        with Load(net, targets=[0, 1, 2, 3]) as load:
            for kill in range(max(KILLS, len(points))):
                victim = rng.randrange(4)
                wait_for(lambda: len(load.accepted) > 0, "accepted transactions")
                time.sleep(rng.uniform(0, 1.5))  # the moment of this kill is what is random
                net.kill(victim)  # SIGKILL: no shutdown, whatever it was doing
                if kill < len(points):
                    other = (victim + 1) % 4
                    assert net.wait_height(other, net.height(other) + 3), "three blocks, so that it must sync"
                    point = points[kill]  # a store's commit points: a synced block's, or later one it decided
                    net.start_armed(victim, f"{point}:{rng.randint(1, 30 if point in STORE_COMMIT else 3)}")
                net.start(victim)
        for i in range(4):
            missing = net.missing(i, load.accepted, timeout=120)
            assert not missing, f"seed {seed}: node {i} lost {len(missing)} acknowledged transactions"
        assert_identical_chains(net, [0, 1, 2, 3])
        assert not net.logs_with_tracebacks(), f"seed {seed}"
    finally:
        net.stop_all()
