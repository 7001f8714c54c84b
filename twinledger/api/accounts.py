"""``/v1/auth/…``: logging in and out, who am I, and (admin) principals and API tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from twinledger.api.auth import Caller, LoginLimiter, session_cookie
from twinledger.contracts import calls
from twinledger.contracts.principals import PRINCIPAL_ROLES
from twinledger.errors import TwinledgerError, parse_hex
from twinledger.services.accounts import SESSION_SECONDS, AccountStore, AuthenticationFailed
from twinledger.services.session import Session

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
Scope = Literal["read", "write", "admin"]


class Login(BaseModel):
    name: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class NewPrincipal(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, description="Unique within the organisation, e.g. alice or mes.")
    kind: Literal["person", "program"]
    scopes: list[Scope] = Field(min_length=1, description="What it may do through this node's API.")
    roles: list[str] = Field(default_factory=list, description=f"Principal roles on chain: {list(PRINCIPAL_ROLES)}.")
    password: str | None = Field(None, max_length=1024, description="A person's password (12 characters or more).")
    key: str | None = Field(None, description="Its own Ed25519 public key, hex; default: the node makes and seals one.")


class NewToken(BaseModel):
    principal: str = Field(max_length=64)
    scopes: list[Scope] = Field(default_factory=list, description="Default: every scope of the principal.")
    expires: int = Field(0, ge=0, description="Milliseconds since the epoch; 0: never.")
    label: str = Field("", max_length=200)


def caller_of(request: Request) -> Caller:
    caller = request.scope.get("state", {}).get("caller")
    if caller is None:
        raise AuthenticationFailed("sign in first")
    return caller  # type: ignore[no-any-return]


def add_account_resources(app: FastAPI, accounts: AccountStore, operator: Callable[[], Session], secure: bool) -> None:
    """``operator`` is the home's operator session: it registers principals on chain."""
    limiter = LoginLimiter()

    @app.post("/v1/auth/login", summary="Log a person in: sets the session cookie, returns the CSRF token",
              tags=["auth"])  # fmt: skip
    async def login(body: Login, request: Request) -> JSONResponse:
        address = request.client.host if request.client else "?"
        limiter.check(body.name, address)
        try:
            cookie, opened = await asyncio.to_thread(accounts.login, body.name, body.password)
        except AuthenticationFailed:
            limiter.failed(body.name, address)
            raise
        response = JSONResponse({"principal": body.name, "csrf": opened.csrf, "expires_in": SESSION_SECONDS})
        response.headers["set-cookie"] = session_cookie(cookie, SESSION_SECONDS, secure)
        return response

    @app.post("/v1/auth/logout", summary="End this session", tags=["auth"])
    async def logout(request: Request) -> JSONResponse:
        caller = caller_of(request)
        cookie = request.cookies.get("twinledger_session")
        if caller.session is not None and cookie:
            accounts.logout(cookie)
        response = JSONResponse({"status": "logged out"})
        response.headers["set-cookie"] = session_cookie("", 0, secure)
        return response

    @app.get("/v1/auth/whoami", summary="The authenticated principal and its scopes", tags=["auth"])
    async def whoami(request: Request) -> dict[str, Any]:
        caller = caller_of(request)
        return {**caller.principal.view(), "scopes": list(caller.scopes),
                "via": "session" if caller.session is not None else "token"}  # fmt: skip

    @app.get("/v1/auth/principals", summary="This node's principals", tags=["auth"])
    async def principals() -> dict[str, Any]:
        return {"principals": [p.view() for p in await asyncio.to_thread(accounts.principals)]}

    @app.post("/v1/auth/principals", summary="Add a person or program (registered on chain with its roles)",
              tags=["auth"], status_code=201)  # fmt: skip
    async def add_principal(body: NewPrincipal) -> dict[str, Any]:
        public = parse_hex(body.key, "key") if body.key is not None else None
        unknown = sorted(set(body.roles) - set(PRINCIPAL_ROLES))
        if unknown:
            raise TwinledgerError(f"unknown principal role(s) {', '.join(unknown)}; roles are {list(PRINCIPAL_ROLES)}",
                                  code="bad_request")  # fmt: skip
        principal, key = await asyncio.to_thread(accounts.add_principal, body.name, body.kind, list(body.scopes),
                                                 password=body.password, public_key=public)  # fmt: skip
        try:
            outcome = await operator().transact(calls.register_principal(body.name, body.kind, principal.public_key,
                                                                      sorted(body.roles)))  # fmt: skip
        except TwinledgerError:
            await asyncio.to_thread(accounts.disable, body.name)
            raise
        return {**principal.view(), "roles": sorted(body.roles), "block": outcome.height}

    @app.delete("/v1/auth/principals/{name}", summary="Disable a principal: its tokens and sessions end, and its "
                "key stops acting on chain", tags=["auth"])  # fmt: skip
    async def remove_principal(name: str) -> dict[str, Any]:
        await asyncio.to_thread(accounts.disable, name)
        outcome = await operator().transact(calls.remove_principal(name))
        return {"name": name, "status": "disabled", "block": outcome.height}

    @app.get("/v1/auth/tokens", summary="API tokens (never their secrets)", tags=["auth"])
    async def tokens(principal: str | None = None) -> dict[str, Any]:
        return {"tokens": [t.view() for t in await asyncio.to_thread(accounts.tokens, principal)]}

    @app.post("/v1/auth/tokens", summary="Issue an API token (shown once)", tags=["auth"], status_code=201)
    async def issue(body: NewToken) -> dict[str, Any]:
        token, issued = await asyncio.to_thread(accounts.issue_token, body.principal, list(body.scopes), body.expires,
                                                body.label)  # fmt: skip
        return {**issued.view(), "token": token}

    @app.delete("/v1/auth/tokens/{token_id}", summary="Revoke an API token", tags=["auth"])
    async def revoke(token_id: str) -> dict[str, Any]:
        await asyncio.to_thread(accounts.revoke_token, token_id)
        return {"id": token_id, "status": "revoked"}
