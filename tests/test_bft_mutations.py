"""Mutation tests of the lock rules: remove one rule of the Tendermint machine at a time
and the schedules CI runs must catch it (a safety violation), else they prove nothing.
The scripted scenarios (``bft_scenarios.py``) reach the corner each rule guards; with the
real machine they end in agreement."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from bft_scenarios import SCENARIOS

from twinledger.consensus import tendermint

SOURCE = Path(tendermint.__file__).read_text()
CAUGHT_BY = {
    "L22: no lock": "a lock taken in round 0 against a new value in round 1",
    "L28: no locked-round test": "a newer lock against an old value's true polka",
    "L28: no 2f+1 prevotes": "a lock against an old value's claimed polka",
    "L36: no lock": "a lock taken in round 0 against a new value in round 1",
}
MUTATIONS = {
    "L22: no lock": [("ok = valid and r not in state.untimely and (state.locked_round == -1 or state.locked_value == v)",
                      "ok = valid and r not in state.untimely")],
    "L28: no locked-round test": [("ok = valid and (state.locked_round <= vr or state.locked_value == v)", "ok = valid")],
    "L28: no 2f+1 prevotes": [("if 0 <= vr < r and _count(state, VoteKind.PREVOTE, vr, v) >= state.quorum:",
                               "if 0 <= vr < r:")],
    "L36: no lock": [("after = dataclasses.replace(after, locked_value=v, locked_round=r)", "pass")],
}  # fmt: skip


def mutant(name: str) -> types.ModuleType:
    source = SOURCE
    for original, replacement in MUTATIONS[name]:
        assert source.count(original) == 1, f"{name}: the rule's code changed; update the mutation"
        source = source.replace(original, replacement)
    module = types.ModuleType(f"tendermint_without_{name}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def agree(decided: dict[bytes, bytes]) -> bool:
    return len(set(decided.values())) <= 1


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_real_machine_agrees_in_every_scripted_corner(scenario):
    decided = SCENARIOS[scenario](tendermint)
    assert decided and agree(decided), decided


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_removing_a_lock_rule_breaks_agreement_in_some_scripted_corner(mutation):
    machine = mutant(mutation)
    broken = [name for name, scenario in SCENARIOS.items() if not agree(scenario(machine))]
    assert CAUGHT_BY[mutation] in broken, f"with {mutation}, {CAUGHT_BY[mutation]!r} still agrees"
