"""A node's accounts: the principals who may use its API, their credentials and keys.

People log in with a name and password (Argon2id hashes); programs present API tokens
(``tl1.<id>.<secret>``: the node keeps only a SHA-256 of the secret, so a stolen database
holds no usable token). Each principal has API scopes — ``read`` (GET), ``write``
(workflows) and ``admin`` (principals, tokens, store maintenance) — and, unless it
brought its own key, an Ed25519 key the node keeps sealed: a person's under their
password (opened at login, held only in the session's memory), a program's under the
home's passphrase. What a principal's key may sign is what its on-chain principal roles
permit (``contracts/principals.py``).

The home's own token (``keys/api-token``) belongs to ``operator``: the home's operator
key, with every scope; the CLI, the agent and the demo use it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from twinledger.config import NodeConfig, passphrase
from twinledger.core.files import replace_durably
from twinledger.core.sqlite import open_database
from twinledger.crypto.keys import SigningKey, open_secret, seal_secret
from twinledger.errors import TwinledgerError

SCOPES = ("read", "write", "admin")
KINDS = ("person", "program")
OPERATOR = "operator"
TOKEN_PREFIX = "tl1"
MIN_PASSWORD = 12
SESSION_SECONDS = 8 * 3600
SCHEMA = """
CREATE TABLE IF NOT EXISTS principals (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    public_key BLOB NOT NULL,
    sealed_key TEXT,
    password TEXT,
    scopes TEXT NOT NULL,
    created INTEGER NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    digest BLOB NOT NULL,
    scopes TEXT NOT NULL,
    expires INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    label TEXT NOT NULL DEFAULT ''
);
"""


class AuthenticationFailed(TwinledgerError):
    code = "unauthenticated"
    http_status = 401


class AccountError(TwinledgerError):
    code = "account"


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str
    public_key: bytes
    scopes: tuple[str, ...]
    has_key: bool
    """The node keeps this principal's private key (sealed)."""
    disabled: bool = False

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "key": self.public_key.hex(), "scopes": list(self.scopes),
                "key_held_by_node": self.has_key, "disabled": self.disabled}  # fmt: skip


@dataclass(frozen=True)
class Token:
    id: str
    principal: str
    scopes: tuple[str, ...]
    expires: int
    """Milliseconds since the epoch; 0: never."""
    revoked: bool
    label: str

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "principal": self.principal, "scopes": list(self.scopes), "expires": self.expires,
                "revoked": self.revoked, "label": self.label}  # fmt: skip


@dataclass
class LoginSession:
    """A person's session: its cookie value is known to the browser only; the node keeps
    its hash, the CSRF token and the person's opened key, in memory."""

    principal: str
    csrf: str
    key: SigningKey | None
    expires: float


def _now_ms() -> int:
    return int(time.time() * 1000)


