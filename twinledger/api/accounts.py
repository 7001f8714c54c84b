"""``/v1/auth/…``: logging in and out, who am I, and (admin) principals and API tokens."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from twinledger.api.acting import Acting
from twinledger.api.auth import Caller, Forbidden, LoginLimiter, caller_of, session_cookie, session_of
from twinledger.contracts import calls
from twinledger.contracts.principals import PRINCIPAL_ROLES, registration_proof
from twinledger.errors import BadRequest, TransactionFailed, parse_hex
from twinledger.services.accounts import OPERATOR, SESSION_SECONDS, AccountStore

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
Scope = Literal["read", "write", "admin"]
LOGINS = ThreadPoolExecutor(2, thread_name_prefix="login")
"""Argon2 checks run here, not on the pool the workflows use: a burst of logins slows logins only."""


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
    key_proof: str | None = Field(None, description="With key: its signature (hex) of the registration, "
                                                    "contracts.principals.proof_bytes(chain, organisation, name, key).")


class PasswordChange(BaseModel):
    old_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


class NewToken(BaseModel):
    principal: str = Field(max_length=64)
    scopes: list[Scope] = Field(default_factory=list, description="Default: every scope of the principal.")
    expires: int = Field(0, ge=0, description="Milliseconds since the epoch; 0: never.")
    label: str = Field("", max_length=200)


def add_account_resources(app: FastAPI, accounts: AccountStore, acting: Acting, secure: bool) -> None:
    """Logins for everyone; principals and tokens for the home's operator and the
    organisation's administrator principals (``Acting.administer``)."""
    limiter = LoginLimiter()

    @app.post("/v1/auth/login", summary="Log a person in: sets the session cookie, returns the CSRF token",
              tags=["auth"])  # fmt: skip
    async def login(body: Login, request: Request) -> JSONResponse:
        address = request.client.host if request.client else "?"
        with limiter.attempt(body.name, address) as attempt:
            cookie, opened = await asyncio.get_running_loop().run_in_executor(LOGINS, accounts.login, body.name,
                                                                              body.password)  # fmt: skip
            attempt.succeeded()
        response = JSONResponse({"principal": body.name, "csrf": opened.csrf, "expires_in": SESSION_SECONDS})
        response.headers["set-cookie"] = session_cookie(cookie, SESSION_SECONDS, secure)
        return response

    @app.post("/v1/auth/logout", summary="End this session", tags=["auth"])
    async def logout(request: Request) -> JSONResponse:
        caller = caller_of(request)
        cookie = session_of(request.headers.get("cookie", ""))
        if caller.session is not None and cookie:
            accounts.logout(cookie)
        response = JSONResponse({"status": "logged out"})
        response.headers["set-cookie"] = session_cookie("", 0, secure)
        return response

    @app.post("/v1/auth/password", summary="Change the calling person's password; their sessions end",
              tags=["auth"])  # fmt: skip
    async def change_password(body: PasswordChange, request: Request) -> JSONResponse:
        caller = caller_of(request)
        address = request.client.host if request.client else "?"
        with limiter.attempt(caller.principal.name, address) as attempt:
            await asyncio.get_running_loop().run_in_executor(LOGINS, accounts.change_password, caller.principal.name,
                                                             body.old_password, body.new_password)  # fmt: skip
            attempt.succeeded()
        response = JSONResponse({"principal": caller.principal.name, "status": "password changed; log in again"})
        response.headers["set-cookie"] = session_cookie("", 0, secure)
        return response

    @app.get("/v1/auth/whoami", summary="The authenticated principal, its scopes and roles", tags=["auth"])
    async def whoami(request: Request) -> dict[str, Any]:
        caller = caller_of(request)
        return {**caller.principal.view(), "scopes": list(caller.scopes), "roles": acting.roles(caller),
                "via": "session" if caller.session is not None else "token"}  # fmt: skip

    @app.get("/v1/auth/principals", summary="This node's principals", tags=["auth"])
    async def principals(request: Request) -> dict[str, Any]:
        acting.administer(caller_of(request))
        return {"principals": [p.view() for p in await asyncio.to_thread(accounts.principals)]}

    @app.post("/v1/auth/principals", summary="Add a person or program (registered on chain with its roles, signed "
              "by the caller)", tags=["auth"], status_code=201)  # fmt: skip
    async def add_principal(body: NewPrincipal, request: Request) -> dict[str, Any]:
        caller = caller_of(request)
        acting.administer(caller)
        unknown = sorted(set(body.roles) - set(PRINCIPAL_ROLES))
        if unknown:
            raise BadRequest(f"unknown principal role(s) {', '.join(unknown)}; roles are {list(PRINCIPAL_ROLES)}")
        if not set(body.scopes) <= set(caller.scopes):
            raise Forbidden(f"{caller.principal.name} may give the scopes {', '.join(caller.scopes)} only")
        public = parse_hex(body.key, "key") if body.key is not None else None
        if public is not None and body.key_proof is None:
            raise BadRequest("a principal that brings its key proves it holds it: key_proof, its signature of the "
                             "registration (contracts.principals.proof_bytes)")  # fmt: skip
        session = acting.session(caller)
        organisation = session.organisation
        principal, key = await asyncio.to_thread(accounts.add_principal, body.name, body.kind, list(body.scopes),
                                                 password=body.password, public_key=public)  # fmt: skip
        if key is not None:
            proof = registration_proof(key, await session.chain_id(), organisation, body.name)
        else:
            proof = parse_hex(body.key_proof or "", "key_proof", size=64)
        try:
            outcome = await session.transact(calls.register_principal(body.name, body.kind, principal.public_key,
                                                                      sorted(body.roles), proof))  # fmt: skip
        except TransactionFailed:  # refused for good (a timeout may still commit: the account stays)
            await asyncio.to_thread(accounts.forget, body.name)
            raise
        return {**principal.view(), "roles": sorted(body.roles), "block": outcome.height}

    @app.delete("/v1/auth/principals/{name}", summary="Remove a principal: its tokens and sessions end, and its "
                "key stops acting on chain, for good", tags=["auth"])  # fmt: skip
    async def remove_principal(name: str, request: Request) -> dict[str, Any]:
        caller = caller_of(request)
        acting.administer(caller)
        outcome = await acting.session(caller).transact(calls.remove_principal(name))
        await asyncio.to_thread(accounts.disable, name)
        return {"name": name, "status": "disabled", "block": outcome.height}

    @app.get("/v1/auth/tokens", summary="API tokens (never their secrets)", tags=["auth"])
    async def tokens(request: Request, principal: str | None = None) -> dict[str, Any]:
        caller = caller_of(request)
        acting.administer(caller)
        listed = await asyncio.to_thread(accounts.tokens, principal)
        return {"tokens": [t.view() for t in listed if _may_manage(caller, t.principal)]}

    @app.post("/v1/auth/tokens", summary="Issue an API token (shown once)", tags=["auth"], status_code=201)
    async def issue(body: NewToken, request: Request) -> dict[str, Any]:
        caller = caller_of(request)
        acting.administer(caller)
        if not _may_manage(caller, body.principal):
            raise Forbidden("only the home's operator issues tokens that act as the operator")
        target = accounts.principal(body.principal)
        scopes = list(body.scopes) or (list(target.scopes) if target is not None else [])
        if not set(scopes) <= set(caller.scopes):
            raise Forbidden(f"{caller.principal.name} may give the scopes {', '.join(caller.scopes)} only")
        token, issued = await asyncio.to_thread(accounts.issue_token, body.principal, scopes, body.expires,
                                                body.label)  # fmt: skip
        return {**issued.view(), "token": token}

    @app.delete("/v1/auth/tokens/{token_id}", summary="Revoke an API token", tags=["auth"])
    async def revoke(token_id: str, request: Request) -> dict[str, Any]:
        caller = caller_of(request)
        acting.administer(caller)
        found = [t for t in await asyncio.to_thread(accounts.tokens) if t.id == token_id]
        if found and not _may_manage(caller, found[0].principal):
            raise Forbidden("only the home's operator revokes the operator's tokens")
        await asyncio.to_thread(accounts.revoke_token, token_id)
        return {"id": token_id, "status": "revoked"}


def _may_manage(caller: Caller, principal: str) -> bool:
    """The operator's tokens are the operator's alone to see and manage."""
    return principal != OPERATOR or caller.principal.name == OPERATOR
