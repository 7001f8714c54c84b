"""A node's home directory: configuration, genesis, keys and certificates, data.

HOME/node.toml            configuration (TOML, edited by hand)
HOME/genesis.json         the chain's genesis
HOME/certs/*.pem          consortium CA, organisation CA, node certificate
HOME/keys/*.key           secret keys (0600; sealed if TWINLEDGER_PASSPHRASE was set)
HOME/ca/                  the consortium CA key, only where this home created the CA
DIR/consortium/           (a network) the consortium CA and the administrator's key
HOME/data/chain.db        the SQLite chain store (default)
HOME/data/store/          a store node's chunks and their index
HOME/run/node.json        written by a running node: pid and API address
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import re
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from twinledger.core.files import replace_durably
from twinledger.crypto import certs, kpcpre
from twinledger.crypto.keys import EncryptionKey, SigningKey, read_secret_file, write_secret_file
from twinledger.errors import ConfigError
from twinledger.ledger.genesis import Genesis, GenesisNode, GenesisOrganisation, GenesisValidator

PASSPHRASE_ENV = "TWINLEDGER_PASSPHRASE"
ROLES = ("thin", "validator", "archive", "full", "store", "proxy")
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
    p2p_host: str = "127.0.0.1"
    p2p_port: int | None = None
    """None: no peer-to-peer listener (a solo home)."""
    p2p_advertise: str | None = None
    seeds: tuple[str, ...] = ()
    target_peers: int = 8
    storage_host: str = "127.0.0.1"
    storage_port: int | None = None
    """None: not a store node."""
    repair_interval: float = 30.0
    """Seconds between a store node's anti-entropy passes (0: only on request)."""
    ingest_host: str = "127.0.0.1"
    ingest_port: int | None = None
    """None: no TCP ingest listener; 0: any free port (the run file names it)."""
    ingest_window: int = 256
    ingest_max_record: int = 16 << 20
    api_allowed_hosts: tuple[str, ...] = ()
    """Host names the API answers to besides loopback and its own address (no DNS rebinding)."""
    api_cors_origins: tuple[str, ...] = ()
    """Web origins allowed to call the API from a browser (none: no CORS)."""

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
    def storage_dir(self) -> Path:
        return self.home / "data" / "store"

    @property
    def run_file(self) -> Path:
        return self.home / "run" / "node.json"

    @property
    def api_token_path(self) -> Path:
        """The home's API token, which its node writes when it starts (mode 0600)."""
        return self.home / "keys" / "api-token"

    def api_token(self) -> str | None:
        try:
            return self.api_token_path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def cert(self, name: str) -> Path:
        return self.home / "certs" / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.home / "keys" / f"{name}.key"

    # -- keys --------------------------------------------------------------------------------
    def signing_key(self, name: str = "node-signing") -> SigningKey:
        return SigningKey(read_secret_file(self.key(name), "ed25519", passphrase()))

    def encryption_key(self) -> EncryptionKey:
        """The organisation's X25519 key: opens data keys sealed to the organisation."""
        return EncryptionKey(read_secret_file(self.key("node-encryption"), "x25519", passphrase()))

    def sharing_key(self) -> kpcpre.SecretKey:
        """The organisation's KP-CPRE key: makes grants, reads what others grant it."""
        return kpcpre.SecretKey.from_bytes(read_secret_file(self.key("sharing"), "kpcpre", passphrase()))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def not_a_home(home: Path) -> str:
    """Why ``home`` is no node home, and what to give instead."""
    try:
        network = json.loads((home / "network.json").read_text())
        names = [str(name) for name in network["organisations"]]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{home} is not a twinledger home (no node.toml); create one with `twinledger init --home {home}`"
    return (f"{home} is a network directory, not a node home; give one of its homes, e.g. --home {home / names[0]} "
            f"(organisations: {', '.join(names)})")


