"""The ``twinledger`` command. Readable output by default, ``--json`` for scripts; on
failure one line on stderr saying why, and a non-zero exit code."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from twinledger.cli import (
    feeds,  # noqa: F401  (registers twin feed …)
    sharing,
)
from twinledger.cli.agent import agent
from twinledger.cli.bench import bench_app
from twinledger.cli.common import (
    STDIN,
    Home,
    Json,
    client,
    command,
    err,
    error_line,
    input_file,
    kv_table,
    out,
    print_json,
    render_outcome,
    run,
    show_id,
)
from twinledger.cli.ingest import ingest_app, record_get
from twinledger.cli.keys import key_app
from twinledger.cli.members import member_app
from twinledger.cli.network import network_app
from twinledger.cli.principals import principal_app
from twinledger.cli.principals import token_app as api_token_app
from twinledger.cli.storage import store_app
from twinledger.cli.twins import twin_app
from twinledger.config import ROLES, init_home, live_node_pid, load_config, renew_node_certificate
from twinledger.core.times import iso_ms
from twinledger.errors import TwinledgerError, parse_hex
from twinledger.services import records

# asyncua's warnings (a revised session timeout, a revised subscription) are noise to a
# plant engineer; its failures reach them as twinledger errors. So are asyncio's warnings
# for each write to a connection already lost ("socket.send() raised exception."): the
# next read reports the loss once, in twinledger's words.
logging.getLogger("asyncua").setLevel(logging.CRITICAL)
logging.getLogger("asyncio").setLevel(logging.ERROR)

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="markdown",
                  help="twinledger: secure data sharing for industrial digital twins.")  # fmt: skip
node_app = typer.Typer(no_args_is_help=True, help="Run a node.")
record_app = typer.Typer(no_args_is_help=True, help="Signed records on the ledger.")
tx_app = typer.Typer(no_args_is_help=True, help="Transactions.")
block_app = typer.Typer(no_args_is_help=True, help="Blocks.")
verify_app = typer.Typer(no_args_is_help=True, help="Offline verification.")
plant_app = typer.Typer(no_args_is_help=True, help="The bottling-plant simulator (a real OPC UA server).")
for sub, name in ((node_app, "node"), (record_app, "record"), (tx_app, "tx"), (block_app, "block"),
                  (verify_app, "verify"), (bench_app, "bench"), (network_app, "network"), (twin_app, "twin"),
                  (member_app, "member"), (store_app, "store"), (key_app, "key"),
                  (sharing.token_app, "token"), (sharing.device_app, "device"), (sharing.request_app, "request"),
                  (plant_app, "plant"), (ingest_app, "ingest"), (principal_app, "principal"),
                  (api_token_app, "api-token")):  # fmt: skip
    app.add_typer(sub, name=name)


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        out.print(f"twinledger {version('twinledger')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_version,
                                          is_eager=True)] = False,  # fmt: skip
) -> None:
    """twinledger: secure data sharing for industrial digital twins."""


for function, name in ((sharing.grant, "grant"), (sharing.revoke, "revoke"), (sharing.grants, "grants"), (sharing.rekey, "rekey"),
                       (sharing.who_reads, "access"),
                       (agent, "agent")):
    app.command(name)(function)

# -- init / node ------------------------------------------------------------------------------


@app.command("init")
@command
def init(
    home: Home,
    org: Annotated[str, typer.Option("--org", help="Organisation name.")],
    node: Annotated[str, typer.Option("--node", help="Node name within the organisation.")] = "node-1",
    role: Annotated[list[str], typer.Option("--role", help=f"Role(s): {', '.join(ROLES)}.")] = ["full", "store", "proxy"],  # noqa: B006
    api_host: Annotated[str, typer.Option(help="API listen address.")] = "127.0.0.1",
    api_port: Annotated[int, typer.Option(help="API port (0: any free port).")] = 7700,
    chain_id: Annotated[str | None, typer.Option(help="Chain id (default ORG-chain).")] = None,
    block_interval_ms: Annotated[int, typer.Option(help="Minimum time between blocks.")] = 200,
    max_block_txs: Annotated[int, typer.Option(help="Maximum transactions per block.")] = 5000,
    store: Annotated[str, typer.Option(help="Chain store URL (sqlite:///… or postgresql://…).")] = "sqlite:///data/chain.db",
    as_json: Json = False,
) -> None:
    """Create a node home: keys, certificates, genesis and configuration."""
    config = init_home(home, org, node=node, roles=tuple(role), api_host=api_host, api_port=api_port,
                       chain_id=chain_id, block_interval_ms=block_interval_ms,
                       max_block_txs=max_block_txs, store_url=store)  # fmt: skip
    operator = config.signing_key("operator").public.hex()
    info = {"home": str(home), "organisation": org, "node": node, "roles": list(config.roles),
            "chain_id": chain_id or f"{org}-chain", "operator_key": operator,
            "node_key": config.signing_key().public.hex()}  # fmt: skip
    if as_json:
        print_json(info)
    else:
        out.print(kv_table("node home created", list(info.items())))
        out.print(f"start it with: twinledger node start --home {home}")


@node_app.command("start")
@command
def node_start(home: Home) -> None:
    """Run the node in the foreground (Ctrl-C or SIGTERM stops it)."""
    import asyncio

    from twinledger.node import Node

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)  # fmt: skip
    node = Node(load_config(home))
    try:
        asyncio.run(node.run())
    except TwinledgerError:
        node.close()
        raise
    except OSError as exc:
        node.close()
        raise TwinledgerError(f"the node stopped: {exc.strerror or exc}") from None


@node_app.command("renew-cert")
@command
def node_renew_cert(home: Home, as_json: Json = False) -> None:
    """Issue this node a new certificate now (a running node renews its own 30 days before
    the end; restart a running node to present one renewed here)."""
    config = load_config(home)
    if live_node_pid(config) is not None:
        raise TwinledgerError("the node of this home is running and renews its own certificate 30 days before the end; "
                              "stop it to renew now", code="node_running")  # fmt: skip
    end = renew_node_certificate(config)
    if as_json:
        print_json({"node": f"{config.organisation}/{config.name}", "valid_until": end.isoformat()})
    else:
        out.print(f"{config.organisation}/{config.name}: new certificate valid until "
                  f"{end.isoformat(timespec='minutes')}", highlight=False)  # fmt: skip


# -- records ------------------------------------------------------------------------------------


@record_app.command("put")
@command
def record_put(
    home: Home,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="File to record; - for stdin.", allow_dash=True)],
    hash_only: Annotated[bool, typer.Option("--hash-only", help="Record only the file's SHA-256.")] = False,
    media_type: Annotated[str, typer.Option(help="Media type of the payload.")] = "application/octet-stream",
    meta: Annotated[list[str], typer.Option("--meta", help="Metadata KEY=VALUE (repeatable).")] = [],  # noqa: B006
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until committed.")] = False,
    as_json: Json = False,
) -> None:
    """Record a file (payload on chain, or only its hash) with metadata; prints the tx hash."""
    metadata = {**({"filename": file.name} if file != STDIN else {}), **records.parse_metadata(meta)}
    with input_file(file) as source:
        payload = source.read_bytes()
    outcome = run(home, lambda session: records.put(session, payload, metadata, media_type, hash_only, wait))
    result: dict[str, Any] = {"hash": outcome.tx_hash.hex(), "status": "accepted"}
    if outcome.committed:
        result = {"hash": outcome.tx_hash.hex(), "status": "committed", "height": outcome.height,
                  "receipt": "ok"}  # fmt: skip
    if as_json:
        print_json(result)
    else:
        out.print(outcome.tx_hash.hex(), highlight=False)


record_app.command("get")(record_get)


# -- transactions and blocks --------------------------------------------------------------------


@tx_app.command("show")
@command
def tx_show(
    tx_hash: Annotated[str, typer.Argument(help="Transaction hash (hex).")],
    home: Home,
    proof: Annotated[bool, typer.Option("--proof", help="Include an inclusion proof.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the commit.")] = 0.0,
    as_json: Json = False,
) -> None:
    """Show a transaction, where it is committed, its receipt, and optionally its proof."""
    view = client(home).transaction(tx_hash, proof=proof, wait=wait)
    if as_json:
        print_json(view)
        return
    if view["status"] == "pending":
        out.print(f"transaction {tx_hash} is pending (not yet in a block)")
        return
    tx, block, receipt = view["transaction"], view["block"], view["receipt"]
    rows = [("hash", tx["hash"]), ("status", receipt["status"] + (f" ({receipt['error']})" if receipt["error"] else "")),
            ("block", f"{block['height']} ({block['hash']})"), ("index", block["index"]),
            ("call", f"{tx['contract']}.{tx['method']}"), ("sender", tx["sender"]), ("nonce", tx["nonce"]),
            ("timestamp (ms)", tx["timestamp"]), ("stripped", tx["stripped"])]  # fmt: skip
    if not tx["stripped"]:
        rows.append(("args", json.dumps(tx["args"], sort_keys=True)[:400]))
    for event in receipt["events"]:
        rows.append(("event", f"{event['contract']}.{event['type']}"))
    out.print(kv_table("transaction", rows))
    if proof:
        out.print("proof: use --json to write it to a file, then: twinledger verify proof FILE")


@tx_app.command("wait")
@command
def tx_wait(
    tx_hash: Annotated[str, typer.Argument(help="Transaction hash (hex), as a pending write printed it.")],
    home: Home,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.", min=0)] = 60.0,
    as_json: Json = False,
) -> None:
    """Wait for a pending transaction: exits 0 once committed, 1 if the contract refused
    it, 75 if it is still pending."""
    digest = parse_hex(tx_hash, "transaction hash")
    outcome = run(home, lambda session: session.wait_for(digest, timeout))
    render_outcome(outcome, as_json, f"transaction {tx_hash} committed")


@block_app.command("show")
@command
def block_show(
    height: Annotated[str, typer.Argument(help="Height, 'head', or block hash.")],
    home: Home,
    as_json: Json = False,
) -> None:
    """Show a block: header, certificate signers and transactions."""
    node = client(home)
    if height == "head":
        height = str(node.health()["height"])
    view = node.block(height)
    if as_json:
        print_json(view)
        return
    header = view["header"]
    out.print(kv_table(f"block {header['height']}", [(k, header[k]) for k in (
        "hash", "chain_id", "timestamp", "previous", "tx_count", "tx_root", "state_root", "proposer")]
        + [("signers", ", ".join(show_id(s["validator"]) for s in view["certificate"]["signatures"]) or "-")]))  # fmt: skip
    if view["transactions"]:
        table = Table("#", "hash", "call", "sender", "stripped", title="transactions", title_justify="left")
        for i, tx in enumerate(view["transactions"][:50]):
            table.add_row(str(i), tx["hash"], f"{tx['contract']}.{tx['method']}", show_id(tx["sender"]), str(tx["stripped"]))
        out.print(table)
        if len(view["transactions"]) > 50:
            out.print(f"… and {len(view['transactions']) - 50} more (use --json)")


# -- verification -------------------------------------------------------------------------------


UNPINNED = ("nothing pinned: the proof only shows that validators it names itself signed it, and whoever made it "
            "could have named any; pass --home, --genesis or --trusted-validators to check it against the chain you "
            "trust")
INVALID, UNREADABLE, UNPINNED_EXIT = 1, 3, 4
"""Exit codes of ``verify proof`` besides 0 (valid against the pinned chain)."""


@verify_app.command("proof")
@command
def verify_proof_command(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Proof file (tx show --proof --json) or audit file (twin "
                                                             "audit --out); - for stdin.", allow_dash=True)],  # fmt: skip
    home: Annotated[Path | None, typer.Option("--home", help="Pin to this node home's genesis.",
                                              envvar="TWINLEDGER_HOME")] = None,  # fmt: skip
    genesis: Annotated[Path | None, typer.Option(help="Pin to this genesis file (chain id and validators).")] = None,
    trusted_validators: Annotated[str | None, typer.Option(help="Expected validator-set hash (hex).")] = None,
    as_json: Json = False,
) -> None:
    """Verify a proof, or every proof of an audit, offline against the chain you trust.

    Exit 0: valid, from the pinned chain. 1: invalid (tampered, or not from that chain).
    3: unreadable (no such file, not JSON, not a proof or audit). 4: valid only in itself,
    because nothing was pinned."""
    from twinledger.services import proofs

    if genesis is None and home is not None:
        genesis = load_config(home).genesis_path
    try:
        with input_file(file) if file == STDIN else contextlib.nullcontext(file) as source:
            checked = proofs.check_file(source, genesis, trusted_validators)
    except TwinledgerError as exc:
        unreadable = isinstance(exc, proofs.UnreadableProof)
        if as_json:
            print_json({"valid": False, "readable": not unreadable, "error": exc.message})
        else:
            error_line(f"{'unreadable' if unreadable else 'invalid'}: {exc.message}")
        raise typer.Exit(UNREADABLE if unreadable else INVALID) from None
    results = [{"transaction": v.tx_hash.hex(), "block": v.block_hash.hex(), "height": v.height,
                "chain_id": v.chain_id, "block_time_ms": v.timestamp, "sender": v.sender.hex(),
                "call": f"{v.contract}.{v.method}", "signers": [s.hex() for s in v.signers],
                "validators_hash": v.validators_hash.hex()} for v in checked.verified]  # fmt: skip
    pinned = checked.pin.describe() if checked.pin else None
    if as_json:
        body = {"valid": True, "pinned": pinned, **(results[0] if checked.twin is None else
                                                    {"twin": checked.twin, "entries": results})}  # fmt: skip
        print_json(body if pinned else {**body, "warning": UNPINNED})
    elif checked.twin is None:
        shown = {**results[0], "block_time_ms": iso_ms(results[0]["block_time_ms"]),
                 "signers": "\n".join(results[0]["signers"])}  # fmt: skip
        out.print(kv_table("proof is valid", [("block time" if k == "block_time_ms" else k, v) for k, v in shown.items()]))
    else:
        out.print(f"all {len(results)} proofs of the audit of twin {checked.twin} are valid", highlight=False)
    if pinned:
        if not as_json:
            out.print(f"pinned to {pinned}", highlight=False)
        return
    error_line(f"warning: {UNPINNED}")
    raise typer.Exit(UNPINNED_EXIT)


@verify_app.command("chain")
@command
def verify_chain_command(home: Home, as_json: Json = False) -> None:
    """Walk the stored chain and recheck every hash, Merkle root, signature and state root."""
    from twinledger.consensus import create_consensus
    from twinledger.contracts import default_runtime
    from twinledger.ledger.genesis import Genesis
    from twinledger.ledger.store import open_store
    from twinledger.ledger.verify import verify_chain

    config = load_config(home)
    genesis = Genesis.read(config.genesis_path)
    store = open_store(config.store_url)
    try:
        with Progress(console=err, transient=True, disable=as_json) as progress:
            task = progress.add_task("verifying blocks", total=None)

            def advance(height: int, top: int) -> None:
                progress.update(task, completed=height + 1, total=top + 1)

            report = verify_chain(store, genesis, create_consensus(genesis, None), default_runtime(), advance)
    finally:
        store.close()
    result = {"ok": report.ok, "height": report.height, "blocks": report.blocks,
              "transactions": report.transactions, "stripped": report.stripped,
              "state_replayed_to": report.replayed_to,
              "problems": [{"height": h, "problem": p} for h, p in report.problems]}  # fmt: skip
    if as_json:
        print_json(result)
    elif report.ok:
        out.print(f"chain OK: {report.blocks} blocks, {report.transactions} transactions, "
                  f"state replayed to height {report.replayed_to}")  # fmt: skip
    if not report.ok:
        if not as_json:
            height, problem = report.problems[0]
            error_line(f"chain INVALID at height {height}: {problem}")
        raise typer.Exit(1)


# -- the plant and the demo ------------------------------------------------------------------------


@plant_app.command("run")
@command
def plant_run(
    port: Annotated[int, typer.Option(help="OPC UA port.")] = 4840,
    host: Annotated[str, typer.Option(help="Address to listen on (only a loopback address with --insecure).")] = (
        "127.0.0.1"),
    certs: Annotated[Path, typer.Option(help="Directory of the plant's OPC UA certificate (made on first use) and of "
                                             "trusted/, the client certificates it accepts.", file_okay=False)] = Path(
        "plant-opcua"),
    insecure: Annotated[bool, typer.Option("--insecure", help="Serve without OPC UA security.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the sensors' noise.")] = 7,
    rate: Annotated[float, typer.Option(help="Steps of the simulation per second.", min=0.1)] = 20.0,
    as_json: Json = False,
) -> None:
    """Serve the bottling plant of examples/bottling-plant.aml over OPC UA until Ctrl-C:
    conveyor, filler, level and flow sensors, their methods, and a fault switch
    (plant/BreakLevelSensor) that makes bottles flood. It offers OPC UA Sign & Encrypt
    only and lets in the clients whose certificates are in CERTS/trusted/."""
    import asyncio

    from twinledger.agent.plant import NAMESPACE, Plant, PlantServer
    from twinledger.ingest.opcua import SERVER_POLICIES

    async def serve() -> None:
        async with PlantServer(Plant(seed=seed), host=host, port=port, rate_hz=rate,
                               certs=None if insecure else certs) as server:  # fmt: skip
            identity, trust = server.identity, server.trust
            policies = [policy.name for policy in SERVER_POLICIES] if identity else ["NoSecurity"]
            if as_json:
                print_json({"url": server.url, "namespace": NAMESPACE, "policies": policies,
                            "certificate": identity and str(identity.path),
                            "fingerprint": identity and identity.fingerprint,
                            "trusted": trust and str(trust.directory)})  # fmt: skip
            else:
                security = "without OPC UA security" if identity is None else (
                    f"{' or '.join(policies)}, certificate {identity.path} "
                    f"({identity.fingerprint}); it trusts "
                    f"the client certificates in {trust.directory if trust else ''}")  # fmt: skip
                out.print(f"bottling plant at {server.url} (namespace {NAMESPACE}), {security}; nodes are named by AML "
                          "ID, e.g. level-sensor-1/Level, conveyor-1/SetVelocity", highlight=False)  # fmt: skip
            sys.stdout.flush()
            await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        if not as_json:
            out.print("plant stopped", highlight=False)


@app.command("demo")
@command
def demo(
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to create the demo consortium "
                                                          "(default: demo-network).")] = None,  # fmt: skip
    exit_after: Annotated[bool, typer.Option("--exit", help="Stop everything at the end; exit 0 only if every step "
                                                            "succeeded.")] = False,  # fmt: skip
) -> None:
    """Play the bottling-plant scenario on a local consortium of four organisations: a
    sensor breaks, the alert, the replacement, the report, who reads what, program calls,
    and an audit verified offline."""
    from twinledger.demo import run_demo

    if not run_demo(directory, exit_after):
        raise typer.Exit(1)


PANELS = {
    "Start here": ["demo", "network", "init", "node"],
    "Twins and their data": ["twin", "agent", "ingest", "record", "plant"],
    "Sharing": ["grant", "grants", "access", "revoke", "rekey", "token", "device", "request"],
    "The consortium and its people": ["member", "principal", "api-token", "key", "store"],
    "Checking": ["verify", "tx", "block", "bench"],
}
"""The top-level commands grouped by task in ``twinledger --help``, in this order."""


def _group_commands() -> None:
    order = [name for names in PANELS.values() for name in names]
    panel = {name: title for title, names in PANELS.items() for name in names}
    for registered in (app.registered_commands, app.registered_groups):
        registered.sort(key=lambda info: order.index(info.name) if info.name in order else len(order))
        for info in registered:
            info.rich_help_panel = panel.get(info.name or "", "Other")


_group_commands()


def main() -> None:
    """Run the CLI; a command line that does not parse gets one line too, with where to
    look, instead of the usage box."""
    try:  # Typer 0.2x carries its own Click
        from typer._click import exceptions as parsing
    except ImportError:  # pragma: no cover - an older Typer on plain Click
        from click import exceptions as parsing  # type: ignore[no-redef]

    try:  # the same name, completion included, when run as python -m twinledger
        code = app(prog_name="twinledger", standalone_mode=False)  # a command's typer.Exit(n) comes back as n
        if isinstance(code, int) and code:
            sys.exit(code)
    except parsing.NoArgsIsHelpError as shown:  # a group without a command: its help
        shown.show()
        sys.exit(0)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except parsing.UsageError as wrong:
        where = wrong.ctx.command_path if wrong.ctx is not None else "twinledger"
        message = wrong.format_message().rstrip(".")
        error_line(f"error: {message[:1].lower()}{message[1:]} (see {where} --help)")
        sys.exit(2)
    except parsing.ClickException as failed:
        error_line(f"error: {failed.format_message()}")
        sys.exit(failed.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        error_line("stopped")
        sys.exit(130)

if __name__ == "__main__":
    main()
