"""Public-key encryption to an X25519 key.

``seal`` is an ECIES "sealed box": a fresh ephemeral X25519 key, the shared secret run
through HKDF-SHA256 bound to both public keys and a context label, then AES-256-GCM.
It wraps data keys for organisations (Dietz et al. §4.2: an ACL of encrypted access keys).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from twinledger.crypto.keys import EncryptionKey
from twinledger.errors import DecryptionFailed, TwinledgerError

SEAL_TAG = b"twinledger/seal/v1"
SEAL_OVERHEAD = 32 + 16
ZERO_NONCE = bytes(12)


def _wrapping_key(shared: bytes, ephemeral: bytes, recipient: bytes, context: bytes) -> bytes:
    info = SEAL_TAG + len(context).to_bytes(2, "big") + context + ephemeral + recipient
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared)


def seal(recipient: bytes, plaintext: bytes, context: bytes) -> bytes:
    """Encrypt ``plaintext`` so only the holder of ``recipient``'s secret reads it."""
    if len(recipient) != 32:
        raise TwinledgerError("an X25519 public key is 32 bytes", code="bad_key")
    ephemeral = x25519.X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(recipient))
    key = _wrapping_key(shared, ephemeral_public, recipient, context)
    return ephemeral_public + AESGCM(key).encrypt(ZERO_NONCE, plaintext, context)  # the key is used once


def unseal(key: EncryptionKey, sealed: bytes, context: bytes) -> bytes:
    if len(sealed) < SEAL_OVERHEAD:
        raise DecryptionFailed()
    ephemeral_public = sealed[:32]
    try:
        secret = x25519.X25519PrivateKey.from_private_bytes(key.secret)
        shared = secret.exchange(x25519.X25519PublicKey.from_public_bytes(ephemeral_public))
        wrapping = _wrapping_key(shared, ephemeral_public, key.public, context)
        return AESGCM(wrapping).decrypt(ZERO_NONCE, sealed[32:], context)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionFailed() from exc
