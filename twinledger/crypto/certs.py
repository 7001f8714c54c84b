"""Consortium PKI, membership-service style.

consortium CA  ──signs──▶  organisation CA  ──signs──▶  node certificate

A node certificate carries the node's TLS key (ECDSA P-256, for mutual TLS) and binds
the node's ledger keys (Ed25519 signing, X25519 encryption) as SubjectAltName URIs
``urn:twinledger:ed25519:<hex>``. A node's identity is therefore its organisation's
certificate chain.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from twinledger.crypto.keys import read_secret_file, write_secret_file
from twinledger.errors import TwinledgerError

ED25519_URI = "urn:twinledger:ed25519:"
X25519_URI = "urn:twinledger:x25519:"
NODE_URI = "urn:twinledger:node:"
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=90)
"""A node certificate's life: short, because its node renews it by itself (RENEW_WITHIN)."""
RENEW_WITHIN = dt.timedelta(days=30)
"""A node renews its certificate when less than this is left."""


class CertificateError(TwinledgerError):
    code = "bad_certificate"


@dataclass(frozen=True)
class Issuer:
    """A certificate together with the private key that signs with it."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class NodeIdentity:
    """What a verified certificate chain says about a node."""

    organisation: str
    node: str
    signing_key: bytes
    encryption_key: bytes


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key, validity: dt.timedelta):
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def create_consortium_ca(name: str) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"{name} consortium CA", name)
    cert = (
        _builder(subject, subject, key.public_key(), CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issuer(cert, key)


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def issue_organisation_ca(consortium: Issuer, organisation: str) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(f"{organisation} CA", organisation), consortium.cert.subject,
                 key.public_key(), CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(organisation_constraint(organisation), critical=True)
        .sign(consortium.key, hashes.SHA256())
    )  # fmt: skip
    return Issuer(cert, key)


def organisation_constraint(organisation: str) -> x509.NameConstraints:
    """An organisation's CA names only its own organisation's nodes: every TLS stack (not
    just ours) refuses a certificate it issued for another organisation's name."""
    subtree = x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation)]))
    return x509.NameConstraints(permitted_subtrees=[subtree], excluded_subtrees=None)


def issue_node_certificate(
    organisation: Issuer,
    node: str,
    signing_key: bytes,
    encryption_key: bytes,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
) -> Issuer:
    """Issue a node's TLS certificate binding its ledger keys to its organisation."""
    key = ec.generate_private_key(ec.SECP256R1())
    org_name = organisation_of(organisation.cert)
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(f"{NODE_URI}{org_name}:{node}"),
        x509.UniformResourceIdentifier(ED25519_URI + signing_key.hex()),
        x509.UniformResourceIdentifier(X25519_URI + encryption_key.hex()),
    ]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        _builder(_name(node, org_name), organisation.cert.subject, key.public_key(), LEAF_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(organisation.key, hashes.SHA256())
    )
    return Issuer(cert, key)


def hosts_of(node_cert: x509.Certificate) -> tuple[str, ...]:
    """The host names and addresses a node certificate is for (its TLS names)."""
    try:
        san = node_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return (*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))


def read_issuer(cert_path: Path, key_path: Path, passphrase: str | None) -> Issuer:
    """A CA certificate and its private key, as ``write_issuer`` wrote them."""
    der = read_secret_file(key_path, "ec-p256-pkcs8", passphrase)
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path} holds no EC private key")
    return Issuer(read_certificate(cert_path), key)


def organisation_of(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not attrs:
        raise CertificateError("certificate names no organisation")
    return str(attrs[0].value)


def _check_issued(child: x509.Certificate, parent: x509.Certificate, now: dt.datetime) -> None:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateError("certificate chain does not verify") from exc
    constraints = parent.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not constraints.ca:
        raise CertificateError("certificate chain does not verify")
    for cert in (child, parent):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateError("certificate chain does not verify (expired or not yet valid)")


def verify_node_chain(
    node_cert: x509.Certificate, org_cert: x509.Certificate, ca_cert: x509.Certificate
) -> NodeIdentity:
    """Verify node ← organisation ← consortium CA and return the identity it proves."""
    now = dt.datetime.now(dt.UTC)
    _check_issued(ca_cert, ca_cert, now)
    _check_issued(org_cert, ca_cert, now)
    _check_issued(node_cert, org_cert, now)
    organisation = organisation_of(org_cert)
    if organisation_of(node_cert) != organisation:
        raise CertificateError("node certificate names another organisation than its issuer")
    return identity_of(node_cert)


def identity_of(node_cert: x509.Certificate) -> NodeIdentity:
    try:
        san = node_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError("node certificate binds no ledger keys") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    found: dict[str, str] = {}
    for uri in uris:
        for prefix in (ED25519_URI, X25519_URI, NODE_URI):
            if uri.startswith(prefix):
                found[prefix] = uri[len(prefix) :]
    try:
        signing = bytes.fromhex(found[ED25519_URI])
        encryption = bytes.fromhex(found[X25519_URI])
        node = found[NODE_URI].split(":", 1)[1]
    except (KeyError, ValueError, IndexError) as exc:
        raise CertificateError("node certificate binds no ledger keys") from exc
    if len(signing) != 32 or len(encryption) != 32:
        raise CertificateError("node certificate binds malformed ledger keys")
    return NodeIdentity(organisation_of(node_cert), node, signing, encryption)


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot read certificate {path}") from exc


def write_issuer(cert_path: Path, key_path: Path, issuer: Issuer, passphrase: str | None) -> None:
    """Write a certificate (PEM) and its EC private key (0600, sealed if a passphrase is set)."""
    write_certificate(cert_path, issuer.cert)
    der = issuer.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret_file(key_path, "ec-p256-pkcs8", der, passphrase)
