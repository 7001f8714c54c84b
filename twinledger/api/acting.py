"""Acting for a caller: whose key signs, what the chain lets that key do, and the dry
run every transaction the node signs goes through first.

The node signs as the caller — the home's operator key for the home's token, a program's
key it keeps sealed, a person's key opened at login. Before it signs anything, even off
chain (a write token, a change of an item's readers), it checks what the principal's
on-chain roles allow; a transaction is then dry-run on the head state, so a call the
contracts would refuse is refused with their reason and never reaches the chain.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twinledger.abc import RunningNode
from twinledger.api.auth import Caller, Forbidden
from twinledger.contracts.principals import permits, roles_of_key
from twinledger.core.types import Transaction
from twinledger.crypto.keys import SigningKey
from twinledger.errors import TransactionFailed
from twinledger.services.accounts import OPERATOR, AccountStore
from twinledger.services.session import Session

REFUSALS = frozenset({"forbidden", "not_permitted", "not_a_member"})
"""Contract errors that mean "not yours to do": answered 403."""


class Acting:
    """A caller's session: the node's own (its node client, store client and the
    organisation's keys), signing with the caller's key."""

    def __init__(self, node: RunningNode, accounts: AccountStore, operator: Callable[[], Session]) -> None:
        self.node = node
        self.accounts = accounts
        self.operator = operator
        self.program_keys: dict[str, SigningKey] = {}

    def key(self, caller: Caller) -> SigningKey:
        principal = caller.principal
        if principal.name == OPERATOR:
            return self.operator().signer
        if caller.session is not None and caller.session.key is not None:
            return caller.session.key
        if principal.kind == "program" and principal.has_key:
            key = self._program_key(principal.name)
            assert key is not None
            return key
        raise Forbidden(f"{principal.name} signs its own transactions: submit them to POST /v1/transactions")

    def held_keys(self) -> list[SigningKey]:
        """Every key the node signs with unattended: the operator's and its programs'."""
        programs = [p.name for p in self.accounts.principals() if p.kind == "program" and p.has_key and not p.disabled]
        return [self.operator().signer, *(key for name in programs if (key := self._program_key(name)) is not None)]

    def _program_key(self, name: str) -> SigningKey | None:
        if name not in self.program_keys:
            key = self.accounts.program_key(name)
            if key is None:
                return None
            self.program_keys[name] = key
        return self.program_keys[name]

    def session(self, caller: Caller) -> Session:
        return self.operator().with_signer(self.key(caller))

    def roles(self, caller: Caller) -> list[str] | None:
        """The caller's principal roles on chain now (None for the home's operator)."""
        if caller.principal.name == OPERATOR:
            return None
        return roles_of_key(self.node.head_state(), caller.principal.public_key) or []

    def require(self, caller: Caller, contract: str, method: str) -> None:
        """Refuse, before anything is signed, what the caller's principal roles do not allow
        (for what is signed off chain, like a change of an item's readers)."""
        roles = self.roles(caller)
        if roles is not None and not permits(roles, contract, method):
            raise Forbidden(f"{caller.principal.name} (roles: {', '.join(roles) or 'none'}) may not "
                            f"{contract}.{method}", code="not_permitted")  # fmt: skip

    def administer(self, caller: Caller) -> None:
        """Principals and tokens are managed by the home's operator or an administrator principal."""
        roles = self.roles(caller)
        if roles is not None and "administrator" not in roles:
            raise Forbidden(f"{caller.principal.name} is no administrator of the organisation: only the home's "
                            "operator or an administrator principal manages principals and API tokens")  # fmt: skip


def precheck_on(node: RunningNode) -> Callable[[Transaction], Awaitable[None]]:
    """The dry run on the head state every transaction the API signs goes through first."""

    async def precheck(tx: Transaction) -> None:
        receipt = await node.simulate(tx)
        if receipt.status != "ok":
            error = TransactionFailed(receipt.message or receipt.error, code=receipt.error)
            error.http_status = 403 if receipt.error in REFUSALS else 400
            raise error

    return precheck
