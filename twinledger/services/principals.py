"""An organisation's people and programs on its node: adding and removing principals
(registered on chain with their roles by the node), and programs' API tokens. These ask
the node's ``/v1/auth`` API, with the home's token (the operator's, which holds admin)."""

from __future__ import annotations

from typing import Any

from twinledger.contracts.principals import registration_proof
from twinledger.crypto.keys import SigningKey
from twinledger.services.remote import segment
from twinledger.services.session import Session


async def add(session: Session, name: str, kind: str, scopes: list[str], roles: list[str],
              password: str | None = None, own_key: SigningKey | None = None) -> dict[str, Any]:  # fmt: skip
    """A person (with a password) or a program; the node makes and seals its key unless it
    brings ``own_key`` (which signs its consent here and never leaves), and registers it on
    chain with ``roles``."""
    body: dict[str, Any] = {"name": name, "kind": kind, "scopes": scopes, "roles": roles}
    if password is not None:
        body["password"] = password
    if own_key is not None:
        proof = registration_proof(own_key, await session.chain_id(), session.organisation, name)
        body |= {"key": own_key.public.hex(), "key_proof": proof.hex()}
    return dict(await session.post("/v1/auth/principals", body))


async def listing(session: Session) -> list[dict[str, Any]]:
    return list((await session.get("/v1/auth/principals"))["principals"])


async def remove(session: Session, name: str) -> dict[str, Any]:
    """Its tokens and sessions end at once, and its key stops acting on chain."""
    return dict(await session.delete(f"/v1/auth/principals/{segment(name, 'principal')}"))


async def issue_token(session: Session, principal: str, scopes: list[str], expires: int = 0,
                      label: str = "") -> dict[str, Any]:  # fmt: skip
    """A new API token (its secret is in the answer, and nowhere else)."""
    return dict(await session.post("/v1/auth/tokens", {"principal": principal, "scopes": scopes, "expires": expires,
                                                       "label": label}))  # fmt: skip


async def tokens(session: Session, principal: str | None = None) -> list[dict[str, Any]]:
    return list((await session.get("/v1/auth/tokens", principal=principal))["tokens"])


async def revoke_token(session: Session, token_id: str) -> dict[str, Any]:
    return dict(await session.delete(f"/v1/auth/tokens/{segment(token_id, 'token id')}"))
