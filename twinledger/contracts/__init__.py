"""Contracts: deterministic state transitions (see runtime.py)."""

from __future__ import annotations

from twinledger.contracts.authorization import AUTHORIZATION
from twinledger.contracts.membership import MEMBERSHIP
from twinledger.contracts.principals import PRINCIPALS, check_sender
from twinledger.contracts.records import RECORDS
from twinledger.contracts.runtime import Contract, ContractRuntime
from twinledger.contracts.sharing import SHARING
from twinledger.contracts.specification import SPECIFICATION


def builtin_contracts() -> list[Contract]:
    return [MEMBERSHIP, PRINCIPALS, AUTHORIZATION, SPECIFICATION, SHARING, RECORDS]


def default_runtime() -> ContractRuntime:
    return ContractRuntime(builtin_contracts(), check_sender)
