"""``twinledger bench …``: one command per benchmark, each printing a table and writing
JSON (results in bench/results and docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from twinledger.cli.common import Json, command

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (results in bench/results and docs/benchmarks.md).")


@bench_app.command("ledger")
@command
def bench_ledger(
    txs: Annotated[int, typer.Option(help="Transactions to commit.")] = 20000,
    batch: Annotated[int, typer.Option(help="Transactions per submitted batch.")] = 500,
    clients: Annotated[int, typer.Option(help="Concurrent submitting connections.")] = 4,
    output: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench/results/ledger.json"),
    as_json: Json = False,
) -> None:
    """One node, 1 kB signed transactions in batches, all committed; with the ceiling."""
    from twinledger.bench.ledger import run_ledger_benchmark

    run_ledger_benchmark(txs=txs, batch=batch, clients=clients, output=output, as_json=as_json)


@bench_app.command("network")
@command
def bench_network(
    validators: Annotated[int, typer.Option(help="Validator processes.")] = 4,
    txs: Annotated[int, typer.Option(help="Transactions to commit.")] = 20000,
    batch: Annotated[int, typer.Option(help="Transactions per submitted batch.")] = 500,
    clients: Annotated[int, typer.Option(help="Concurrent submitting connections, spread over the nodes.")] = 4,
    window: Annotated[int, typer.Option(help="Most transactions submitted and not yet committed (0: no limit).")] = 2000,
    byzantine: Annotated[bool, typer.Option(help="Also run with the last validator stopped, then attacking.")] = False,
    output: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench/results/network.json"),
    as_json: Json = False,
) -> None:
    """Validators running bft on this machine, all transactions committed on every node."""
    from twinledger.bench.network import run_network_benchmark

    run_network_benchmark(validators=validators, txs=txs, batch=batch, clients=clients, window=window, output=output,
                          as_json=as_json, byzantine=byzantine)  # fmt: skip


@bench_app.command("store")
@command
def bench_store(
    size_mib: Annotated[int, typer.Option("--size-mib", help="Document size in MiB.", min=1)] = 256,
    feed_rate: Annotated[int, typer.Option(help="Samples per second offered to the feed.", min=1)] = 100_000,
    feed_seconds: Annotated[float, typer.Option(help="Seconds of samples per feed run.", min=1)] = 10.0,
    output: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench/results/store.json"),
    as_json: Json = False,
) -> None:
    """Three store nodes (r = 3): upload and download of one document, and a sensor feed
    followed live (samples/s, sample-to-reader latency), each with its ceiling."""
    from twinledger.bench.store import run_store_benchmark

    run_store_benchmark(size_mib=size_mib, output=output, as_json=as_json, feed_rate=feed_rate,
                        feed_seconds=feed_seconds)  # fmt: skip


@bench_app.command("kpcpre")
@command
def bench_kpcpre(
    runs: Annotated[int, typer.Option(help="Runs per measurement (the median is reported).", min=5)] = 100,
    network_segments: Annotated[int, typer.Option(help="Segments of the epoch shared over three nodes (0: skip).",
                                                  min=0)] = 600,  # fmt: skip
    output: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench/results/kpcpre.json"),
    as_json: Json = False,
) -> None:
    """KeyGen, RKGen, Enc, ReEnc and Dec for AND and OR policy trees of 3, 7 and 15 nodes
    (Armored Twins Table 1), with the ceiling, and sharing one epoch with a new reader:
    the cryptography alone, then on three nodes through a proxy."""
    from twinledger.bench.kpcpre import run_kpcpre_benchmark

    run_kpcpre_benchmark(runs=runs, output=output, as_json=as_json, network_segments=network_segments)


@bench_app.command("aml")
@command
def bench_aml(
    size_mb: Annotated[float, typer.Option("--size-mb", help="Size of the plant model.", min=0.01)] = 4.0,
    runs: Annotated[int, typer.Option(help="Runs per operation (the median is reported).", min=1)] = 3,
    output: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench/results/aml.json"),
    as_json: Json = False,
) -> None:
    """Create, insert, remove and diff on a plant-size AutomationML specification."""
    from twinledger.bench.aml import run_aml_benchmark

    run_aml_benchmark(size_mb=size_mb, runs=runs, output=output, as_json=as_json)


@bench_app.command("backfill")
@command
def bench_backfill(
    days: Annotated[float, typer.Option(help="Days of 1 Hz history to backfill.", min=0.01)] = 7.0,
    output: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench/results/backfill.json"),
    as_json: Json = False,
) -> None:
    """Backfill a sensor's history from CSV, read it back and export it, on three nodes."""
    from twinledger.bench.backfill import run_backfill_benchmark

    run_backfill_benchmark(days=days, output=output, as_json=as_json)


@bench_app.command("ingest")
@command
def bench_ingest(
    connections: Annotated[int, typer.Option(help="TCP ingest connections at once.", min=1)] = 4,
    window: Annotated[int, typer.Option(help="Unanswered records per connection (the nodes' ingest window).",
                                        min=1)] = 1024,  # fmt: skip
    scale: Annotated[float, typer.Option(help="Fraction of the default record counts (20,000 / 20,000 / 2,000).",
                                         min=0.001)] = 1.0,  # fmt: skip
    plant_hz: Annotated[float, typer.Option(help="Steps per second of the plant simulator.", min=1)] = 100.0,
    sampling_ms: Annotated[int, typer.Option(help="The agent's OPC UA sampling interval (ms).", min=1)] = 10,
    seconds: Annotated[float, typer.Option(help="Seconds of OPC UA samples counted.", min=1)] = 15.0,
    output: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench/results/ingest.json"),
    as_json: Json = False,
) -> None:
    """Four bft validators (r = 3): TCP ingest records/s at 100 B, 1 kB and 100 kB with the
    TLS channel's ceiling, and OPC UA samples/s through the device agent into feeds with
    what the OPC UA server delivers as the ceiling."""
    from twinledger.bench.ingest import run_ingest_benchmark

    run_ingest_benchmark(output=output, as_json=as_json, connections=connections, window=window, plant_hz=plant_hz,
                         sampling_ms=sampling_ms, seconds=seconds, scale=scale)  # fmt: skip
