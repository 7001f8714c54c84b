"""Contracts: deterministic state transitions (see runtime.py)."""

from __future__ import annotations

from twinledger.contracts.records import RECORDS
from twinledger.contracts.runtime import Contract, ContractRuntime


def builtin_contracts() -> list[Contract]:
    return [RECORDS]


def default_runtime() -> ContractRuntime:
    return ContractRuntime(builtin_contracts())
