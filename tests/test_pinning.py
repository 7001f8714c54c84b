"""Clients reach whom they mean (security review, ingest_mitm.py): a consortium
certificate is not enough. The ingest sender, the API client and the store client pin the
organisation or node they meant; organisation CAs are name-constrained to their own
organisation, so no TLS stack accepts a certificate one issued for another's name."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from twinledger.crypto import certs
from twinledger.crypto.keys import EncryptionKey, SigningKey
from twinledger.crypto.tls import client_context, server_context
from twinledger.ingest.protocol import CLIENT_MESSAGES, PROTOCOL, IngestRecord, frame, read_message
from twinledger.ingest.sender import IngestSender
from twinledger.store.protocol import Pin, StoreTls


class Pki:
    """A consortium CA and node identities of its organisations, as files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = certs.create_consortium_ca("pinning")
        certs.write_certificate(directory / "ca.pem", self.ca.cert)
        self.organisations: dict[str, certs.Issuer] = {}

    def node(self, organisation: str, node: str = "node-1") -> StoreTls:
        if organisation not in self.organisations:
            self.organisations[organisation] = certs.issue_organisation_ca(self.ca, organisation)
            certs.write_certificate(self.directory / f"{organisation}-org.pem", self.organisations[organisation].cert)
        issued = certs.issue_node_certificate(self.organisations[organisation], node, SigningKey.generate().public,
                                              EncryptionKey.generate().public)  # fmt: skip
        return self.files(f"{organisation}-{node}", issued, organisation)

    def files(self, name: str, issued: certs.Issuer, organisation: str) -> StoreTls:
        d = self.directory
        certs.write_issuer(d / f"{name}.pem", d / f"{name}-tls.key", issued, None)
        (d / f"{name}-chain.pem").write_bytes((d / f"{name}.pem").read_bytes() + (d / f"{organisation}-org.pem").read_bytes())
        return StoreTls.load(d / "ca.pem", d / f"{name}-chain.pem", d / f"{name}-tls.key", d / f"{organisation}-org.pem",
                             None)  # fmt: skip


async def listening(tls: StoreTls, handler: Callable[..., Awaitable[None]]) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls.server)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def impostor(answering_as: StoreTls, claims: str, received: list[bytes]) -> Callable[..., Awaitable[None]]:
    """An ingest listener that welcomes anyone as a node of ``claims`` and acks what it gets."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_message(reader, 1 << 16, CLIENT_MESSAGES)
            writer.write(frame({"type": "welcome", "protocol": PROTOCOL, "organisation_certificate": answering_as.org_cert_der,
                                "node": answering_as.own.node, "organisation": claims, "window": 8, "max_record": 1 << 20,
                                "attributes": [], "next": 1}))  # fmt: skip
            record = await read_message(reader, 1 << 21, CLIENT_MESSAGES)
            received.append(record["payload"])
            writer.write(frame({"type": "ack", "seq": record["seq"], "record": bytes(32), "height": 1}))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return handle


def attempt(listener: StoreTls, claims: str, sender_tls: StoreTls, pin: Pin | None,
            received: list[bytes]) -> Exception | None:  # fmt: skip
    """Send one record to an impostor listener; the refusal, or None if it went through."""

    async def run() -> Exception | None:
        server, address = await listening(listener, impostor(listener, claims, received))
        sender = IngestSender(lambda: address, sender_tls, os.urandom(16), reconnect_for=1, pin=pin)
        try:
            await sender.connect()
            await sender.send([IngestRecord(1, b"batch 4711: the recipe", "text/plain", {})])
            return None
        except Exception as exc:  # noqa: BLE001 - the refusal is what is asserted
            return exc
        finally:
            await sender.close()
            server.close()

    return asyncio.run(run())


def test_the_ingest_sender_gives_nothing_to_another_member_s_node_at_the_address(tmp_path):
    pki = Pki(tmp_path)
    plantco, colleague, rival = pki.node("plantco"), pki.node("plantco", "node-2"), pki.node("rival")
    received: list[bytes] = []

    # by default a node of the sender's organisation: another member's node is refused
    refused = attempt(rival, "plantco", plantco, None, received)
    assert isinstance(refused, certs.CertificateError) and refused.code == "wrong_peer"
    assert "is rival/node-1, not a node of plantco" in refused.message

    # a node of the right organisation that lies about who it is in its welcome
    lied = attempt(colleague, "rival", plantco, None, received)
    assert isinstance(lied, certs.CertificateError) and "says it is node-2 of rival" in lied.message

    # pinned to one node (the home's own, when no --to is given): its colleague is refused
    wrong_node = attempt(colleague, "plantco", plantco, Pin.node_of(plantco.own), received)
    assert isinstance(wrong_node, certs.CertificateError) and "not plantco/node-1" in wrong_node.message
    assert received == [], "not a byte of payload reached any of them"

    assert attempt(colleague, "plantco", plantco, None, received) is None  # the sanity case: it does send
    assert received == [b"batch 4711: the recipe"]


def test_an_organisation_ca_cannot_issue_for_another_organisation(tmp_path):
    pki = Pki(tmp_path)
    plantco = pki.node("plantco")
    rival_ca = pki.organisations["plantco"]
    constraint = rival_ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraint.critical and constraint.value == certs.organisation_constraint("plantco")

    # plantco's CA signs a node certificate in the name of "victim"
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    forged = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "victim"),
                                       x509.NameAttribute(NameOID.COMMON_NAME, "node-1")]))
              .issuer_name(rival_ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(rival_ca.key, hashes.SHA256()))  # fmt: skip
    certs.write_issuer(tmp_path / "forged.pem", tmp_path / "forged-tls.key", certs.Issuer(forged, key), None)
    (tmp_path / "forged-chain.pem").write_bytes((tmp_path / "forged.pem").read_bytes()
                                                + (tmp_path / "plantco-org.pem").read_bytes())  # fmt: skip
    forged_server = server_context(tmp_path / "ca.pem", tmp_path / "forged-chain.pem", tmp_path / "forged-tls.key", None)
    genuine_chain = tmp_path / "plantco-node-1-chain.pem"
    genuine_server = server_context(tmp_path / "ca.pem", genuine_chain, tmp_path / "plantco-node-1-tls.key", None)
    client = client_context(tmp_path / "ca.pem", genuine_chain, tmp_path / "plantco-node-1-tls.key",
                            check_hostname=False)  # fmt: skip

    async def handshake(context: ssl.SSLContext) -> bool:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=None)
            writer.close()
            return True
        except ssl.SSLCertVerificationError as exc:
            assert "name constraints" in str(exc).lower() or "permitted subtree" in str(exc).lower(), exc
            return False
        finally:
            server.close()

    assert asyncio.run(handshake(genuine_server)) is True and plantco.own.organisation == "plantco"
    assert asyncio.run(handshake(forged_server)) is False, "OpenSSL itself refuses it, not only our checks"
