"""``twinledger store …`` and the document transfers behind ``twin doc add|version|get``.

The CLI is a store client itself: it reaches the store nodes the membership lists with
the home's node certificate (one hop, mutual TLS), so documents are encrypted and
decrypted here and no node ever sees their plaintext.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from twinledger.cli.common import Home, Json, client, command, err, kv_table, out, print_json
from twinledger.config import NodeConfig, load_config, passphrase, read_run_file
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import EncryptionKey, read_secret_file
from twinledger.errors import TwinledgerError
from twinledger.ledger.genesis import Genesis
from twinledger.store.client import StoreClient
from twinledger.store.placement import Replication, store_nodes
from twinledger.store.protocol import StoreTls

T = TypeVar("T")
store_app = typer.Typer(no_args_is_help=True, help="The off-chain store on this node: status, repair, audit.")


def store_client(config: NodeConfig, members: dict[str, Any]) -> StoreClient:
    """A client of the store nodes ``members`` (GET /v1/members) lists, as this home's node.
    The home's own node is reached where its run file says it listens (its configured port
    may be 0: any free port)."""
    genesis = Genesis.read(config.genesis_path)
    tls = StoreTls.load(config.cert("consortium-ca"), config.cert("node-chain"), config.key("tls"),
                        config.cert("organisation"), passphrase())  # fmt: skip
    own = config.signing_key().public
    running = (read_run_file(config) or {}).get("storage")
    nodes = [replace(node, endpoint=running) if node.signing_key == own and running else node
             for node in store_nodes(members["organisations"])]  # fmt: skip
    return StoreClient(nodes, tls, Replication(genesis.store_replication, genesis.store_write_quorum))


def organisation_key(config: NodeConfig) -> EncryptionKey:
    """The X25519 key this home holds for its organisation."""
    return EncryptionKey(read_secret_file(config.key("node-encryption"), "x25519", passphrase()))


def sharing_key(config: NodeConfig) -> kpcpre.SecretKey:
    """The KP-CPRE key this home holds for its organisation (grants, reading shared data)."""
    return kpcpre.SecretKey.from_bytes(read_secret_file(config.key("sharing"), "kpcpre", passphrase()))


def sharing_public(members: dict[str, Any], organisation: str) -> kpcpre.PublicKey | None:
    """``organisation``'s public sharing key as the membership lists it (None if it has none)."""
    for org in members["organisations"]:
        if org["name"] == organisation and org.get("kpcpre_key"):
            return kpcpre.PublicKey.from_bytes(bytes.fromhex(org["kpcpre_key"]))
    return None


def with_store(home: Path, work: Callable[[NodeConfig, StoreClient, dict[str, Any]], Awaitable[T]]) -> T:
    """Run ``work`` with a store client for the home, closing it afterwards."""
    config = load_config(home)
    members = client(home).request("GET", "/v1/members")

    async def run() -> T:
        async with store_client(config, members) as store:
            return await work(config, store, members)

    return asyncio.run(run())


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
