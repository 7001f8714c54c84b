"""What every CLI command shares: output, the error wrapper, the node client, and
submitting a signed call and waiting for its receipt."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from twinledger.client import NodeClient
from twinledger.config import load_config, passphrase
from twinledger.crypto.keys import SigningKey, read_secret_file
from twinledger.errors import TwinledgerError

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

Home = Annotated[Path, typer.Option("--home", help="Node home directory.", envvar="TWINLEDGER_HOME")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
KeyFile = Annotated[
    Path | None,
    typer.Option("--key", help="Sign with this Ed25519 key file instead of the home's operator key.", dir_okay=False),
]


def command(fn: F) -> F:
    """Turn every known error into one readable line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TwinledgerError as exc:
            error_line(f"error: {exc.message}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            error_line("interrupted")
            raise typer.Exit(130) from None
        except OSError as exc:
            error_line(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def error_line(text: str) -> None:
    """One unwrapped line on stderr."""
    sys.stderr.write(" ".join(text.split()) + "\n")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def client(home: Path) -> NodeClient:
    return NodeClient(load_config(home))


def signer(home: Path, key_file: Path | None) -> SigningKey:
    if key_file is None:
        return load_config(home).signing_key("operator")
    return SigningKey(read_secret_file(key_file, "ed25519", passphrase()))


def transact(home: Path, key_file: Path | None, contract: str, method: str, args: dict[str, Any],
             wait: bool = True) -> dict[str, Any]:  # fmt: skip
    """Sign and submit ``contract.method(args)``; with ``wait``, return the committed
    transaction's view, or raise with the receipt's message if the call failed."""
    node = client(home)
    chain_id = node.health()["chain_id"]
    if not wait:
        tx = node.call(signer(home, key_file), contract, method, args, chain_id)
        return {"hash": tx.hash.hex(), "status": "accepted"}
    return node.commit(signer(home, key_file), contract, method, args, chain_id, check=True)


def parse_time(text: str) -> int:
    """Microseconds since the epoch from seconds since the epoch or an ISO 8601 time."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise TwinledgerError(f"{text[:40]!r} is neither seconds since the epoch nor an ISO 8601 time",
                                  code="bad_time") from None  # fmt: skip
        seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(seconds) or not 0 <= seconds < 1 << 33:
        raise TwinledgerError(f"{text[:40]!r} is not a time between 1970 and 2242", code="bad_time")
    return round(seconds * 1_000_000)
