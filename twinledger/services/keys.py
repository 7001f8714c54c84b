"""Backing up and recovering the organisation's keys (Armored Twins §5.4): what
``twinledger key`` does.

What is saved are the keys that make the organisation the owner of its data: the
operator key (signs its transactions: grants, revocations, twin changes), the sharing
key (KP-CPRE: opens its capsules, makes grants) and the X25519 key (opens data keys
sealed to it). Node keys and certificates can be issued again; these cannot.

Two ways, usable together: a passphrase-sealed backup file (Argon2id, 64 MiB, then
AES-256-GCM), and a k-of-n Shamir split among trustees, any k of whom recover. Trustees
are not trusted: each share is signed with the operator key, so a forged or altered
share is left out by name, and whatever is recovered — from shares or a backup — is put
in a home only if its public keys are the ones the consortium records for the
organisation: the chain's membership, read from the home's own running node, or — on
the operator's word (``--offline``) — the genesis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinledger.config import NodeConfig, live_node_pid, passphrase
from twinledger.core.encoding import decode, encode
from twinledger.core.files import create_new
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import EncryptionKey, SigningKey, read_secret_file, write_secret_file
from twinledger.crypto.shamir import Share, combine_shares, split_secret
from twinledger.errors import DecodeError, KeyFileError, TwinledgerError
from twinledger.ledger.genesis import Genesis
from twinledger.services.remote import NodeClient, NodeUnreachable

ORGANISATION_KEYS = {"operator": "ed25519", "sharing": "kpcpre", "node-encryption": "x25519"}
BACKUP_KIND = "organisation-keys"


class RecoveryRefused(TwinledgerError):
    code = "wrong_keys"


@dataclass(frozen=True)
class OrganisationRecord:
    """An organisation's public keys as the consortium records them: what recovered keys
    must match."""

    name: str
    operators: frozenset[bytes]
    sharing: bytes | None
    encryption: frozenset[bytes]
    """The organisation's X25519 key and its nodes' (the key is the organisation's, each
    node holds it)."""
    source: str
    """Where the record came from: "the chain" or "the genesis"."""


def record_from_members(members: dict[str, Any], name: str) -> OrganisationRecord | None:
    """The record in a membership view (GET /v1/members), keys in hex."""
    for org in members.get("organisations", []):
        if org.get("name") != name:
            continue
        encryption = {org.get("encryption_key")} | {node.get("encryption_key") for node in org.get("nodes", {}).values()}
        return OrganisationRecord(name, frozenset(bytes.fromhex(k) for k in org.get("operators", [])),
                                  bytes.fromhex(org["kpcpre_key"]) if org.get("kpcpre_key") else None,
                                  frozenset(bytes.fromhex(k) for k in encryption if k), "the chain")  # fmt: skip
    return None


def record_from_genesis(genesis: Genesis, name: str) -> OrganisationRecord | None:
    for org in genesis.organisations:
        if org.name == name:
            return OrganisationRecord(name, frozenset(org.operators), org.kpcpre_key or None,
                                      frozenset(node.encryption_key for node in org.nodes), "the genesis")  # fmt: skip
    return None


def organisation_record(config: NodeConfig, offline: bool = False) -> OrganisationRecord:
    """This home's organisation as the chain records it, asked of the home's own running
    node (its run file names a live process, so nothing else squats its port); with
    ``offline``, as the home's genesis does — blind to keys changed since, so only on
    the operator's word."""
    if offline:
        record = record_from_genesis(Genesis.read(config.genesis_path), config.organisation)
    else:
        if live_node_pid(config) is None:
            raise RecoveryRefused(f"the node of {config.home} is not running, so the chain's record of "
                                  f"{config.organisation}'s keys cannot be read: start it (twinledger node start), "
                                  "or check against the genesis with --offline (keys changed since are not seen)")  # fmt: skip
        client = NodeClient(config, timeout=10)
        try:
            record = record_from_members(client.request("GET", "/v1/members"), config.organisation)
        except NodeUnreachable as exc:
            raise RecoveryRefused(exc.message) from exc
        finally:
            client.close()
    if record is None:
        raise RecoveryRefused(f"{config.organisation} is not a member of this home's consortium; nothing to check "
                              "recovered keys against")  # fmt: skip
    return record


# -- saving ---------------------------------------------------------------------------------------------
def organisation_secrets(config: NodeConfig) -> bytes:
    keys = {name: read_secret_file(config.key(name), kind, passphrase()) for name, kind in ORGANISATION_KEYS.items()}
    return encode({"organisation": config.organisation, "keys": keys})


