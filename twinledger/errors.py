"""Named errors shared by every layer.

Each error carries a stable machine-readable ``code`` (used by the API and the CLI's
``--json`` output) and a message that names what was wrong.
"""

from __future__ import annotations

import errno


class TwinledgerError(Exception):
    """Base of every error a user may see; never carries a stack trace to the user."""

    code = "error"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class DecodeError(TwinledgerError):
    code = "undecodable"


class InvalidTransaction(TwinledgerError):
    code = "invalid_transaction"


class InvalidBlock(TwinledgerError):
    code = "invalid_block"


class InvalidProof(TwinledgerError):
    code = "invalid_proof"


class NotFound(TwinledgerError):
    code = "not_found"
    http_status = 404


class MempoolFull(TwinledgerError):
    code = "mempool_full"
    http_status = 503


class ContractError(TwinledgerError):
    """Raised by a contract method; the transaction is recorded as failed."""

    code = "contract_error"


class ConfigError(TwinledgerError):
    code = "bad_config"


class KeyFileError(TwinledgerError):
    """One generic error for every failure to open a key file (wrong passphrase, tampering)."""

    code = "key_file"


class DecryptionFailed(TwinledgerError):
    """One generic error for every failure to decrypt or re-encrypt: wrong key, tampering, truncation."""

    code = "decryption_failed"

    def __init__(self) -> None:
        super().__init__("cannot decrypt: wrong key or damaged data")


class TransactionFailed(TwinledgerError):
    """The chain committed the transaction and the contract refused it; the code is the receipt's."""


class NotCommitted(TwinledgerError):
    """A write not seen committed in time, which may still commit: pending, not failed."""

    code = "not_committed"
    http_status = 503


class BadRequest(TwinledgerError):
    """A caller's input is malformed (a hex string that is not hex, a time in the past)."""

    code = "bad_request"


def parse_hex(value: str, what: str, size: int | None = 32) -> bytes:
    """``value`` as bytes, or BadRequest naming ``what`` if it is not hex of ``size`` bytes."""
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise BadRequest(f"{what} must be hex") from None
    if size is not None and len(raw) != size:
        raise BadRequest(f"{what} must be {size} bytes ({2 * size} hex digits)")
    return raw


class CannotListen(TwinledgerError):
    code = "cannot_listen"

    @classmethod
    def of(cls, what: str, host: str, port: int, exc: OSError, setting: str) -> CannotListen:
        """One line naming the address, why, and the setting that moves it."""
        reason = "the port is in use (by another node on this machine?)" if exc.errno == errno.EADDRINUSE else \
            (exc.strerror or str(exc)).lower()  # fmt: skip
        return cls(f"cannot listen for {what} on {host}:{port}: {reason}; choose another port: {setting}")
