"""The real Tendermint machine and vote guard under thousands of adversarial schedules."""

from __future__ import annotations

import pytest
from bft_simulator import Simulation, agreement_violations, conflicting_votes

HEIGHTS = 4
DROP_RATES = (0.1, 0.3, 0.5, 0.6)


def check_safe(sim: Simulation) -> None:
    assert agreement_violations(sim) == []
    for node in sim.correct():
        for height, value in node.decisions.items():
            assert value in sim.proposed, f"height {height}: decided a value nobody proposed"
            assert value not in sim.invalid, f"height {height}: decided an invalid block"
    for node in sim.correct():
        for evidence in node.evidence:  # evidence names only the faulty
            assert evidence.first.validator == evidence.second.validator
            assert sim.nodes[sim.keys.index(evidence.first.validator)].faulty


@pytest.mark.parametrize("chunk", range(20))
def test_agreement_validity_and_progress_with_one_equivocator(chunk):
    """2,000 schedules: reordering, drops, duplicates, crashes and restarts of correct
    validators, one equivocating validator; up to 60 % of messages lost before GST, after
    which they flow again. (Random schedules rarely reach the corners the lock rules
    guard: test_bft_mutations.py's scripted ones do, and catch each rule's removal.)"""
    evidence_seen = 0
    for seed in range(chunk * 100, chunk * 100 + 100):
        sim = Simulation(seed, faulty=(seed % 4,), drop=DROP_RATES[seed // 4 % 4]).run(HEIGHTS)
        check_safe(sim)
        for node in sim.correct():
            assert len(node.decisions) >= HEIGHTS, f"seed {seed}: validator {node.index} stalled at {node.height}"
        evidence_seen += sum(len(node.evidence) for node in sim.correct())
    assert evidence_seen > 0, "the equivocator was never caught"


@pytest.mark.parametrize("chunk", range(5))
def test_no_faults_means_no_evidence_and_identical_chains(chunk):
    for seed in range(10_000 + chunk * 100, 10_000 + chunk * 100 + 100):
        sim = Simulation(seed, crashes=3).run(HEIGHTS)
        check_safe(sim)
        assert all(not node.evidence for node in sim.nodes)
        chains = {tuple(node.decisions[h] for h in range(1, HEIGHTS + 1)) for node in sim.nodes}
        assert len(chains) == 1


def test_two_faulty_of_four_any_violation_leaves_evidence():
    violations = 0
    for seed in range(20_000, 20_200):
        sim = Simulation(seed, faulty=(0, 1), crashes=0, invalid_rate=0.0, tricks=False).run(HEIGHTS, max_time=800)
        if agreement_violations(sim):
            violations += 1
            pairs = conflicting_votes(sim)
            assert pairs, f"seed {seed}: a safety violation without evidence"
            assert all(sim.nodes[sim.keys.index(a.validator)].faulty for a, _ in pairs)
    assert violations > 0, "the attack never split the correct validators; the test proves nothing"


def test_restarted_validator_never_signs_conflicting_votes():
    """Crash often; every vote a correct validator sent is unique per (height, round, kind)."""
    for seed in range(30_000, 30_200):
        sim = Simulation(seed, crashes=6).run(HEIGHTS)
        sent: dict[tuple[bytes, int, int, int], bytes] = {}
        for node in sim.nodes:
            for vote in node.seen_votes:
                key = (vote.validator, vote.height, vote.round, int(vote.kind))
                assert sent.setdefault(key, vote.block_hash) == vote.block_hash, f"seed {seed}: double vote {key}"
        check_safe(sim)


@pytest.mark.parametrize("chunk", range(2))
def test_a_partition_that_heals_loses_neither_safety_nor_progress(chunk):
    """The correct validators split in two for up to half the time before stabilisation,
    one equivocator among them re-proposing old values and voting nil, ahead and far."""
    for seed in range(40_000 + chunk * 100, 40_000 + chunk * 100 + 100):
        sim = Simulation(seed, faulty=(seed % 4,), partition=True).run(HEIGHTS)
        check_safe(sim)
        for node in sim.correct():
            assert len(node.decisions) >= HEIGHTS, f"seed {seed}: validator {node.index} stalled at {node.height}"
