"""A node's home directory: configuration, genesis, keys and certificates, data.

    HOME/node.toml            configuration (TOML, edited by hand)
    HOME/genesis.json         the chain's genesis
    HOME/certs/*.pem          consortium CA, organisation CA, node certificate
    HOME/keys/*.key           secret keys (0600; sealed if TWINLEDGER_PASSPHRASE was set)
    HOME/ca/                  the consortium CA key, only where this home created the CA
    HOME/data/chain.db        the SQLite chain store (default)
    HOME/run/node.json        written by a running node: pid and API address
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from twinledger.crypto import certs
from twinledger.crypto.keys import EncryptionKey, SigningKey, read_secret_file, write_secret_file
from twinledger.errors import ConfigError
from twinledger.ledger.genesis import Genesis, GenesisValidator

PASSPHRASE_ENV = "TWINLEDGER_PASSPHRASE"
ROLES = ("thin", "validator", "archive", "full")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def passphrase() -> str | None:
    return os.environ.get(PASSPHRASE_ENV) or None


@dataclass(frozen=True)
class NodeConfig:
    home: Path
    organisation: str
    name: str
    roles: tuple[str, ...]
    api_host: str
    api_port: int
    api_tls: str
    store_url: str
    mempool_max_txs: int
    keep_contracts: tuple[str, ...]

    @property
    def produces_blocks(self) -> bool:
        return bool({"validator", "full"} & set(self.roles))

    @property
    def keeps_everything(self) -> bool:
        return bool({"archive", "full"} & set(self.roles))

    @property
    def api_needs_tls(self) -> bool:
        if self.api_tls == "on":
            return True
        if self.api_tls == "off":
            return False
        return not is_loopback(self.api_host)

    # -- paths -------------------------------------------------------------------------------
    @property
    def genesis_path(self) -> Path:
        return self.home / "genesis.json"

    @property
    def run_file(self) -> Path:
        return self.home / "run" / "node.json"

    def cert(self, name: str) -> Path:
        return self.home / "certs" / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.home / "keys" / f"{name}.key"

    # -- keys --------------------------------------------------------------------------------
    def signing_key(self, name: str = "node-signing") -> SigningKey:
        return SigningKey(read_secret_file(self.key(name), "ed25519", passphrase()))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(home: Path) -> NodeConfig:
    path = home / "node.toml"
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{home} is not a twinledger home (no node.toml); run `twinledger init`") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        node, api, store = doc["node"], doc["api"], doc["store"]
        roles = tuple(node["roles"])
        url = str(store["url"])
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            url = "sqlite:///" + str(home / url.removeprefix("sqlite:///"))
        config = NodeConfig(
            home=home,
            organisation=str(node["organisation"]),
            name=str(node["name"]),
            roles=roles,
            api_host=str(api["host"]),
            api_port=int(api["port"]),
            api_tls=str(api.get("tls", "auto")),
            store_url=url,
            mempool_max_txs=int(doc.get("mempool", {}).get("max_txs", 100_000)),
            keep_contracts=tuple(doc.get("ledger", {}).get("keep_contracts", [])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path} is missing or has a malformed setting: {exc}") from exc
    unknown = set(config.roles) - set(ROLES)
    if unknown or not config.roles:
        raise ConfigError(f"{path}: roles must be some of {', '.join(ROLES)} (got {list(config.roles)})")
    if config.api_tls not in ("auto", "on", "off"):
        raise ConfigError(f"{path}: api.tls must be auto, on or off")
    if config.api_tls == "off" and not is_loopback(config.api_host):
        raise ConfigError(f"{path}: an API on a non-loopback address must use mutual TLS (api.tls)")
    return config


def read_run_file(config: NodeConfig) -> dict[str, Any] | None:
    try:
        return json.loads(config.run_file.read_text())
    except (OSError, ValueError):
        return None


def init_home(home: Path, organisation: str, *, node: str = "node-1", roles: tuple[str, ...] = ("full",),
              api_host: str = "127.0.0.1", api_port: int = 7700, chain_id: str | None = None,
              block_interval_ms: int = 200, max_block_txs: int = 5000,
              store_url: str = "sqlite:///data/chain.db") -> NodeConfig:  # fmt: skip
    """Create a home: consortium CA (dev), organisation CA, node keys and certificate,
    an operator key for the CLI, a solo genesis naming this node, and node.toml."""
    for label, value in (("organisation", organisation), ("node name", node)):
        if not NAME_PATTERN.match(value):
            raise ConfigError(f"{label} {value!r} must be 1-63 letters, digits, '.', '_' or '-'")
    if set(roles) - set(ROLES) or not roles:
        raise ConfigError(f"roles must be some of {', '.join(ROLES)}")
    if (home / "node.toml").exists():
        raise ConfigError(f"{home} already holds a node (node.toml exists)")
    home.mkdir(parents=True, exist_ok=True)
    secret = passphrase()

    consortium = certs.create_consortium_ca(f"{organisation}-consortium")
    certs.write_issuer(home / "ca" / "consortium.pem", home / "ca" / "consortium.key", consortium, secret)
    org_ca = certs.issue_organisation_ca(consortium, organisation)
    certs.write_issuer(home / "certs" / "organisation.pem", home / "keys" / "organisation-ca.key", org_ca, secret)
    certs.write_certificate(home / "certs" / "consortium-ca.pem", consortium.cert)

    signing, encryption, operator = SigningKey.generate(), EncryptionKey.generate(), SigningKey.generate()
    write_secret_file(home / "keys" / "node-signing.key", "ed25519", signing.seed, secret)
    write_secret_file(home / "keys" / "node-encryption.key", "x25519", encryption.secret, secret)
    write_secret_file(home / "keys" / "operator.key", "ed25519", operator.seed, secret)
    node_cert = certs.issue_node_certificate(org_ca, node, signing.public, encryption.public)
    certs.write_issuer(home / "certs" / "node.pem", home / "keys" / "tls.key", node_cert, secret)
    chain_pem = (home / "certs" / "node.pem").read_bytes() + (home / "certs" / "organisation.pem").read_bytes()
    (home / "certs" / "node-chain.pem").write_bytes(chain_pem)

    genesis = Genesis(
        chain_id=chain_id or f"{organisation}-chain",
        genesis_time=int(time.time() * 1000),
        consensus="solo",
        validators=(GenesisValidator(organisation, signing.public),),
        block_interval_ms=block_interval_ms,
        max_block_txs=max_block_txs,
    )
    genesis.write(home / "genesis.json")
    doc = {
        "node": {"organisation": organisation, "name": node, "roles": list(roles)},
        "api": {"host": api_host, "port": api_port, "tls": "auto"},
        "store": {"url": store_url},
        "mempool": {"max_txs": 100_000},
        "ledger": {"keep_contracts": []},
    }
    (home / "node.toml").write_text(tomli_w.dumps(doc))
    for folder in ("data", "run"):
        (home / folder).mkdir(exist_ok=True)
    return load_config(home)
