"""Node certificates live 90 days and their nodes renew them (security review, finding 7):
at start and while running, with the same ledger keys, into every TLS context the node
uses; a renewal a crash cut short leaves the old certificate or the new one."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys

import pytest
from cryptography import x509

from twinledger.config import (
    RENEWAL_MARK,
    _renewal_files,
    finish_renewal,
    init_home,
    load_config,
    renew_node_certificate,
)
from twinledger.crypto import certs
from twinledger.crypto.tls import client_context, server_context
from twinledger.errors import TwinledgerError
from twinledger.launcher import start_node
from twinledger.node.certificate import CertificateRenewal


def node_cert(config) -> x509.Certificate:
    return certs.read_certificate(config.cert("node"))


def shorten(config, monkeypatch, days: int) -> None:
    """Give the home's node a certificate that ends in ``days`` days."""
    monkeypatch.setattr(certs, "LEAF_VALIDITY", dt.timedelta(days=days))
    renew_node_certificate(config)
    monkeypatch.undo()


def test_a_renewed_certificate_keeps_the_node_s_keys_and_names_and_lives_90_days(tmp_path):
    config = init_home(tmp_path / "home", "plantco", api_port=0)
    old = node_cert(config)
    old_key = config.key("tls").read_bytes()
    end = renew_node_certificate(config)
    new = node_cert(config)
    assert certs.identity_of(new) == certs.identity_of(old) and certs.hosts_of(new) == certs.hosts_of(old)
    assert new.serial_number != old.serial_number and config.key("tls").read_bytes() != old_key
    assert dt.timedelta(days=89) < end - dt.datetime.now(dt.UTC) <= certs.LEAF_VALIDITY
    chain = config.cert("node-chain").read_bytes()
    assert chain.startswith(config.cert("node").read_bytes()) and chain.endswith(config.cert("organisation").read_bytes())
    organisation = certs.read_certificate(config.cert("organisation"))
    ca = certs.read_certificate(config.cert("consortium-ca"))
    assert certs.verify_node_chain(new, organisation, ca) == certs.identity_of(old)
    server_context(config.cert("consortium-ca"), config.cert("node-chain"), config.key("tls"), None)  # key fits


def test_a_renewal_cut_short_leaves_the_old_certificate_or_the_new(tmp_path):
    config = init_home(tmp_path / "home", "plantco", api_port=0)
    old = config.cert("node").read_bytes(), config.key("tls").read_bytes()
    staged = _renewal_files(config)
    for new, _ in staged:  # written, not yet marked complete: dropped
        new.write_bytes(b"half written")
    finish_renewal(config)
    assert (config.cert("node").read_bytes(), config.key("tls").read_bytes()) == old
    assert not any(new.exists() for new, _ in staged)

    renew_node_certificate(config)
    renewed = {final: final.read_bytes() for _, final in staged}
    for new, final in staged:  # marked complete, crash after the first rename: finished
        new.write_bytes(renewed[final])
    config.cert("node").write_bytes(old[0])
    config.cert("node-chain").write_bytes(b"stale")
    (config.home / "certs" / RENEWAL_MARK).write_bytes(b"renewal staged\n")
    staged[0][0].unlink()  # the key was renamed already
    finish_renewal(config)
    assert {final: final.read_bytes() for _, final in staged} == renewed
    assert not (config.home / "certs" / RENEWAL_MARK).exists()


def test_a_running_node_s_contexts_present_the_renewed_certificate(tmp_path, monkeypatch):
    config = init_home(tmp_path / "home", "plantco", api_port=0)
    shorten(config, monkeypatch, 10)
    renewal = CertificateRenewal(config)
    assert renewal.renew_if_due(dt.datetime.now(dt.UTC) - dt.timedelta(days=30)) is None  # 40 days left then
    served = server_context(config.cert("consortium-ca"), config.cert("node-chain"), config.key("tls"), None)
    before = node_cert(config).serial_number
    end = renewal.renew_if_due()
    assert end is not None and node_cert(config).serial_number != before

    async def presented() -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=served)
        port = server.sockets[0].getsockname()[1]
        client = client_context(config.cert("consortium-ca"), config.cert("node-chain"), config.key("tls"),
                                check_hostname=False)  # fmt: skip
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=None)
            leaf = x509.load_der_x509_certificate(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
            writer.close()
            return leaf.serial_number
        finally:
            server.close()

    assert asyncio.run(presented()) == node_cert(config).serial_number, "the context made before presents the new one"


def test_a_node_renews_a_certificate_near_its_end_when_it_starts(tmp_path, monkeypatch):
    config = init_home(tmp_path / "home", "plantco", api_port=0)
    shorten(config, monkeypatch, 5)
    assert node_cert(config).not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=6)
    node = start_node(config.home)
    try:
        assert node_cert(load_config(config.home)).not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=89)
        assert "renewed this node's certificate" in (config.home / "node.log").read_text()
        refused = subprocess.run([sys.executable, "-m", "twinledger", "node", "renew-cert", "--home", str(config.home)],
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
        assert refused.returncode == 1 and "is running and renews its own certificate" in refused.stderr
    finally:
        node.stop()


def test_renewal_needs_the_organisation_s_ca_and_says_so(tmp_path):
    config = init_home(tmp_path / "home", "plantco", api_port=0)
    config.key("organisation-ca").unlink()  # kept offline by the organisation
    done = subprocess.run([sys.executable, "-m", "twinledger", "node", "renew-cert", "--home", str(config.home)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and done.stderr.strip() == f"error: cannot open key file {config.key('organisation-ca')}"
    with pytest.raises(TwinledgerError):
        CertificateRenewal(config).renew_if_due(dt.datetime.now(dt.UTC) + dt.timedelta(days=80))