def backup(config: NodeConfig, output: Path, backup_passphrase: str) -> None:
    """Seal the organisation's keys into one file (written 0600)."""
    if output.exists():
        raise TwinledgerError(f"{output} exists; choose another file", code="exists")
    write_secret_file(output, BACKUP_KIND, organisation_secrets(config), backup_passphrase)


def read_backup(path: Path, backup_passphrase: str) -> bytes:
    try:
        return read_secret_file(path, BACKUP_KIND, backup_passphrase)
    except KeyFileError:
        raise KeyFileError(f"cannot open backup {path}: wrong passphrase, or the file is damaged") from None


def split(config: NodeConfig, threshold: int, count: int, output: Path) -> list[Path]:
    """Write ``count`` share files, any ``threshold`` of which recover the keys, each
    signed with the organisation's operator key (written 0600, never overwriting)."""
    signer = config.signing_key("operator")
    made = split_secret(organisation_secrets(config), threshold, count, f"keys of {config.organisation}", signer)
    output.mkdir(parents=True, exist_ok=True)
    paths = []
    for share in made:
        path = output / f"{config.organisation}-share-{share.index}-of-{share.count}.twshare"
        if path.exists():
            raise TwinledgerError(f"{path} exists; choose another directory", code="exists")
        with create_new(path) as handle:
            handle.write(share.to_bytes())
        paths.append(path)
    return paths


# -- recovering -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recovered:
    restored: list[str]
    left_out: list[Path]
    """Share files left out: not signed by the organisation, damaged, or of another split."""
    checked_against: str


def combine(config: NodeConfig, files: list[Path], record: OrganisationRecord, force: bool) -> Recovered:
    """Recover the keys from trustees' share files into the home; only shares signed by
    one of the organisation's recorded operators count."""
    shares = [Share.from_bytes(path.read_bytes()) for path in files]

    def recorded(secret: bytes) -> bool:  # a genuine older split of keys changed since does not win
        try:
            _check_against(record, _bundle_keys(config, secret))
            return True
        except TwinledgerError:
            return False

    secret, left_out = combine_shares(shares, record.operators, recorded)
    return Recovered(restore(config, secret, record, force), [files[i] for i in left_out], record.source)


def restore(config: NodeConfig, bundle: bytes, record: OrganisationRecord, force: bool) -> list[str]:
    """Write the bundle's keys into the home (sealed with the home's passphrase, if any),
    once their public keys prove them the organisation's."""
    keys = _bundle_keys(config, bundle)
    _check_against(record, keys)
    present = [name for name in ORGANISATION_KEYS if config.key(name).exists()]
    if present and not force:
        raise TwinledgerError(f"the home already holds {', '.join(present)} key(s); --force replaces them",
                              code="keys_exist")  # fmt: skip
    for name, kind in ORGANISATION_KEYS.items():
        write_secret_file(config.key(name), kind, keys[name], passphrase())
    return sorted(ORGANISATION_KEYS)


def _bundle_keys(config: NodeConfig, bundle: bytes) -> dict[str, bytes]:
    try:
        doc = decode(bundle)
        keys = doc["keys"]
        if set(keys) != set(ORGANISATION_KEYS) or not all(isinstance(v, bytes) for v in keys.values()):
            raise DecodeError("wrong keys")
    except (DecodeError, KeyError, TypeError) as exc:
        raise TwinledgerError("the recovered data is not a twinledger key bundle", code="bad_backup") from exc
    if doc["organisation"] != config.organisation:
        raise TwinledgerError(f"these are the keys of {doc['organisation']}, but the home is {config.organisation}'s",
                              code="wrong_organisation")  # fmt: skip
    return dict(keys)


def _check_against(record: OrganisationRecord, keys: dict[str, bytes]) -> None:
    """Refuse keys whose public halves are not the organisation's (a trustee's or a
    backup's substitute would otherwise become the organisation's keys)."""
    try:
        operator = SigningKey(keys["operator"]).public
        sharing = kpcpre.SecretKey.from_bytes(keys["sharing"]).public.to_bytes()
        encryption = EncryptionKey(keys["node-encryption"]).public
    except (ValueError, TwinledgerError) as exc:
        raise RecoveryRefused("the recovered keys are malformed") from exc
    wrong = [name for name, ok in (("operator", operator in record.operators),
                                   ("sharing", sharing == record.sharing),
                                   ("node-encryption", encryption in record.encryption))
             if not ok]  # fmt: skip
    if wrong:  # a record without a key checks nothing: refused too
        raise RecoveryRefused(f"the recovered {', '.join(wrong)} key(s) are not those {record.source} records for "
                              f"{record.name}; nothing was written")  # fmt: skip
