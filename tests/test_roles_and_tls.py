from __future__ import annotations

import ssl
import tomllib

import httpx
import pytest
import tomli_w
from network_helpers import make_network
from test_node import OCTETS, signed

from twinledger.config import load_config
from twinledger.core.types import encode_transaction
from twinledger.crypto.keys import SigningKey
from twinledger.crypto.tls import client_context
from twinledger.errors import ConfigError
from twinledger.launcher import start_node
from twinledger.services.remote import NodeClient, NodeUnreachable


def test_remote_api_requires_a_consortium_certificate(home_factory):
    config = home_factory("secure")
    toml = config.home / "node.toml"
    toml.write_text(toml.read_text().replace('tls = "auto"', 'tls = "on"'))
    node = start_node(config.home)
    try:
        assert node.url.startswith("https://")
        ca_only = client_context(config.cert("consortium-ca"))
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            httpx.get(f"{node.url}/v1/health", headers=node.headers, verify=ca_only).raise_for_status()
        other = home_factory("mallory")
        foreign = client_context(config.cert("consortium-ca"), other.cert("node-chain"), other.key("tls"))
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            httpx.get(f"{node.url}/v1/health", headers=node.headers, verify=foreign).raise_for_status()
        client = NodeClient(load_config(config.home))
        assert client.health()["status"] == "ok"
        client.close()
    finally:
        node.stop()


def test_non_loopback_api_without_tls_is_refused(home_factory):
    config = home_factory("exposed", api_host="0.0.0.0")
    toml = config.home / "node.toml"
    toml.write_text(toml.read_text().replace('tls = "auto"', 'tls = "off"'))
    with pytest.raises(ConfigError, match="mutual TLS"):
        load_config(config.home)


def test_validator_role_strips_other_parties_payloads(home_factory):
    config = home_factory("lean", roles=("validator",))
    node = start_node(config.home)
    try:
        client = NodeClient(config)
        stranger = signed(SigningKey.generate(), 0, chain_id="lean-chain")
        httpx.post(f"{node.url}/v1/transactions", content=encode_transaction(stranger), headers={**OCTETS, **node.headers})
        own = client.call(config.signing_key("operator"), "records", "put", {"payload": b"ours"}, "lean-chain")
        assert client.transaction(stranger.hash.hex(), wait=10)["transaction"]["stripped"] is True
        view = client.transaction(own.hash.hex(), wait=10, proof=True)
        assert view["transaction"]["stripped"] is False
        client.close()
    finally:
        node.stop()


def test_the_api_client_talks_only_to_its_own_node_not_to_another_member_s(tmp_path):
    """A consortium certificate is not enough (security review): a node of another member
    at the address the home's API client dials is refused before any token is sent."""
    network = make_network(tmp_path / "net", orgs=["plantco", "rival"])
    for home in network.homes:
        doc = tomllib.loads((home / "node.toml").read_text())
        doc["api"]["tls"] = "on"
        (home / "node.toml").write_text(tomli_w.dumps(doc))
    rival = start_node(network.homes[1])
    try:
        port = int(rival.url.rsplit(":", 1)[1])
        own = NodeClient(load_config(network.homes[1]))
        assert own.health()["status"] == "ok"
        own.close()
        doc = tomllib.loads((network.homes[0] / "node.toml").read_text())
        doc["api"]["port"] = port  # plantco's client dials where rival's node listens
        (network.homes[0] / "node.toml").write_text(tomli_w.dumps(doc))
        misdirected = NodeClient(load_config(network.homes[0]))
        assert misdirected.url == rival.url
        with pytest.raises(NodeUnreachable):
            misdirected.health()
        misdirected.close()
    finally:
        rival.stop()
