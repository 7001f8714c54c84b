"""``twinledger key …``: back up and recover the organisation's keys (Armored Twins §5.4).

What is saved are the keys that make the organisation the owner of its data: the
operator key (signs its transactions: grants, revocations, twin changes), the sharing
key (KP-CPRE: opens its capsules, makes grants) and the X25519 key (opens data keys
sealed to it). Node keys and certificates can be issued again; these cannot.

Two ways, usable together: a passphrase-sealed backup file (Argon2id, 64 MiB, then
AES-256-GCM), and a k-of-n Shamir split among trustees, any k of whom recover.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from twinledger.cli.common import Home, Json, command, out, print_json
from twinledger.config import NodeConfig, load_config, passphrase
from twinledger.core.encoding import decode, encode
from twinledger.crypto.keys import read_secret_file, write_secret_file
from twinledger.crypto.shamir import Share, combine_shares, split_secret
from twinledger.errors import DecodeError, KeyFileError, TwinledgerError

key_app = typer.Typer(no_args_is_help=True, help="Back up and recover the organisation's keys.")
ORGANISATION_KEYS = {"operator": "ed25519", "sharing": "kpcpre", "node-encryption": "x25519"}
BACKUP_KIND = "organisation-keys"
PASSPHRASE_ENV = "TWINLEDGER_BACKUP_PASSPHRASE"
Force = Annotated[bool, typer.Option("--force", help="Replace keys the home already holds.")]


def _backup_passphrase(confirm: bool) -> str:
    """From TWINLEDGER_BACKUP_PASSPHRASE, or asked (twice when making a backup)."""
    value = os.environ.get(PASSPHRASE_ENV) or typer.prompt("backup passphrase", hide_input=True,
                                                           confirmation_prompt=confirm, err=True)  # fmt: skip
    if confirm and len(value) < 12:
        raise TwinledgerError("a backup passphrase needs at least 12 characters", code="weak_passphrase")
    return value


def organisation_secrets(config: NodeConfig) -> bytes:
    keys = {name: read_secret_file(config.key(name), kind, passphrase()) for name, kind in ORGANISATION_KEYS.items()}
    return encode({"organisation": config.organisation, "keys": keys})


def restore(config: NodeConfig, bundle: bytes, force: bool) -> list[str]:
    """Write the bundle's keys into the home (sealed with the home's passphrase, if any)."""
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
    present = [name for name in ORGANISATION_KEYS if config.key(name).exists()]
    if present and not force:
        raise TwinledgerError(f"the home already holds {', '.join(present)} key(s); --force replaces them",
                              code="keys_exist")  # fmt: skip
    for name, kind in ORGANISATION_KEYS.items():
        write_secret_file(config.key(name), kind, keys[name], passphrase())
    return sorted(ORGANISATION_KEYS)


@key_app.command("backup")
@command
def key_backup(
    home: Home,
    output: Annotated[Path, typer.Option("--out", help="The backup file to write.", dir_okay=False)],
    as_json: Json = False,
) -> None:
    """Seal the organisation's keys into one file with a passphrase (Argon2id + AES-256-GCM).
    Keep it off this machine; the passphrase comes from TWINLEDGER_BACKUP_PASSPHRASE or is asked."""
    config = load_config(home)
    if output.exists():
        raise TwinledgerError(f"{output} exists; choose another file", code="exists")
    write_secret_file(output, BACKUP_KIND, organisation_secrets(config), _backup_passphrase(confirm=True))
    result = {"backup": str(output), "organisation": config.organisation, "keys": sorted(ORGANISATION_KEYS)}
    if as_json:
        print_json(result)
    else:
        out.print(f"sealed the {', '.join(result['keys'])} keys of {config.organisation} into {output}", highlight=False)


@key_app.command("restore")
@command
def key_restore(
    backup: Annotated[Path, typer.Argument(help="A backup file made by key backup.", exists=True, dir_okay=False)],
    home: Home,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Put the organisation's keys from a backup file back into a home."""
    config = load_config(home)
    try:
        bundle = read_secret_file(backup, BACKUP_KIND, _backup_passphrase(confirm=False))
    except KeyFileError:
        raise KeyFileError(f"cannot open backup {backup}: wrong passphrase, or the file is damaged") from None
    restored = restore(config, bundle, force)
    if as_json:
        print_json({"restored": restored, "organisation": config.organisation})
    else:
        out.print(f"restored the {', '.join(restored)} keys of {config.organisation}", highlight=False)


@key_app.command("split")
@command
def key_split(
    home: Home,
    threshold: Annotated[int, typer.Option(help="Shares needed to recover.", min=1)],
    shares: Annotated[int, typer.Option(help="Shares to make, one per trustee.", min=1)],
    output: Annotated[Path, typer.Option("--out", help="Directory for the share files.", file_okay=False)],
    as_json: Json = False,
) -> None:
    """Split the organisation's keys into SHARES files, any THRESHOLD of which recover them.
    Give each trustee one file; fewer than THRESHOLD reveal nothing."""
    config = load_config(home)
    made = split_secret(organisation_secrets(config), threshold, shares, f"keys of {config.organisation}")
    output.mkdir(parents=True, exist_ok=True)
    paths = []
    for share in made:
        path = output / f"{config.organisation}-share-{share.index}-of-{share.count}.twshare"
        if path.exists():
            raise TwinledgerError(f"{path} exists; choose another directory", code="exists")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(share.to_bytes())
        paths.append(str(path))
    result: dict[str, Any] = {"shares": paths, "threshold": threshold, "organisation": config.organisation}
    if as_json:
        print_json(result)
        return
    out.print(f"{shares} shares of the keys of {config.organisation}; any {threshold} recover them:", highlight=False)
    for path in paths:
        out.print(f"  {path}", highlight=False)


@key_app.command("combine")
@command
def key_combine(
    files: Annotated[list[Path], typer.Argument(help="Share files from trustees.", exists=True, dir_okay=False)],
    home: Home,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Recover the organisation's keys from trustees' shares into a home."""
    config = load_config(home)
    secret, misfits = combine_shares([Share.from_bytes(path.read_bytes()) for path in files])
    restored = restore(config, secret, force)
    if as_json:
        print_json({"restored": restored, "organisation": config.organisation, "misfits": misfits})
        return
    out.print(f"restored the {', '.join(restored)} keys of {config.organisation}", highlight=False)
    if misfits:
        out.print(f"share(s) {', '.join(map(str, misfits))} did not fit: damaged or from another split", highlight=False)