def _scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    if not scopes or any(s not in SCOPES for s in scopes):
        raise AccountError(f"scopes must be some of {', '.join(SCOPES)}", code="bad_request")
    return tuple(s for s in SCOPES if s in scopes)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class AccountStore:
    """The accounts database of one node (``data/accounts.db``); safe to use from threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # new log files take its mode: owner only
        self.db = open_database(path, SCHEMA, shared=True)
        for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if name.exists():  # files an older version left readable
                os.chmod(name, 0o600)
        self.lock = threading.Lock()
        self.hasher = PasswordHasher()
        self._dummy = self.hasher.hash(secrets.token_hex(16))
        self.sessions: dict[bytes, LoginSession] = {}

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.lock:
            return list(self.db.execute(sql, args).fetchall())

    def _write(self, sql: str, *args: Any) -> None:
        with self.lock:
            self.db.execute(sql, args)

    # -- principals ------------------------------------------------------------------------------

    def principal(self, name: str) -> Principal | None:
        rows = self._rows("SELECT name, kind, public_key, sealed_key IS NOT NULL, scopes, disabled FROM principals "
                          "WHERE name = ?", name)  # fmt: skip
        if not rows:
            return None
        name, kind, public, has_key, scopes, disabled = rows[0]
        return Principal(name, kind, bytes(public), tuple(json.loads(scopes)), bool(has_key), bool(disabled))

    def principals(self) -> list[Principal]:
        names = [row[0] for row in self._rows("SELECT name FROM principals ORDER BY name")]
        return [p for p in (self.principal(n) for n in names) if p is not None]

    def add_principal(self, name: str, kind: str, scopes: list[str], *, password: str | None = None,
                      public_key: bytes | None = None) -> tuple[Principal, SigningKey | None]:  # fmt: skip
        """A new principal with a new key (sealed here) or the public key it brings; a person
        needs a password. Returns the principal and its new key (None if it brought one)."""
        if kind not in KINDS:
            raise AccountError(f"kind must be one of {', '.join(KINDS)}", code="bad_request")
        if kind == "person" and (password is None or len(password) < MIN_PASSWORD):
            raise AccountError(f"a person's password has at least {MIN_PASSWORD} characters", code="bad_request")
        if self.principal(name) is not None:
            raise AccountError(f"principal {name!r} exists", code="exists")
        key = SigningKey.generate() if public_key is None else None
        public = key.public if key is not None else public_key
        assert public is not None
        sealed = None
        if key is not None:
            sealed = json.dumps(seal_secret("ed25519", key.seed, password if kind == "person" else passphrase()))
        hashed = self.hasher.hash(password) if password is not None else None
        self._write("INSERT INTO principals (name, kind, public_key, sealed_key, password, scopes, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", name, kind, public, sealed, hashed,
                    json.dumps(list(_scopes(scopes))), _now_ms())  # fmt: skip
        principal = self.principal(name)
        assert principal is not None
        return principal, key

    def disable(self, name: str) -> None:
        """The principal can no longer log in or use its tokens (its entry stays)."""
        if name == OPERATOR:
            raise AccountError("the home's operator stays: revoke a token of it instead", code="bad_request")
        if self.principal(name) is None:
            raise AccountError(f"no principal {name!r}", code="not_found")
        self._write("UPDATE principals SET disabled = 1 WHERE name = ?", name)
        self._write("UPDATE api_tokens SET revoked = 1 WHERE principal = ?", name)
        self.sessions = {k: s for k, s in self.sessions.items() if s.principal != name}

    def forget(self, name: str) -> None:
        """Drop a principal that never came to be (its registration on chain failed)."""
        self._write("DELETE FROM api_tokens WHERE principal = ?", name)
        self._write("DELETE FROM principals WHERE name = ?", name)

    def program_key(self, name: str) -> SigningKey | None:
        """A program's key, opened with the home's passphrase (None if it brought its own)."""
        rows = self._rows("SELECT sealed_key FROM principals WHERE name = ? AND kind = 'program'", name)
        if not rows or rows[0][0] is None:
            return None
        return SigningKey(open_secret(json.loads(rows[0][0]), "ed25519", passphrase(), f"the key of {name}"))

    # -- people: login sessions --------------------------------------------------------------------

    def login(self, name: str, password: str) -> tuple[str, LoginSession]:
        """A new session (cookie value, session) for a person whose password matches."""
        rows = self._rows("SELECT password, sealed_key, disabled FROM principals WHERE name = ? AND kind = 'person'",
                          name)  # fmt: skip
        stored, sealed, disabled = rows[0] if rows else (self._dummy, None, 1)
        try:
            self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            raise AuthenticationFailed("wrong name or password") from None
        if disabled:
            raise AuthenticationFailed("wrong name or password")
        key = SigningKey(open_secret(json.loads(sealed), "ed25519", password, f"the key of {name}")) if sealed else None
        cookie = secrets.token_urlsafe(32)
        session = LoginSession(name, secrets.token_urlsafe(24), key, time.time() + SESSION_SECONDS)
        self.sessions = {k: s for k, s in self.sessions.items() if s.expires > time.time()}
        self.sessions[_digest(cookie)] = session
        return cookie, session

    def change_password(self, name: str, old: str, new: str) -> None:
        """A person's new password: their key is sealed anew under it, and every session of
        theirs ends (log in again)."""
        rows = self._rows("SELECT password, sealed_key FROM principals WHERE name = ? AND kind = 'person' "
                          "AND disabled = 0", name)  # fmt: skip
        stored, sealed = rows[0] if rows else (self._dummy, None)
        try:
            self.hasher.verify(stored, old)
        except (VerificationError, InvalidHashError):
            raise AuthenticationFailed("wrong name or password") from None
        if not rows:
            raise AuthenticationFailed("wrong name or password")
        if len(new) < MIN_PASSWORD:
            raise AccountError(f"a person's password has at least {MIN_PASSWORD} characters", code="bad_request")
        resealed = None
        if sealed is not None:
            seed = open_secret(json.loads(sealed), "ed25519", old, f"the key of {name}")
            resealed = json.dumps(seal_secret("ed25519", seed, new))
        self._write("UPDATE principals SET password = ?, sealed_key = ? WHERE name = ?", self.hasher.hash(new),
                    resealed, name)  # fmt: skip
        self.sessions = {k: s for k, s in self.sessions.items() if s.principal != name}

    def session(self, cookie: str) -> LoginSession | None:
        found = self.sessions.get(_digest(cookie))
        if found is None or found.expires <= time.time():
            return None
        return found

    def logout(self, cookie: str) -> None:
        self.sessions.pop(_digest(cookie), None)

    # -- programs: API tokens ----------------------------------------------------------------------

    def issue_token(self, principal: str, scopes: list[str] | None = None, expires: int = 0,
                    label: str = "") -> tuple[str, Token]:  # fmt: skip
        """A new token for ``principal`` (scopes: at most its own; default: all of its own)."""
        owner = self.principal(principal)
        if owner is None or owner.disabled:
            raise AccountError(f"no active principal {principal!r}", code="not_found")
        chosen = _scopes(scopes or list(owner.scopes))
        if not set(chosen) <= set(owner.scopes):
            raise AccountError(f"{principal} holds the scopes {', '.join(owner.scopes)} only", code="bad_request")
        if expires and expires <= _now_ms():
            raise AccountError("the token's expiry lies in the past", code="bad_time")
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        self._write("INSERT INTO api_tokens (id, principal, digest, scopes, expires, created, label) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", token_id, principal, _digest(secret), json.dumps(list(chosen)),
                    expires, _now_ms(), label)  # fmt: skip
        return f"{TOKEN_PREFIX}.{token_id}.{secret}", Token(token_id, principal, chosen, expires, False, label)

    def tokens(self, principal: str | None = None) -> list[Token]:
        rows = self._rows("SELECT id, principal, scopes, expires, revoked, label FROM api_tokens "
                          "WHERE ? IS NULL OR principal = ? ORDER BY created", principal, principal)  # fmt: skip
        return [Token(i, p, tuple(json.loads(s)), e, bool(r), label) for i, p, s, e, r, label in rows]

    def revoke_token(self, token_id: str) -> None:
        if not self._rows("SELECT 1 FROM api_tokens WHERE id = ?", token_id):
            raise AccountError(f"no token {token_id}", code="not_found")
        self._write("UPDATE api_tokens SET revoked = 1 WHERE id = ?", token_id)

    def authenticate(self, presented: str) -> tuple[Principal, tuple[str, ...]]:
        """The principal and scopes of a presented token; AuthenticationFailed (one message
        for every reason, so a probe learns nothing) if it is malformed, unknown, wrong,
        expired, revoked or its principal disabled."""
        prefix, _, rest = presented.partition(".")
        token_id, _, secret = rest.partition(".")
        rows = self._rows("SELECT principal, digest, scopes, expires, revoked FROM api_tokens WHERE id = ?", token_id)
        if prefix != TOKEN_PREFIX or not rows:
            hmac.compare_digest(_digest(secret), bytes(32))
            raise AuthenticationFailed("the API token is not valid (unknown, expired or revoked)")
        name, digest, scopes, expires, revoked = rows[0]
        principal = self.principal(name)
        if (not hmac.compare_digest(_digest(secret), bytes(digest)) or revoked or (expires and expires <= _now_ms())
                or principal is None or principal.disabled):  # fmt: skip
            raise AuthenticationFailed("the API token is not valid (unknown, expired or revoked)")
        return principal, tuple(json.loads(scopes))


def ensure_home_token(config: NodeConfig, accounts: AccountStore) -> None:
    """Give the home its operator token (``keys/api-token``) unless it holds a valid one."""
    path = config.api_token_path
    if path.exists():
        try:
            accounts.authenticate(path.read_text().strip())
            return
        except AuthenticationFailed:
            pass
    if accounts.principal(OPERATOR) is None:
        accounts.add_principal(OPERATOR, "program", list(SCOPES), public_key=config.signing_key("operator").public)
    token, _ = accounts.issue_token(OPERATOR, list(SCOPES), label="the home's token")
    replace_durably(path, (token + "\n").encode())