def load_config(home: Path) -> NodeConfig:
    path = home / "node.toml"
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(not_a_home(home)) from exc
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
            p2p_host=str(doc.get("p2p", {}).get("host", "127.0.0.1")),
            p2p_port=int(doc["p2p"]["port"]) if "p2p" in doc else None,
            p2p_advertise=doc.get("p2p", {}).get("advertise"),
            seeds=tuple(str(seed) for seed in doc.get("p2p", {}).get("seeds", [])),
            target_peers=int(doc.get("p2p", {}).get("target_peers", 8)),
            storage_host=str(doc.get("storage", {}).get("host", "127.0.0.1")),
            storage_port=int(doc["storage"]["port"]) if "storage" in doc else None,
            repair_interval=float(doc.get("storage", {}).get("repair_interval", 30.0)),
            ingest_host=str(doc.get("ingest", {}).get("host", "127.0.0.1")),
            ingest_port=int(doc["ingest"]["port"]) if "ingest" in doc else None,
            ingest_window=int(doc.get("ingest", {}).get("window", 256)),
            ingest_max_record=int(doc.get("ingest", {}).get("max_record_bytes", 16 << 20)),
            api_allowed_hosts=tuple(str(h) for h in api.get("allowed_hosts", [])),
            api_cors_origins=tuple(str(o) for o in api.get("cors_origins", [])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path} is missing or has a malformed setting: {exc}") from exc
    unknown = set(config.roles) - set(ROLES)
    if unknown or not config.roles:
        raise ConfigError(f"{path}: roles must be some of {', '.join(ROLES)} (got {list(config.roles)})")
    if ("store" in config.roles) != (config.storage_port is not None):
        raise ConfigError(f"{path}: a node has a [storage] section exactly when it has the store role")
    if "proxy" in config.roles and "store" not in config.roles:
        raise ConfigError(f"{path}: a proxy node serves re-encryption on the store listener: give it the store role too")
    if not 1 <= config.ingest_window <= 100_000 or not 1 <= config.ingest_max_record <= 1 << 30:
        raise ConfigError(f"{path}: ingest.window must be 1–100000 and ingest.max_record_bytes 1 byte–1 GiB")
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


def live_node_pid(config: NodeConfig) -> int | None:
    """The pid of the node running from this home, if its run file names a live process
    (a run file left by a killed node names none)."""
    run = read_run_file(config)
    try:
        pid = int((run or {}).get("pid", 0))
        if pid <= 0:
            return None
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, TypeError, ValueError):
        return None
    return pid


def init_home(home: Path, organisation: str, *, node: str = "node-1", roles: tuple[str, ...] = ("full", "store", "proxy"),
              api_host: str = "127.0.0.1", api_port: int = 7700, chain_id: str | None = None,
              block_interval_ms: int = 200, max_block_txs: int = 5000, store_url: str = "sqlite:///data/chain.db",
              storage_port: int | None = None) -> NodeConfig:  # fmt: skip
    """Create a home: consortium CA (dev), organisation CA, node keys and certificate,
    an operator key for the CLI, a solo genesis naming this node, and node.toml.

    A store node listens on ``storage_port``: by default the API port + 1, or any free
    port if the API port is chosen at start (0); the CLI then finds it in the run file."""
    _check_new_home(home, organisation, node, roles)
    storage = None
    if "store" in roles:
        port = storage_port if storage_port is not None else (api_port + 1 if api_port else 0)
        storage = {"host": api_host, "port": port, "repair_interval": 30.0}
    secret = passphrase()
    consortium = certs.create_consortium_ca(f"{organisation}-consortium")
    certs.write_issuer(home / "ca" / "consortium.pem", home / "ca" / "consortium.key", consortium, secret)
    member = _create_node(home, organisation, node, consortium, secret, roles, f"{api_host}:{api_port}", "",
                          f"{api_host}:{storage['port']}" if storage else "")  # fmt: skip
    genesis = Genesis(
        chain_id=chain_id or f"{organisation}-chain",
        genesis_time=int(time.time() * 1000),
        consensus="solo",
        validators=(GenesisValidator(organisation, member.nodes[0].signing_key),),
        block_interval_ms=block_interval_ms,
        max_block_txs=max_block_txs,
        organisations=(member,),
    )
    genesis.write(home / "genesis.json")
    _write_node_toml(home, organisation, node, roles, api_host, api_port, store_url, p2p=None, storage=storage,
                     ingest=default_ingest(api_host))
    return load_config(home)


