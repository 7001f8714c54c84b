"""Random schedules over the real bft driver (tests/bft_driver_sim.py): one Byzantine
validator, a lossy network, a partition that heals and crashes of honest validators;
the honest three agree, go on deciding, lose nothing, log no error, and hold evidence
against the equivocator and no one else.

Run by hand with the driver mutated, these schedules caught an honest validator voting
for blocks it found invalid (3 of 6 schedules) and a vote guard that permits anything (1
to 3 of 6, as an honest validator accused of equivocation); see docs/consensus.md."""

from __future__ import annotations

import pytest
from bft_driver_sim import KEYS, Schedule, run_schedule

SCHEDULES = [Schedule(seed) for seed in range(1, 7)] + [
    Schedule(7, byzantine=False, crashes=4),
    Schedule(8, drop=0.3, duplicate=0.2, max_delay=0.3, partition=False),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=[f"seed-{s.seed}" for s in SCHEDULES])
def test_random_schedules_drive_the_real_driver(schedule, tmp_path):
    outcome = run_schedule(schedule, tmp_path)
    label = f"{schedule}: "
    chains = list(outcome.chains.values())
    shortest = min(len(chain) for chain in chains)
    assert all(chain[:shortest] == chains[0][:shortest] for chain in chains), label + "the honest validators disagree"
    heights = [len(chain) for chain in chains]
    assert outcome.decided_after_calm, label + f"stalled after the faults: heights {outcome.heights_at_calm}, then {heights}"
    assert outcome.accepted > 0 and not any(outcome.missing.values()), label + f"accepted transactions lost: {outcome.missing}"
    assert not outcome.errors, label + f"errors logged: {outcome.errors[:5]}"
    assert not outcome.crashed, label + f"{outcome.crashed[:5]}"
    honest_refusals = [why for source, why in outcome.refused if source in outcome.chains]
    assert not honest_refusals, label + f"{honest_refusals[:3]}"
    honest_keys = {KEYS[i].public for i in outcome.chains}
    assert not outcome.accused & honest_keys, label + "an honest validator signed two votes for one slot"
    if schedule.byzantine:
        assert outcome.equivocations > 0 and outcome.evidence > 0, label + "the equivocation left no evidence"
