"""TLS 1.3 contexts with mutual authentication by consortium certificates."""

from __future__ import annotations

import os
import ssl
import tempfile
import weakref
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from twinledger.crypto.keys import read_secret_file


def _load_identity(context: ssl.SSLContext, cert_chain: Path, key_file: Path,
                   passphrase: str | None) -> None:
    """Load our sealed key into ``context``: ssl only reads files, so hand it a PEM sealed
    with a one-time password that never touches the disk, and delete it at once."""
    der = read_secret_file(key_file, "ec-p256-pkcs8", passphrase)
    key = serialization.load_der_private_key(der, password=None)
    one_time = os.urandom(32).hex().encode()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(one_time),
    )
    fd, name = tempfile.mkstemp(prefix="twinledger-tls-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        context.load_cert_chain(str(cert_chain), name, password=one_time)
    finally:
        os.unlink(name)


_WITH_IDENTITY: weakref.WeakKeyDictionary[ssl.SSLContext, tuple[Path, Path]] = weakref.WeakKeyDictionary()
"""Every live context of this process that presents a certificate, with its chain and key
files: what ``reload_identity`` loads again when a node renews its certificate."""


def reload_identity(cert_chain: Path, passphrase: str | None) -> int:
    """Load the certificate chain and key again into every live context made with
    ``cert_chain`` (new connections present the renewed certificate); how many."""
    contexts = [(context, key) for context, (chain, key) in list(_WITH_IDENTITY.items()) if chain == cert_chain]
    for context, key in contexts:
        _load_identity(context, cert_chain, key, passphrase)
    return len(contexts)


def server_context(ca_cert: Path, cert_chain: Path, key_file: Path,
                   passphrase: str | None) -> ssl.SSLContext:
    """Server side: TLS 1.3 only, client certificate required and checked against the CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(str(ca_cert))
    _load_identity(context, cert_chain, key_file, passphrase)
    _WITH_IDENTITY[context] = (cert_chain, key_file)
    return context


def client_context(ca_cert: Path, cert_chain: Path | None = None, key_file: Path | None = None,
                   passphrase: str | None = None, check_hostname: bool = True,
                   pinned: Path | None = None) -> ssl.SSLContext:  # fmt: skip
    """Client side: TLS 1.3 only, server checked against the CA, our certificate if given.

    Between nodes ``check_hostname`` is off: a peer is identified by the ledger keys in
    its CA-issued certificate, not by the address it happens to listen on. With
    ``pinned`` (a PEM file whose first certificate is the server's) only that exact
    certificate is trusted: any other consortium certificate at the address is refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = check_hostname
    if pinned is not None:
        leaf = x509.load_pem_x509_certificate(pinned.read_bytes())
        context.load_verify_locations(cadata=leaf.public_bytes(serialization.Encoding.PEM).decode())
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    else:
        context.load_verify_locations(str(ca_cert))
    if cert_chain is not None and key_file is not None:
        _load_identity(context, cert_chain, key_file, passphrase)
        _WITH_IDENTITY[context] = (cert_chain, key_file)
    return context