def init_network(directory: Path, organisations: list[str], *, consensus: str = "bft", chain_id: str = "consortium",
                 host: str = "127.0.0.1", base_port: int = 7800, block_interval_ms: int = 200,
                 max_block_txs: int = 5000, authority_signatures: int | None = None) -> list[NodeConfig]:  # fmt: skip
    """A consortium: one CA, and per organisation a home (DIR/<org>) whose node is a
    validator, store and proxy node, listens for peers on base_port + 3i, serves its API on
    base_port + 3i + 1 and the store on base_port + 3i + 2, with every other node as a
    seed; one genesis naming all of them."""
    if consensus not in ("bft", "poa"):
        raise ConfigError("a network's consensus is bft or poa")
    if len(set(organisations)) != len(organisations) or not organisations:
        raise ConfigError("name each organisation once")
    homes = [directory / org for org in organisations]
    for home, org in zip(homes, organisations, strict=True):
        _check_new_home(home, org, "node-1", ("full", "store", "proxy"))
    secret = passphrase()
    consortium = certs.create_consortium_ca(f"{chain_id}-consortium")
    certs.write_issuer(directory / "consortium" / "consortium-ca.pem", directory / "consortium" / "consortium-ca.key",
                       consortium, secret)  # fmt: skip
    private(directory / "consortium")
    roles = ("full", "store", "proxy")
    p2p_addresses = [f"{host}:{base_port + 3 * i}" for i in range(len(organisations))]
    members = [_create_node(home, org, "node-1", consortium, secret, roles, f"{host}:{base_port + 3 * i + 1}",
                            p2p_addresses[i], f"{host}:{base_port + 3 * i + 2}")
               for i, (home, org) in enumerate(zip(homes, organisations, strict=True))]  # fmt: skip
    admin = SigningKey.generate()
    write_secret_file(directory / "consortium" / "admin.key", "ed25519", admin.seed, secret)
    genesis = Genesis(
        chain_id=chain_id,
        genesis_time=int(time.time() * 1000),
        consensus=consensus,
        validators=tuple(GenesisValidator(m.name, m.nodes[0].signing_key) for m in members),
        block_interval_ms=block_interval_ms,
        max_block_txs=max_block_txs,
        authority_signatures=authority_signatures or (len(organisations) // 2 + 1),
        organisations=tuple(members),
        admins=(admin.public,),
    )
    configs = []
    for i, (home, org) in enumerate(zip(homes, organisations, strict=True)):
        genesis.write(home / "genesis.json")
        p2p = {"host": host, "port": base_port + 3 * i, "seeds": [a for a in p2p_addresses if a != p2p_addresses[i]],
               "target_peers": 8}  # fmt: skip
        storage = {"host": host, "port": base_port + 3 * i + 2, "repair_interval": 30.0}
        _write_node_toml(home, org, "node-1", roles, host, base_port + 3 * i + 1, "sqlite:///data/chain.db", p2p,
                         storage, default_ingest(host))  # fmt: skip
        configs.append(load_config(home))
    return configs


def _check_new_home(home: Path, organisation: str, node: str, roles: tuple[str, ...]) -> None:
    for label, value in (("organisation", organisation), ("node name", node)):
        if not NAME_PATTERN.match(value):
            raise ConfigError(f"{label} {value!r} must be 1-63 letters, digits, '.', '_' or '-'")
    if set(roles) - set(ROLES) or not roles:
        raise ConfigError(f"roles must be some of {', '.join(ROLES)}")
    if (home / "node.toml").exists():
        raise ConfigError(f"{home} already holds a node (node.toml exists)")


def _create_node(home: Path, organisation: str, node: str, consortium: certs.Issuer, secret: str | None,
                 roles: tuple[str, ...], api: str, p2p: str, storage: str) -> GenesisOrganisation:  # fmt: skip
    """Organisation CA, node keys and certificate chain, operator key; returns the
    organisation as genesis names it."""
    home.mkdir(parents=True, exist_ok=True)
    org_ca = certs.issue_organisation_ca(consortium, organisation)
    certs.write_issuer(home / "certs" / "organisation.pem", home / "keys" / "organisation-ca.key", org_ca, secret)
    certs.write_certificate(home / "certs" / "consortium-ca.pem", consortium.cert)
    signing, encryption, operator = SigningKey.generate(), EncryptionKey.generate(), SigningKey.generate()
    write_secret_file(home / "keys" / "node-signing.key", "ed25519", signing.seed, secret)
    write_secret_file(home / "keys" / "node-encryption.key", "x25519", encryption.secret, secret)
    write_secret_file(home / "keys" / "operator.key", "ed25519", operator.seed, secret)
    sharing = kpcpre.keygen()
    write_secret_file(home / "keys" / "sharing.key", "kpcpre", sharing.to_bytes(), secret)
    node_cert = certs.issue_node_certificate(org_ca, node, signing.public, encryption.public)
    certs.write_issuer(home / "certs" / "node.pem", home / "keys" / "tls.key", node_cert, secret)
    chain_pem = (home / "certs" / "node.pem").read_bytes() + (home / "certs" / "organisation.pem").read_bytes()
    (home / "certs" / "node-chain.pem").write_bytes(chain_pem)
    for folder in ("data", "run"):
        (home / folder).mkdir(exist_ok=True)
    private(home, "keys", "certs", "data", "run", "ca")
    node_entry = GenesisNode(node, signing.public, encryption.public, roles, api, p2p, storage)
    return GenesisOrganisation(organisation, (operator.public,), (node_entry,), sharing.public.to_bytes())


def private(directory: Path, *folders: str) -> None:
    """``directory`` and those of ``folders`` it has, readable by their owner only: keys,
    chain, store and run files are nobody else's business on a shared machine."""
    for path in (directory, *(directory / folder for folder in folders)):
        if path.is_dir():
            os.chmod(path, 0o700)


RENEWAL_MARK = "renewal.ready"
"""In ``certs/``: the renewed files are all written; rename them (``finish_renewal``)."""


def _renewal_files(config: NodeConfig) -> list[tuple[Path, Path]]:
    """(staged, final) for the node's certificate files, in the order they are renamed."""
    finals = [config.key("tls"), config.cert("node"), config.cert("node-chain")]
    return [(final.with_name(final.name + ".new"), final) for final in finals]


def renew_node_certificate(config: NodeConfig) -> dt.datetime:
    """Issue the home's node a new certificate from its organisation's CA — the same ledger
    keys and names, a new TLS key, ``LEAF_VALIDITY`` from now — and return its end. The
    files are written beside, marked complete, then renamed: a crash leaves the old
    certificate or the new one (``finish_renewal`` completes a renewal a crash cut short)."""
    with _renewal_lock(config):
        return _renew(config)


@contextlib.contextmanager
def _renewal_lock(config: NodeConfig) -> Iterator[None]:
    """One renewal of a home at a time (the node's hourly check, ``node renew-cert``)."""
    fd = os.open(config.home / "certs" / "renewal.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _renew(config: NodeConfig) -> dt.datetime:
    secret = passphrase()
    _finish_renewal(config)
    organisation = certs.read_issuer(config.cert("organisation"), config.key("organisation-ca"), secret)
    old = certs.read_certificate(config.cert("node"))
    identity = certs.identity_of(old)
    issued = certs.issue_node_certificate(organisation, identity.node, identity.signing_key, identity.encryption_key,
                                          certs.hosts_of(old))  # fmt: skip
    (key, _), (node, _), (chain, _) = _renewal_files(config)
    certs.write_issuer(node, key, issued, secret)
    chain.write_bytes(node.read_bytes() + config.cert("organisation").read_bytes())
    for staged in (key, node, chain):
        with staged.open("rb+") as handle:
            os.fsync(handle.fileno())
    replace_durably(config.home / "certs" / RENEWAL_MARK, b"renewal staged\n")
    _finish_renewal(config)
    return issued.cert.not_valid_after_utc


def finish_renewal(config: NodeConfig) -> None:
    """Rename a renewal's staged files if it was marked complete; else drop them."""
    with _renewal_lock(config):
        _finish_renewal(config)


def _finish_renewal(config: NodeConfig) -> None:
    mark = config.home / "certs" / RENEWAL_MARK
    for staged, final in _renewal_files(config):
        if mark.exists() and staged.exists():
            os.replace(staged, final)
        else:
            staged.unlink(missing_ok=True)
    mark.unlink(missing_ok=True)


def default_ingest(host: str) -> dict[str, Any]:
    """The TCP ingest listener of a new home: any free port, which the run file names; set
    a fixed one for plant programs to connect to."""
    return {"host": host, "port": 0, "window": 256, "max_record_bytes": 16 << 20}


def _write_node_toml(home: Path, organisation: str, node: str, roles: tuple[str, ...], api_host: str, api_port: int,
                     store_url: str, p2p: dict[str, Any] | None, storage: dict[str, Any] | None,
                     ingest: dict[str, Any]) -> None:  # fmt: skip
    doc: dict[str, Any] = {
        "node": {"organisation": organisation, "name": node, "roles": list(roles)},
        "api": {"host": api_host, "port": api_port, "tls": "auto"},
        "store": {"url": store_url},
        "mempool": {"max_txs": 100_000},
        "ledger": {"keep_contracts": []},
    }
    if p2p is not None:
        doc["p2p"] = p2p
    if storage is not None:
        doc["storage"] = storage
    doc["ingest"] = ingest
    (home / "node.toml").write_text(tomli_w.dumps(doc))
