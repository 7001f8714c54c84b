"""Signing (Ed25519, PyNaCl: the one implementation pinned for consensus), X25519 keys,
and key files: written 0600, optionally sealed with a passphrase (Argon2id + AES-256-GCM).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from twinledger.errors import KeyFileError

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

# Argon2id parameters for key files (RFC 9106 second recommended option, 64 MiB).
ARGON2_TIME = 3
ARGON2_MEMORY_KIB = 65536
ARGON2_PARALLELISM = 4


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 key pair; ``public`` is the 32-byte identity used on the ledger."""

    seed: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(32))

    @cached_property
    def _nacl(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @cached_property
    def public(self) -> bytes:
        return bytes(self._nacl.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self._nacl.sign(message).signature

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.hex()[:16]}…)"


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Strict Ed25519 verification (libsodium rejects non-canonical and small-order inputs)."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class EncryptionKey:
    """An X25519 key pair for public-key encryption to this party."""

    secret: bytes

    @classmethod
    def generate(cls) -> EncryptionKey:
        return cls(os.urandom(32))

    @property
    def public(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        key = x25519.X25519PrivateKey.from_private_bytes(self.secret)
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def __repr__(self) -> str:
        return f"EncryptionKey(public={self.public.hex()[:16]}…)"


# --- key files --------------------------------------------------------------------------

KEY_FILE_FORMAT = "twinledger-key/1"


def _derive(passphrase: str, salt: bytes) -> bytes:
    return hash_secret_raw(
        passphrase.encode("utf-8"),
        salt,
        time_cost=ARGON2_TIME,
        memory_cost=ARGON2_MEMORY_KIB,
        parallelism=ARGON2_PARALLELISM,
        hash_len=32,
        type=Type.ID,
    )


def seal_secret(kind: str, secret: bytes, passphrase: str | None = None) -> dict[str, object]:
    """A secret as a key-file document: sealed with Argon2id and AES-GCM if a passphrase
    is given, else in the clear (for a file only its owner may read)."""
    doc: dict[str, object] = {"format": KEY_FILE_FORMAT, "kind": kind}
    if passphrase:
        salt, nonce = os.urandom(16), os.urandom(12)
        header = f"{KEY_FILE_FORMAT}|{kind}".encode()
        sealed = AESGCM(_derive(passphrase, salt)).encrypt(nonce, secret, header)
        doc["kdf"] = {
            "name": "argon2id",
            "salt": salt.hex(),
            "time": ARGON2_TIME,
            "memory_kib": ARGON2_MEMORY_KIB,
            "parallelism": ARGON2_PARALLELISM,
        }
        doc["nonce"] = nonce.hex()
        doc["sealed"] = sealed.hex()
    else:
        doc["secret"] = secret.hex()
    return doc


def write_secret_file(path: Path, kind: str, secret: bytes, passphrase: str | None = None) -> None:
    """Write a secret key file readable by its owner only (0600), sealed if a passphrase is given."""
    doc = seal_secret(kind, secret, passphrase)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle, indent=2)
        handle.write("\n")
    os.chmod(path, 0o600)


def is_sealed(path: Path) -> bool:
    try:
        return "sealed" in json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {path}") from exc


def read_secret_file(path: Path, kind: str, passphrase: str | None = None) -> bytes:
    """Read a key file; every failure (wrong passphrase, tampering, wrong kind) is KeyFileError."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot open key file {path}") from exc
    return open_secret(doc, kind, passphrase, f"key file {path}")


def open_secret(doc: Any, kind: str, passphrase: str | None = None, where: str = "sealed secret") -> bytes:
    """The secret of a key-file document; every failure is KeyFileError naming ``where``."""
    try:
        if doc.get("format") != KEY_FILE_FORMAT or doc.get("kind") != kind:
            raise ValueError
        if "secret" in doc:
            return bytes.fromhex(doc["secret"])
        if not passphrase:
            raise KeyFileError(f"{where} is sealed: a passphrase is needed")
        kdf = doc["kdf"]
        if kdf["name"] != "argon2id":
            raise ValueError
        key = hash_secret_raw(
            passphrase.encode("utf-8"),
            bytes.fromhex(kdf["salt"]),
            time_cost=int(kdf["time"]),
            memory_cost=int(kdf["memory_kib"]),
            parallelism=int(kdf["parallelism"]),
            hash_len=32,
            type=Type.ID,
        )
        header = f"{KEY_FILE_FORMAT}|{kind}".encode()
        return AESGCM(key).decrypt(bytes.fromhex(doc["nonce"]), bytes.fromhex(doc["sealed"]), header)
    except KeyFileError:
        raise
    except (AttributeError, ValueError, KeyError, TypeError, InvalidTag) as exc:
        raise KeyFileError(f"cannot open {where}") from exc
