"""``twinledger network …``: a local consortium — one node per organisation on this
machine — created, started, watched and stopped with one command each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from twinledger.cli.common import Json, command, err, out, print_json
from twinledger.config import load_config
from twinledger.errors import TwinledgerError
from twinledger.services.session import cannot_commit

network_app = typer.Typer(no_args_is_help=True, help="A local consortium: one node per organisation on this machine.")


NetworkDir = Annotated[Path, typer.Option("--dir", help="Directory of the local network (one home per organisation).")]
DEFAULT_ORGS = "manufacturer,owner,maintainer,auditor"


def _split_orgs(orgs: str) -> list[str]:
    names = [name.strip() for name in orgs.split(",") if name.strip()]
    if not names:
        raise TwinledgerError("--orgs needs at least one organisation name")
    return names


def _create_network(directory: Path, orgs: str, consensus: str, chain_id: str, base_port: int,
                    block_interval_ms: int) -> list[str]:  # fmt: skip
    from twinledger.config import init_network
    from twinledger.launcher import write_network_file

    names = _split_orgs(orgs)
    init_network(directory, names, consensus=consensus, chain_id=chain_id, base_port=base_port,
                 block_interval_ms=block_interval_ms)  # fmt: skip
    write_network_file(directory, names, consensus)
    return names


@network_app.command("init")
@command
def network_init(
    directory: NetworkDir,
    orgs: Annotated[str, typer.Option("--orgs", help="Comma-separated organisation names.")] = DEFAULT_ORGS,
    consensus: Annotated[str, typer.Option(help="bft (the consortium) or poa (one company's chain).")] = "bft",
    chain_id: Annotated[str, typer.Option(help="Chain id.")] = "consortium",
    base_port: Annotated[int, typer.Option(help="First port: node i uses base+3i (peers), +1 (API), +2 (store).")] = 7800,
    block_interval_ms: Annotated[int, typer.Option(help="Minimum time between blocks.")] = 200,
    as_json: Json = False,
) -> None:
    """Write a genesis and one CA-certified home per organisation."""
    names = _create_network(directory, orgs, consensus, chain_id, base_port, block_interval_ms)
    rows = [{"organisation": org, "home": str(directory / org), "p2p": f"127.0.0.1:{base_port + 3 * i}",
             "api": f"http://127.0.0.1:{base_port + 3 * i + 1}", "store": f"127.0.0.1:{base_port + 3 * i + 2}"}
            for i, org in enumerate(names)]  # fmt: skip
    if as_json:
        print_json({"directory": str(directory), "consensus": consensus, "chain_id": chain_id, "nodes": rows})
        return
    table = Table("organisation", "home", "peer address", "API", title=f"{consensus} network {chain_id!r} created")
    for row in rows:
        table.add_row(row["organisation"], row["home"], row["p2p"], row["api"])
    out.print(table)
    out.print(f"start it with: twinledger network up --dir {directory}")


def _network_status(directory: Path) -> list[dict[str, Any]]:
    import httpx

    from twinledger.launcher import network_homes, running_pid

    rows = []
    for org, home in network_homes(directory):
        config = load_config(home)
        row: dict[str, Any] = {"organisation": org, "home": str(home), "pid": running_pid(home), "api": None,
                               "state": "stopped"}  # fmt: skip
        run = _run_doc(config)
        if row["pid"] is not None and run is not None:
            row["api"] = run.get("api")
            try:
                view = httpx.get(f"{row['api']}/v1/network", timeout=3,
                                 headers={"authorization": f"Bearer {config.api_token()}"}).json()  # fmt: skip
                row.update(state="running", height=view["height"], head=view["head"], round=view["round"],
                           peers=len(view["peers"]), last_block_time=view["last_block_time"],
                           quorum=view["quorum"])  # fmt: skip
            except (httpx.HTTPError, ValueError, KeyError):
                row["state"] = "unresponsive"
        rows.append(row)
    return rows


def _run_doc(config: Any) -> dict[str, Any] | None:
    from twinledger.config import read_run_file

    return read_run_file(config)


def _print_status(rows: list[dict[str, Any]], title: str) -> None:
    import datetime as dt

    table = Table(title=title, title_justify="left")
    widest = max((len(row["organisation"]) for row in rows), default=12)
    table.add_column("organisation", no_wrap=True, min_width=widest)
    for name in ("state", "height", "head", "peers", "round", "last block", "pid"):
        table.add_column(name, no_wrap=True)
    for row in rows:
        last = row.get("last_block_time")
        when = dt.datetime.fromtimestamp(last / 1000, dt.UTC).strftime("%H:%M:%S") if last else "-"
        table.add_row(row["organisation"], row["state"], str(row.get("height", "-")), (row.get("head") or "-")[:8],
                      str(row.get("peers", "-")), str(row.get("round", "-")), when, str(row["pid"] or "-"))  # fmt: skip
    out.print(table)
    for row in rows:
        if row["api"]:
            out.print(f"  {row['organisation']:<{widest}}  API {row['api']}  (home {row['home']})", soft_wrap=True)
    running = [row for row in rows if row.get("quorum")]
    stalled = [row for row in running if not row["quorum"]["can_commit"]]
    if stalled and len(stalled) == len(running):
        out.print(f"[bold red]the chain cannot commit:[/] {cannot_commit(stalled[0]['quorum'], stalled[0]['organisation'])}",
                  soft_wrap=True)  # fmt: skip
    for row in stalled if len(stalled) < len(running) else ():
        out.print(f"[bold yellow]{row['organisation']} is cut off:[/] {cannot_commit(row['quorum'], row['organisation'])}",
                  soft_wrap=True)  # fmt: skip


def _refuse_changes(directory: Path, orgs: str | None, consensus: str | None, base_port: int | None) -> None:
    """Options that shape a new network, given for one that exists, are an error, not ignored."""
    import json

    from twinledger.launcher import NETWORK_FILE, network_homes

    homes = network_homes(directory)
    existing = json.loads((directory / NETWORK_FILE).read_text())
    first = load_config(homes[0][1])
    differs = []
    if orgs is not None and _split_orgs(orgs) != [org for org, _ in homes]:
        differs.append(f"--orgs (it has {', '.join(org for org, _ in homes)})")
    if consensus is not None and consensus != existing.get("consensus"):
        differs.append(f"--consensus (it runs {existing.get('consensus')})")
    if base_port is not None and base_port != first.p2p_port:
        differs.append(f"--base-port (its first port is {first.p2p_port})")
    if differs:
        raise TwinledgerError(f"the network in {directory} exists already; {' and '.join(differs)} apply only when one is "
                              f"created: choose a new --dir, or leave them out to start this one")  # fmt: skip


@network_app.command("up")
@command
def network_up(
    directory: NetworkDir,
    orgs: Annotated[str | None, typer.Option("--orgs", help=f"Organisations, if the network is created now "
                                                            f"(default {DEFAULT_ORGS}).")] = None,  # fmt: skip
    consensus: Annotated[str | None, typer.Option(help="bft or poa, if the network is created now (default bft).")] = None,
    base_port: Annotated[int | None, typer.Option(help="First port, if the network is created now (default 7800).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the first commit.")] = 60.0,
    as_json: Json = False,
) -> None:
    """Start one node per organisation (creating the network first if needed) and wait
    until they commit blocks."""
    import time

    from twinledger.launcher import NETWORK_FILE, network_homes, running_pid, start_node

    if not (directory / NETWORK_FILE).exists():
        _create_network(directory, orgs or DEFAULT_ORGS, consensus or "bft", "consortium", base_port or 7800, 200)
    else:
        _refuse_changes(directory, orgs, consensus, base_port)
    homes = network_homes(directory)
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("starting nodes", total=len(homes))
        for _, home in homes:
            if running_pid(home) is None:
                start_node(home, detach=True)
            progress.advance(task)
        start = {row["organisation"]: row.get("height", 0) for row in _network_status(directory)}
        waiting = progress.add_task("waiting for every node to commit a block", total=len(homes))
        deadline = time.monotonic() + timeout
        while True:
            rows = _network_status(directory)
            done = [r for r in rows if r["state"] == "running" and r.get("height", 0) > start[r["organisation"]]]
            progress.update(waiting, completed=len(done))
            if len(done) == len(rows):
                break
            if time.monotonic() > deadline:
                late = ", ".join(r["organisation"] for r in rows if r not in done)
                raise TwinledgerError(f"no block committed within {timeout:.0f} s by: {late}")
            time.sleep(0.25)
    if as_json:
        print_json({"directory": str(directory), "nodes": rows})
    else:
        _print_status(rows, f"network in {directory} is up")
        out.print(f"stop it with: twinledger network down --dir {directory}")


@network_app.command("status")
@command
def network_status(directory: NetworkDir, as_json: Json = False) -> None:
    """Per node: organisation, pid, API address, height, head, peers, round, last block time."""
    rows = _network_status(directory)
    if as_json:
        print_json({"directory": str(directory), "nodes": rows})
    else:
        _print_status(rows, f"network in {directory}")


@network_app.command("down")
@command
def network_down(directory: NetworkDir, as_json: Json = False) -> None:
    """Stop every node of the local network."""
    from twinledger.launcher import network_homes, running_pid, stop_pid

    stopped = []
    for org, home in network_homes(directory):
        pid = running_pid(home)
        if pid is not None:
            stopped.append({"organisation": org, "pid": pid, "graceful": stop_pid(pid)})
    if as_json:
        print_json({"stopped": stopped})
    else:
        for item in stopped:
            out.print(f"stopped {item['organisation']} (pid {item['pid']}){'' if item['graceful'] else ', killed'}")
        if not stopped:
            out.print("no node was running")
