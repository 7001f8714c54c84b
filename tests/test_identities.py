from __future__ import annotations

import json
import stat

import pytest

from twinledger.crypto import certs
from twinledger.crypto.keys import EncryptionKey, SigningKey, read_secret_file, write_secret_file
from twinledger.errors import KeyFileError


def test_key_files_are_private_and_roundtrip(tmp_path):
    key = SigningKey.generate()
    path = tmp_path / "k.key"
    write_secret_file(path, "ed25519", key.seed)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secret_file(path, "ed25519") == key.seed


def test_sealed_key_files(tmp_path, monkeypatch):
    monkeypatch.setattr("twinledger.crypto.keys.ARGON2_MEMORY_KIB", 1024)
    key = EncryptionKey.generate()
    path = tmp_path / "k.key"
    write_secret_file(path, "x25519", key.secret, "correct horse")
    assert key.secret.hex() not in path.read_text()
    assert read_secret_file(path, "x25519", "correct horse") == key.secret
    for attempt in (lambda: read_secret_file(path, "x25519", "wrong"),
                    lambda: read_secret_file(path, "x25519", None),
                    lambda: read_secret_file(path, "ed25519", "correct horse")):  # fmt: skip
        with pytest.raises(KeyFileError):
            attempt()
    doc = json.loads(path.read_text())
    sealed = bytearray(bytes.fromhex(doc["sealed"]))
    sealed[0] ^= 1
    doc["sealed"] = sealed.hex()
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError) as info:
        read_secret_file(path, "x25519", "correct horse")
    assert "cannot open key file" in info.value.message


def _chain(org: str = "acme"):
    ca = certs.create_consortium_ca("consortium")
    org_ca = certs.issue_organisation_ca(ca, org)
    signing, encryption = SigningKey.generate(), EncryptionKey.generate()
    node = certs.issue_node_certificate(org_ca, "node-1", signing.public, encryption.public)
    return ca, org_ca, node, signing, encryption


def test_node_identity_is_its_organisation_chain():
    ca, org_ca, node, signing, encryption = _chain()
    identity = certs.verify_node_chain(node.cert, org_ca.cert, ca.cert)
    assert identity.organisation == "acme" and identity.node == "node-1"
    assert identity.signing_key == signing.public and identity.encryption_key == encryption.public


def test_certificate_from_another_consortium_is_refused():
    ca, org_ca, node, *_ = _chain()
    other_ca, other_org, other_node, *_ = _chain("mallory")
    with pytest.raises(certs.CertificateError):
        certs.verify_node_chain(other_node.cert, other_org.cert, ca.cert)
    with pytest.raises(certs.CertificateError):
        certs.verify_node_chain(node.cert, other_org.cert, other_ca.cert)


def test_a_node_certificate_cannot_act_as_issuer():
    ca, *_ = _chain()
    signing = SigningKey.generate()
    leaf = certs.issue_node_certificate(ca, "leaf", signing.public, signing.public)  # issued by the CA, not a CA
    rogue = certs.issue_node_certificate(leaf, "rogue", signing.public, signing.public)
    with pytest.raises(certs.CertificateError):
        certs.verify_node_chain(rogue.cert, leaf.cert, ca.cert)
