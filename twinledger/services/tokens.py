"""Write tokens: an owner's signed leave for another key (a processing service) to call
some of a twin's methods until a time. Issued off chain as a file; in force once
presented; checked again at every use; revocable presented or not."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinledger.contracts import calls
from twinledger.contracts.authorization import MAX_TOKEN_LIFE_MS, WriteToken
from twinledger.core.encoding import decode, from_obj
from twinledger.errors import BadRequest, DecodeError, TwinledgerError, parse_hex
from twinledger.services.session import Session

TOKEN_FORMAT = "twinledger-write-token/1"


@dataclass(frozen=True)
class TokenFile:
    """A token as issued: what it allows and its signed bytes."""

    id: str
    twin: str
    recipient: str
    methods: list[str]
    scopes: list[str]
    not_after: int
    token: str

    def view(self) -> dict[str, Any]:
        return {"format": TOKEN_FORMAT, "id": self.id, "twin": self.twin, "recipient": self.recipient,
                "methods": self.methods, "scopes": self.scopes, "not_after": self.not_after, "token": self.token}  # fmt: skip


    @classmethod
    def of(cls, token: WriteToken) -> TokenFile:
        return cls(token.id.hex(), token.twin, token.recipient.hex(), list(token.methods), list(token.scopes),
                   token.not_after, token.encoded().hex())  # fmt: skip


def checked(issued: TokenFile) -> TokenFile:
    """``issued``, if its readable fields are what the signed token it carries says: an
    edited or made-up file is refused, so a revocation names the token it means."""
    try:
        token = from_obj(WriteToken, decode(bytes.fromhex(issued.token), max_size=4096), "write token")
        genuine = TokenFile.of(token)
    except (ValueError, TypeError, AttributeError, DecodeError):
        raise TwinledgerError("the token file carries no well-formed write token", code="bad_token") from None
    if genuine != issued:
        raise TwinledgerError("the token file's fields do not match the signed token it carries", code="bad_token")
    return genuine


def read_token_file(path: Path) -> TokenFile:
    try:
        view = json.loads(path.read_text())
        if view.get("format") != TOKEN_FORMAT:
            raise ValueError
        issued = TokenFile(view["id"], view["twin"], view["recipient"], list(view["methods"]), list(view["scopes"]),
                           int(view["not_after"]), view["token"])  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        raise TwinledgerError(f"{path} is not a twinledger write token file", code="bad_token") from None
    try:
        return checked(issued)
    except TwinledgerError as exc:
        raise TwinledgerError(f"{path}: {exc.message}", code="bad_token") from None


async def issue(session: Session, twin_ref: str, recipient_hex: str, methods: list[str], not_after: int,
                scopes: list[str], output: Path | None = None) -> TokenFile:  # fmt: skip
    """Sign a write token for ``recipient_hex`` (an Ed25519 public key) until ``not_after``
    (ms since the epoch); written to ``output`` if given (never over an existing file)."""
    recipient = parse_hex(recipient_hex, "the recipient (an Ed25519 public key)")
    if not_after <= time.time() * 1000:
        raise BadRequest("the token's end lies in the past", code="bad_time")
    if not_after > time.time() * 1000 + MAX_TOKEN_LIFE_MS:
        raise BadRequest("a write token ends within a year and a day", code="bad_time")
    if output is not None and output.exists():
        raise TwinledgerError(f"{output} exists; choose another file", code="exists")
    twin_id = (await session.twin(twin_ref))["id"]
    token = WriteToken(await session.chain_id(), twin_id, recipient, tuple(methods), tuple(sorted(set(scopes))),
                       not_after, b"", os.urandom(16)).signed(session.signer)  # fmt: skip
    issued = TokenFile.of(token)
    if output is not None:
        output.write_text(json.dumps(issued.view(), indent=2) + "\n")
    return issued


async def present(session: Session, token: TokenFile) -> int:
    """Put a token into force on chain; the block."""
    return (await session.transact(calls.present_token(bytes.fromhex(checked(token).token)))).height


async def revoke(session: Session, token: TokenFile) -> int:
    """End a token now, presented or not; the block."""
    genuine = checked(token)
    call = calls.revoke_token(genuine.twin, bytes.fromhex(genuine.id), bytes.fromhex(genuine.recipient))
    return (await session.transact(call)).height
