"""kill -9 at random moments of a loaded four-validator network: a node dies while it
commits, while it catches up by block sync (the next kill often finds it there), or while
it is journaling what a client just submitted. Each restarts at once. Nothing any node
acknowledged is lost, and every node ends on the same chain."""

from __future__ import annotations

import random
import time

from network_helpers import Load, make_network, wait_for
from test_network import assert_identical_chains

KILLS = 8


def test_kill_9_at_random_moments_loses_nothing(tmp_path):
    seed = time.time_ns()
    rng = random.Random(seed)
    net = make_network(tmp_path / "net")
    try:
        for i in range(4):
            net.start(i)
        assert net.wait_height(0, 1)
        with Load(net, targets=[0, 1, 2, 3]) as load:
            for _ in range(KILLS):
                victim = rng.randrange(4)
                wait_for(lambda: len(load.accepted) > 0, "accepted transactions")
                time.sleep(rng.uniform(0, 1.5))  # the moment of the kill is what is random here
                net.kill(victim)  # SIGKILL: no shutdown, whatever it was doing
                net.start(victim)
        for i in range(4):
            missing = net.missing(i, load.accepted, timeout=120)
            assert not missing, f"seed {seed}: node {i} lost {len(missing)} acknowledged transactions"
        assert_identical_chains(net, [0, 1, 2, 3])
        assert not net.logs_with_tracebacks(), f"seed {seed}"
    finally:
        net.stop_all()
