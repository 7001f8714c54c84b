"""``twinledger store …``, and the progress bar of document transfers.

The CLI is a store client itself (``services.session.Session.store``): it reaches the
store nodes the membership lists with the home's node certificate (one hop, mutual
TLS), so documents are encrypted and decrypted here and no node sees their plaintext.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from twinledger.cli.common import Home, Json, client, command, err, kv_table, out, print_json
from twinledger.errors import TwinledgerError

store_app = typer.Typer(no_args_is_help=True, help="The off-chain store on this node: status, repair, audit.")


@contextmanager
def transfer_progress(label: str, total: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A byte progress bar on stderr (none with ``quiet`` or when stderr is no terminal);
    yields the advance callback."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=err, transient=True, disable=quiet or not err.is_terminal)  # fmt: skip
    with progress:
        task = progress.add_task(label, total=total)
        yield lambda done: progress.advance(task, done)


# -- commands -----------------------------------------------------------------------------------


@store_app.command("status")
@command
def store_status(home: Home, as_json: Json = False) -> None:
    """What this store node holds, and the store nodes of the consortium."""
    status = client(home).request("GET", "/v1/store")
    if as_json:
        print_json(status)
        return
    replication = status["replication"]
    out.print(kv_table("store", [("listening on", status["address"]), ("items", status["items"]),
                                 ("chunks", status["chunks"]), ("bytes", f"{status['bytes']:,}"),
                                 ("replication", f"r = {replication['factor']}, write quorum "
                                                 f"{replication['write_quorum']}"),
                                 ("store nodes", ", ".join(f"{n['organisation']}/{n['node']} ({n['endpoint']})"
                                                           for n in status["nodes"]))]))  # fmt: skip


@store_app.command("repair")
@command
def store_repair(home: Home, as_json: Json = False) -> None:
    """Push ACLs, feed updates and chunks that other store nodes should hold but lack (anti-entropy)."""
    report = client(home).request("POST", "/v1/store/repair")
    if as_json:
        print_json(report)
        return
    unreachable = ", ".join(report["unreachable"]) or "none"
    out.print(f"checked {report['chunks_checked']} chunk(s), pushed {report['chunks_pushed']} chunk(s), "
              f"{report['feed_updates_pushed']} feed update(s) and {report['acls_pushed']} ACL(s); unreachable: "
              f"{unreachable}", highlight=False, soft_wrap=True)  # fmt: skip


@store_app.command("audit")
@command
def store_audit(home: Home, as_json: Json = False) -> None:
    """Re-hash every chunk this node holds and repair damaged ones from replicas."""
    report = client(home).request("POST", "/v1/store/audit")
    if as_json:
        print_json(report)
    else:
        out.print(f"checked {report['checked']} chunk(s): {len(report['corrupt'])} damaged or missing, "
                  f"{report['repaired']} repaired from replicas", highlight=False)  # fmt: skip
        for digest in report["corrupt"]:
            state = "unrepaired" if digest in report["unrepaired"] else "repaired"
            out.print(f"  {digest}  {state}", highlight=False)
    if report["unrepaired"]:
        raise TwinledgerError(f"{len(report['unrepaired'])} chunk(s) could not be repaired from any replica",
                              code="unrepaired")  # fmt: skip
