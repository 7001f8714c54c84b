"""Who is calling: every API request is authenticated, except the health check and the
login itself.

Programs send ``Authorization: Bearer tl1.<id>.<secret>``; people log in and their
browser sends the session cookie (HttpOnly, SameSite=Strict, Secure under TLS) and, on
every state-changing request, the session's CSRF token in ``X-CSRF-Token``. Before any
of that, the ``Host`` header must name this node (loopback, its API address or a
configured name — a DNS-rebinding page cannot reach it), and a state-changing request
that carries an ``Origin`` must come from this node's own origin or a configured one.
The scope a request needs follows from its method and path; what a principal's key may
sign is the chain's business (principal roles, twin roles), checked before signing.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

from twinledger.config import NodeConfig
from twinledger.errors import TwinledgerError
from twinledger.services.accounts import OPERATOR, AccountStore, AuthenticationFailed, LoginSession, Principal

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE = "twinledger_session"
CSRF_HEADER = "x-csrf-token"
PUBLIC = frozenset({("GET", "/v1/health"), ("POST", "/v1/auth/login")})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READING_POSTS = frozenset({"/graphql"})
"""POSTs that only read (GraphQL queries)."""
ADMIN_PATHS = ("/v1/auth/principals", "/v1/auth/tokens", "/v1/store/repair", "/v1/store/audit")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
UPLOAD_PATH = re.compile(r"/v1/twins/[^/]+/documents(/[^/]+/versions)?")
"""Where a document's bytes are the body (streamed to disk, not read into memory)."""
BODY_BYTES = 80 << 20
"""Most bytes of a request body (a batch of transactions, a million samples)."""
UPLOAD_BYTES = 1 << 34
"""Most bytes of a document upload (streamed to disk)."""
LOGIN_WINDOW = 60.0
NAME_FAILURES = 5
"""Failed logins a name may see in LOGIN_WINDOW seconds before its logins are refused."""
ADDRESS_FAILURES = 20
"""Failed logins a client address may make in LOGIN_WINDOW seconds (more: it guesses names)."""
MAX_TRACKED = 10_000


class Forbidden(TwinledgerError):
    code = "forbidden"
    http_status = 403


class BodyTooLarge(TwinledgerError):
    code = "too_large"
    http_status = 413


class TooManyAttempts(TwinledgerError):
    code = "rate_limited"
    http_status = 429


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of a request, with what it may do through the API."""

    principal: Principal
    scopes: tuple[str, ...]
    session: LoginSession | None = None
    """Set when a person's browser session authenticated the request."""
    valid: Callable[[], bool] = lambda: True
    """Whether the credentials still hold (a long stream asks again as it goes)."""


