"""OPC UA security between a device and its clients: Sign & Encrypt, with the strongest
policy both offer (Aes256_Sha256_RsaPss, then Basic256Sha256, then Aes128_Sha256_RsaOaep).

Each side holds an application instance certificate (RSA 2048, self-signed, with its
application URI among the subject alternative names, as OPC 10000-6 §6.2.2 asks),
made on first use in a directory: ``opcua.der`` and ``opcua.key``, the key written like
every other twinledger key file (0600, sealed when ``TWINLEDGER_PASSPHRASE`` is set).

- The device accepts only the client certificates in its trust directory, read again
  at every new session, as a PLC's trust list is: trusting an agent needs no restart.
- A client pins the device's certificate: a file it was given, or the certificate the
  device presented on first contact (trust on first use), written to the pin file. A
  device that later presents another certificate is refused, naming both fingerprints.
- A client that wants security never falls back to an endpoint without it, nor to a
  policy that only signs or that OPC UA deprecated (Basic128Rsa15, Basic256).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen, uacrypto
from asyncua.crypto.security_policies import (
    SecurityPolicy,
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic256Sha256,
)
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import User, UserManager, UserRole
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from twinledger.config import passphrase
from twinledger.crypto.keys import read_secret_file, write_secret_file
from twinledger.errors import TwinledgerError

CERTIFICATE_FILE = "opcua.der"
KEY_FILE = "opcua.key"
KEY_KIND = "opcua-rsa"
VALIDITY_DAYS = 5 * 365
"""Self-signed application certificates live long: replacing one means touching every
trust list that holds it, and a plant's devices are not re-commissioned yearly."""
POLICIES: tuple[type[SecurityPolicy], ...] = (SecurityPolicyAes256Sha256RsaPss, SecurityPolicyBasic256Sha256,
                                              SecurityPolicyAes128Sha256RsaOaep)  # fmt: skip
"""The policies a client accepts, strongest first, each with Sign & Encrypt."""
SERVER_POLICIES = [ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
                   ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]  # fmt: skip
"""What the simulator offers: the strongest, and the one most PLCs and clients speak."""


class OpcuaSecurityError(TwinledgerError):
    code = "opcua_security"


@dataclass(frozen=True)
class ApplicationIdentity:
    """An OPC UA application instance certificate with its private key (both DER)."""

    uri: str
    certificate: bytes
    private_key: bytes
    path: Path
    """The certificate's file: what a peer has to trust."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)


def fingerprint(certificate: bytes) -> str:
    return "sha256:" + hashlib.sha256(certificate).hexdigest()


def application_identity(directory: Path, name: str, uri: str, *, server: bool) -> ApplicationIdentity:
    """The identity kept in ``directory``, made there on first use."""
    cert_path, key_path = directory / CERTIFICATE_FILE, directory / KEY_FILE
    if not cert_path.exists():
        key = cert_gen.generate_private_key()
        names = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost"), x509.DNSName(socket.gethostname())]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = cert_gen.generate_self_signed_app_certificate(key, name, {"organizationName": "twinledger"}, names,
                                                             [usage], days=VALIDITY_DAYS)  # fmt: skip
        directory.mkdir(parents=True, exist_ok=True)
        der_key = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())  # fmt: skip
        write_secret_file(key_path, KEY_KIND, der_key, passphrase())
        cert_path.write_bytes(uacrypto.der_from_x509(cert))
    certificate = read_certificate_file(cert_path)
    uris = x509.load_der_x509_certificate(certificate).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    (uri,) = uris.value.get_values_for_type(x509.UniformResourceIdentifier)
    return ApplicationIdentity(uri, certificate, read_secret_file(key_path, KEY_KIND, passphrase()), cert_path)


def agent_identity(device: Path, device_key: bytes) -> ApplicationIdentity:
    """A device agent's identity, in its device's key directory."""
    short = device_key.hex()[:16]
    return application_identity(device, f"twinledger device agent {short}", f"urn:twinledger:device-agent:{short}",
                                server=False)  # fmt: skip


def read_certificate_file(path: Path) -> bytes:
    """A certificate file's DER bytes, whether the file holds DER or PEM."""
    try:
        data = path.read_bytes()
        cert = x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----BEGIN") else \
            x509.load_der_x509_certificate(data)  # fmt: skip
    except (OSError, ValueError) as exc:
        raise OpcuaSecurityError(f"{path} is not a readable X.509 certificate") from exc
    return cert.public_bytes(serialization.Encoding.DER)


