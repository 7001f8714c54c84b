"""What every CLI command shares: output, the error wrapper, running a service workflow
in a session of the home, and the options several commands take. A command parses its
options, calls one workflow of ``twinledger.services``, and renders what it returns."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from twinledger.config import load_config
from twinledger.errors import NotCommitted, TwinledgerError
from twinledger.services.remote import NodeClient
from twinledger.services.session import Outcome, Session, open_session

PIPE_WIDTH = 1000
"""Columns of output that goes to a pipe or a file: lines and table cells are not broken
at 80 columns there, so that ids and commands can be copied whole."""


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=PIPE_WIDTH)
    return console


def _plain_help() -> None:
    """Help as people read it: no ``<bool>`` beside a flag, and arguments in the usage
    line as ``TWIN FILE`` rather than ``{ref} {file}`` (Typer 0.2x's rich help)."""
    option, argument = getattr(typer.core, "TyperOption", None), getattr(typer.core, "TyperArgument", None)
    if option is not None and hasattr(option, "display_type_rich"):
        shown = option.display_type_rich
        option.display_type_rich = lambda self, ctx: None if self.is_flag else shown(self, ctx)
    if argument is not None and hasattr(argument, "_usage_display_name"):
        def usage_name(self: Any) -> str:
            name = self.display_name_raw.upper()
            return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")

        argument._usage_display_name = usage_name


_plain_help()
out = _console()
err = _console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

Home = Annotated[Path, typer.Option("--home", help="Node home directory.", envvar="TWINLEDGER_HOME")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
KeyFile = Annotated[
    Path | None,
    typer.Option("--key", help="Sign with this Ed25519 key file instead of the home's operator key.", dir_okay=False),
]
Ref = Annotated[str, typer.Argument(metavar="TWIN", help="Twin id or device id.")]
At = Annotated[int | None, typer.Option("--at", help="Show the state after this block height.", min=0)]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the commit and report the outcome.")]
Readers = Annotated[list[str], typer.Option("--reader", help="Organisation that may read it (repeatable; default: "
                                                           "every organisation with a role on the twin).")]
Attributes = Annotated[list[str], typer.Option("--attribute", help="Attribute for grants' policies, e.g. type:report "
                                                                   "(repeatable; twin:ID and the kind are always set).")]
Organisations = Annotated[list[str], typer.Argument(help="Member organisation names.")]
DeviceDir = Annotated[Path | None, typer.Option("--device", help="Read as this device of the twin (the directory "
                                                                  "device add wrote), through its grants.",
                                                  file_okay=False)]  # fmt: skip


PENDING = 75
"""The exit code of a write that is pending — not committed in time, it may still commit
(sysexits' EX_TEMPFAIL) — apart from 1, a write that failed."""


def command(fn: F) -> F:
    """Turn every known error into one readable line on stderr and exit code 1 (PENDING
    for a write that may still commit)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NotCommitted as exc:
            error_line(f"pending: {exc.message}")
            raise typer.Exit(PENDING) from None
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
    """Strict JSON: a number that is not finite (older feeds may hold one) is null."""
    sys.stdout.write(json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, str(value))
    return table


STDIN = Path("-")


@contextlib.contextmanager
def input_file(path: Path) -> Iterator[Path]:
    """``path``, or what stdin holds when it is ``-``, spooled into a private scratch file
    first (an upload needs its size and hash before it starts)."""
    if path != STDIN:
        if not path.is_file():
            raise TwinledgerError(f"no file {path}", code="no_file")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="twinledger-stdin-") as scratch:
        spooled = Path(scratch) / "stdin"
        with spooled.open("wb") as sink:
            shutil.copyfileobj(sys.stdin.buffer, sink)
        yield spooled


def named(path: Path, given: str | None, what: str) -> str:
    """A name given with ``what``, or the file's; stdin has none of its own."""
    if given:
        return given
    if path == STDIN:
        raise TwinledgerError(f"data from stdin (-) has no file name: give {what}", code="bad_request")
    return path.name


def client(home: Path) -> NodeClient:
    return NodeClient(load_config(home))


def run(home: Path, work: Callable[[Session], Awaitable[T]], key: Path | None = None) -> T:
    """Run a workflow in a session of the home (signing with ``key`` if given)."""

    async def session_work() -> T:
        async with open_session(home, key) as session:
            return await work(session)

    return asyncio.run(session_work())


def render_outcome(outcome: Outcome, as_json: bool, done: str) -> None:
    """What a write command prints: ``done`` with where it committed, or that it was submitted."""
    if as_json:
        print_json(outcome.json())
    elif outcome.committed:
        out.print(f"{done} (block {outcome.height}, tx {outcome.tx_hash.hex()[:16]}…)", highlight=False)
        if outcome.earlier:
            out.print("  by an earlier attempt of this same write, which committed after its command gave up; "
                      "nothing was sent again", highlight=False)  # fmt: skip
    else:
        out.print(f"submitted {outcome.tx_hash.hex()}", highlight=False)


def show_id(full: str, digits: int = 16) -> str:
    """An id as a table shows it: shortened on a terminal, whole when the output goes to a
    pipe or a file (where it is copied, not read)."""
    return full[:digits] + "…" if out.is_terminal and len(full) > digits else full
