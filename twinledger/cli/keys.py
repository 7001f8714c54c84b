"""``twinledger key …``: back up and recover the organisation's keys; the workflow is
``services/keys.py``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from twinledger.cli.common import Home, Json, command, out, print_json
from twinledger.config import load_config
from twinledger.errors import TwinledgerError
from twinledger.services import keys

key_app = typer.Typer(no_args_is_help=True, help="Back up and recover the organisation's keys.")
PASSPHRASE_ENV = "TWINLEDGER_BACKUP_PASSPHRASE"
Force = Annotated[bool, typer.Option("--force", help="Replace keys the home already holds.")]
Offline = Annotated[bool, typer.Option("--offline", help="Check the keys against the genesis, not the chain (the "
                                       "node is not running; keys changed since the genesis are not seen).")]


def _backup_passphrase(confirm: bool) -> str:
    """From TWINLEDGER_BACKUP_PASSPHRASE, or asked (twice when making a backup)."""
    value = os.environ.get(PASSPHRASE_ENV) or typer.prompt("backup passphrase", hide_input=True,
                                                           confirmation_prompt=confirm, err=True)  # fmt: skip
    if confirm and len(value) < 12:
        raise TwinledgerError("a backup passphrase needs at least 12 characters", code="weak_passphrase")
    return value


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
    keys.backup(config, output, _backup_passphrase(confirm=True))
    result = {"backup": str(output), "organisation": config.organisation, "keys": sorted(keys.ORGANISATION_KEYS)}
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
    offline: Offline = False,
    as_json: Json = False,
) -> None:
    """Put the organisation's keys from a backup file back into a home, once their public
    keys prove them the organisation's (as the chain, or else the genesis, records it)."""
    config = load_config(home)
    record = keys.organisation_record(config, offline)
    bundle = keys.read_backup(backup, _backup_passphrase(confirm=False))
    restored = keys.restore(config, bundle, record, force)
    _report(as_json, config.organisation, restored, record.source, [])


@key_app.command("split")
@command
def key_split(
    home: Home,
    threshold: Annotated[int, typer.Option(help="Shares needed to recover.", min=1)],
    shares: Annotated[int, typer.Option(help="Shares to make, one per trustee.", min=1)],
    output: Annotated[Path, typer.Option("--out", help="Directory for the share files.", file_okay=False)],
    as_json: Json = False,
) -> None:
    """Split the organisation's keys into SHARES files, any THRESHOLD of which recover them,
    each signed with the operator key. Give each trustee one file; fewer than THRESHOLD
    reveal nothing, and a forged or altered share is left out at recovery."""
    config = load_config(home)
    paths = [str(path) for path in keys.split(config, threshold, shares, output)]
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
    offline: Offline = False,
    as_json: Json = False,
) -> None:
    """Recover the organisation's keys from trustees' shares into a home: only shares
    signed by one of its recorded operators count, and the keys must be the recorded ones."""
    config = load_config(home)
    recovered = keys.combine(config, files, keys.organisation_record(config, offline), force)
    _report(as_json, config.organisation, recovered.restored, recovered.checked_against, recovered.left_out)


def _report(as_json: bool, organisation: str, restored: list[str], source: str, left_out: list[Path]) -> None:
    if as_json:
        print_json({"restored": restored, "organisation": organisation, "checked_against": source,
                    "left_out": [str(path) for path in left_out]})  # fmt: skip
        return
    out.print(f"restored the {', '.join(restored)} keys of {organisation} (checked against {source})", highlight=False)
    for path in left_out:
        out.print(f"  left out {path}: not signed by {organisation}, damaged, or of another split", highlight=False)