def allowed_hosts(config: NodeConfig) -> frozenset[str]:
    names = set(LOOPBACK_NAMES) | {h.lower() for h in config.api_allowed_hosts}
    if config.api_host in ("0.0.0.0", "::"):  # every interface: the machine's own names
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    else:
        names.add(config.api_host.lower())
    return frozenset(names)


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs (None: any authenticated caller, e.g. logging out)."""
    if path in ("/v1/auth/logout", "/v1/auth/whoami", "/v1/auth/password"):
        return None
    if path.startswith(ADMIN_PATHS):
        return "admin"
    if method in STATE_CHANGING and path not in READING_POSTS:
        return "write"
    return "read"


def body_limit(path: str) -> int:
    """Most bytes a request body may hold: documents stream to disk, batches of transactions
    are large, a login is small; anything past the limit ends the request (413)."""
    if UPLOAD_PATH.fullmatch(path):
        return UPLOAD_BYTES
    if path == "/v1/auth/login":
        return 16 * 1024
    return BODY_BYTES


def _bounded(receive: Receive, limit: int) -> Receive:
    """``receive`` that refuses a body past ``limit`` bytes, however it is sent (chunked too)."""
    seen = 0

    async def bounded() -> MutableMapping[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"the request body exceeds {limit} bytes")
        return message

    return bounded


def host_name(host: str) -> str:
    """The name part of a Host header (``[::1]:7700`` → ``::1``)."""
    if host.startswith("["):
        return host[1 : host.find("]")].lower()
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def still_signed_in(request: Request) -> bool:
    """For a long-lived stream: its credentials were not revoked nor its principal removed."""
    caller = request.scope.get("state", {}).get("caller")
    return caller is not None and caller.valid()


def caller_of(request: Request) -> Caller:
    caller = request.scope.get("state", {}).get("caller")
    if caller is None:
        raise AuthenticationFailed("sign in first")
    return caller  # type: ignore[no-any-return]


class LoginLimiter:
    """Failed logins per client address and per name, over a sliding window. An attempt
    counts from when it starts (until it succeeds), so concurrent guesses count too."""

    def __init__(self) -> None:
        self.failures: dict[str, deque[float]] = {}

    @contextmanager
    def attempt(self, name: str, address: str) -> Iterator[Attempt]:
        """Refuse if the limits are reached; count this attempt a failure unless it succeeds."""
        self.check(name, address)
        self.failed(name, address)
        attempt = Attempt()
        try:
            yield attempt
        finally:
            if attempt.ok:
                for key in (f"name:{name}", f"address:{address}"):
                    recent = self.failures.get(key)
                    if recent:
                        recent.pop()

    def check(self, name: str, address: str) -> None:
        now = time.monotonic()
        for key, limit in ((f"name:{name}", NAME_FAILURES), (f"address:{address}", ADDRESS_FAILURES)):
            recent = self.failures.get(key)
            while recent and recent[0] <= now - LOGIN_WINDOW:
                recent.popleft()
            if recent is not None and len(recent) >= limit:
                wait = LOGIN_WINDOW - (now - recent[0])
                raise TooManyAttempts(f"too many failed logins; try again in {wait:.0f} s")

    def failed(self, name: str, address: str) -> None:
        now = time.monotonic()
        if len(self.failures) > MAX_TRACKED:  # forget what left the window, so guessing cannot fill memory
            self.failures = {k: v for k, v in self.failures.items() if v and v[-1] > now - LOGIN_WINDOW}
        for key in (f"name:{name}", f"address:{address}"):
            self.failures.setdefault(key, deque()).append(now)


class Guard:
    """ASGI middleware: host allow-list, origin check, body size, authentication, scope."""

    def __init__(self, app: ASGIApp, accounts: AccountStore, config: NodeConfig,
                 removed: Callable[[bytes], bool] = lambda _: False) -> None:  # fmt: skip
        self.app = app
        self.accounts = accounts
        self.hosts = allowed_hosts(config)
        self.origins = frozenset(o.rstrip("/").lower() for o in config.api_cors_origins)
        self.secure = config.api_needs_tls
        self.removed = removed
        """Whether a key is a principal the chain removed (its tokens die with it)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the API has no WebSocket endpoint: refuse any upgrade
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            caller = self.check(scope)
            limit = body_limit(scope["path"])
            declared = dict(scope["headers"]).get(b"content-length", b"0")
            if declared.isascii() and declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge(f"the request body exceeds {limit} bytes")
        except TwinledgerError as exc:
            await _refuse(send, exc)
            return
        if caller is not None:
            scope.setdefault("state", {})["caller"] = caller
            if caller.principal.name != OPERATOR and self.removed(caller.principal.public_key):
                self.accounts.disable(caller.principal.name)
                await _refuse(send, AuthenticationFailed(f"principal {caller.principal.name} was removed on chain"))
                return
        await self.app(scope, _bounded(receive, limit), send)

    def check(self, scope: Scope) -> Caller | None:
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        host = headers.get("host", "")
        if host_name(host) not in self.hosts:
            raise Forbidden(f"this node does not answer to the host name {host_name(host)[:60]!r}",
                            code="host_not_allowed")  # fmt: skip
        method, path = scope["method"], scope["path"]
        origin = headers.get("origin")
        if method in STATE_CHANGING and origin is not None and not self._same_origin(origin, host):
            raise Forbidden(f"requests from {origin[:80]} may not change anything here", code="origin_not_allowed")
        if (method, path) in PUBLIC:
            return None
        caller = self._authenticate(headers, method)
        needed = required_scope(method, path)
        if needed is not None and needed not in caller.scopes:
            raise Forbidden(f"{caller.principal.name} lacks the {needed!r} scope this request needs")
        return caller

    def _token_of(self, token: str) -> None:
        principal, _ = self.accounts.authenticate(token)
        if self._removed_on_chain(principal):
            raise AuthenticationFailed("the principal was removed on chain")

    def _session_of(self, cookie: str) -> None:
        session = self.accounts.session(cookie)
        principal = self.accounts.principal(session.principal) if session is not None else None
        if principal is None or principal.disabled or self._removed_on_chain(principal):
            raise AuthenticationFailed("the session ended")

    def _removed_on_chain(self, principal: Principal) -> bool:
        return principal.name != OPERATOR and self.removed(principal.public_key)

    def _still(self, check: Callable[[], object]) -> bool:
        try:
            check()
        except AuthenticationFailed:
            return False
        return True

    def _same_origin(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.netloc == host.lower() and (parts.hostname or "") in self.hosts

    def _authenticate(self, headers: dict[str, str], method: str) -> Caller:
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
            principal, scopes = self.accounts.authenticate(token)
            return Caller(principal, scopes, valid=lambda: self._still(lambda: self._token_of(token)))
        value = session_of(headers.get("cookie", ""))
        session = self.accounts.session(value) if value is not None else None
        if session is None:
            raise AuthenticationFailed("sign in first: send an API token (Authorization: Bearer …) or log in")
        principal = self.accounts.principal(session.principal)
        if principal is None or principal.disabled:
            raise AuthenticationFailed("the session's principal no longer exists")
        if method in STATE_CHANGING and headers.get(CSRF_HEADER) != session.csrf:
            raise Forbidden("a state-changing request of a session carries its CSRF token (X-CSRF-Token)",
                            code="csrf")  # fmt: skip
        return Caller(principal, principal.scopes, session, valid=lambda: self._still(lambda: self._session_of(value)))


async def _refuse(send: Send, error: TwinledgerError) -> None:
    body = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.http_status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="twinledger"'))
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Attempt:
    ok: bool = False

    def succeeded(self) -> None:
        self.ok = True


def session_of(cookie_header: str) -> str | None:
    """The session cookie's value, read leniently: another application's cookie on the
    same host that is not RFC-clean must not hide it."""
    for part in cookie_header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == SESSION_COOKIE:
            return value.strip().strip('"') or None
    return None


def session_cookie(value: str, max_age: int, secure: bool) -> str:
    """The Set-Cookie value of a login (or, with ``max_age`` 0, of a logout)."""
    flags = "; Secure" if secure else ""
    return f"{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{flags}"