class TrustList(UserManager):
    """The client certificates a device accepts: the files in one directory.

    It is both of asyncua's hooks: the certificate validator, at session creation, and
    the user manager, at activation. The second is what keeps out a client on an
    unsecured channel: asyncua grants it a session even when no endpoint without
    security is offered, and validates no certificate, since it sent none.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._checks = CertificateValidator(CertificateValidatorOptions.EXT_VALIDATION
                                            | CertificateValidatorOptions.PEER_CLIENT)  # fmt: skip

    def trusted(self) -> set[bytes]:
        found = set()
        for path in self.directory.iterdir():
            try:
                found.add(read_certificate_file(path))
            except OpcuaSecurityError:
                continue
        return found

    async def __call__(self, cert: x509.Certificate, application: ua.ApplicationDescription) -> None:
        """asyncua's certificate validator hook: raise the status the client will see."""
        await self._checks.validate(cert, application)
        if cert.public_bytes(serialization.Encoding.DER) not in self.trusted():
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: bytes | None = None) -> User | None:  # fmt: skip
        """The session's user if its secure channel's certificate is trusted; ``certificate``
        is the channel's peer certificate, since the device takes anonymous tokens only."""
        return User(role=UserRole.User) if certificate and bytes(certificate) in self.trusted() else None


@dataclass(frozen=True)
class DeviceTrust:
    """How a client knows the device: ``pin`` holds the device's certificate; when
    ``first_use`` and the file does not exist yet, the certificate the device presents
    on first contact is written there."""

    pin: Path
    first_use: bool = False


def policy_name(uri: str) -> str:
    return uri.rsplit("#", 1)[-1]


def choose_endpoint(endpoints: list[ua.EndpointDescription], url: str) -> tuple[type[SecurityPolicy], bytes]:
    """The strongest acceptable policy the device offers, and the certificate it presents there."""
    for policy in POLICIES:
        for endpoint in endpoints:
            if endpoint.SecurityPolicyUri == policy.URI and endpoint.SecurityMode == ua.MessageSecurityMode.SignAndEncrypt:
                return policy, uacrypto.der_from_x509(uacrypto.x509_from_der(endpoint.ServerCertificate))
    offered = sorted({"no security" if e.SecurityMode == ua.MessageSecurityMode.None_ else
                      f"{policy_name(e.SecurityPolicyUri)} {e.SecurityMode.name}" for e in endpoints})  # fmt: skip
    raise OpcuaSecurityError(f"the device at {url} offers no endpoint this client accepts (it offers "
                             f"{', '.join(offered) or 'none'}; accepted: "
                             f"{', '.join(policy_name(p.URI) for p in POLICIES)} with SignAndEncrypt); connect "
                             "without security only on a network you trust")  # fmt: skip


def _pinned(trust: DeviceTrust, offered: bytes, url: str) -> bytes:
    if trust.pin.exists():
        pinned = read_certificate_file(trust.pin)
    elif trust.first_use:
        trust.pin.parent.mkdir(parents=True, exist_ok=True)
        trust.pin.write_bytes(offered)
        return offered
    else:
        raise OpcuaSecurityError(f"the device's certificate file {trust.pin} does not exist")
    if pinned != offered:
        raise OpcuaSecurityError(f"the device at {url} presents certificate {fingerprint(offered)}, but this client "
                                 f"trusts {fingerprint(pinned)} ({trust.pin}); if the device was re-keyed, pin its "
                                 "new certificate")  # fmt: skip
    return pinned


@asynccontextmanager
async def device_session(url: str, identity: ApplicationIdentity | None, trust: DeviceTrust | None,
                         timeout: float = 5) -> AsyncIterator[Client]:  # fmt: skip
    """A connected OPC UA client: Sign & Encrypt with ``identity`` and the device's pinned
    certificate, or, with no identity, without security."""
    client = Client(url, timeout=timeout)
    endpoints = await client.connect_and_get_server_endpoints()
    if identity is None:
        if not any(e.SecurityMode == ua.MessageSecurityMode.None_ for e in endpoints):
            raise OpcuaSecurityError(f"the device at {url} offers no endpoint without security; connect with OPC UA "
                                     "security")  # fmt: skip
    else:
        if trust is None:
            raise OpcuaSecurityError("a secure session needs the device's certificate or trust on first use")
        client.application_uri = identity.uri
        policy, offered = choose_endpoint(endpoints, url)
        pinned = _pinned(trust, offered, url)
        await client.set_security(policy, uacrypto.CertProperties(identity.certificate, "der"),
                                  uacrypto.CertProperties(identity.private_key, "der"),
                                  server_certificate=uacrypto.CertProperties(pinned, "der"))  # fmt: skip
    try:
        await client.connect()
    except ua.UaStatusCodeError as exc:
        if identity is not None and exc.code == ua.StatusCodes.BadCertificateUntrusted:
            raise OpcuaSecurityError(f"the device at {url} does not trust this client's certificate "
                                     f"{identity.fingerprint}; add {identity.path} to its trusted "
                                     "certificates") from exc  # fmt: skip
        raise
    try:
        yield client
    finally:
        await client.disconnect()
