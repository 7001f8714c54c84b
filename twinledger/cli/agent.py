"""``twinledger agent``: run a twin's device agent against an OPC UA server."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from twinledger.cli.common import Home, Json, client, command, out
from twinledger.client import device_keys
from twinledger.config import load_config
from twinledger.errors import TwinledgerError


@command
def agent(
    home: Home,
    twin: Annotated[str, typer.Option("--twin", help="Twin id or device id.")],
    opcua: Annotated[str, typer.Option("--opcua", help="The device's OPC UA endpoint, e.g. "
                                                       "opc.tcp://127.0.0.1:4840/twinledger/plant/")],  # fmt: skip
    device: Annotated[Path, typer.Option("--device", help="The device's key directory (twinledger device add).",
                                         file_okay=False, exists=True)],  # fmt: skip
    namespace: Annotated[str, typer.Option(help="The OPC UA namespace of the nodes named by AML ID.")] = (
        "urn:twinledger:bottling-plant"),
    sampling_ms: Annotated[int, typer.Option(help="Sampling and publishing interval (ms).", min=10)] = 50,
    flush_seconds: Annotated[float, typer.Option(help="Seconds of readings per feed segment.", min=0.05)] = 1.0,
    as_json: Json = False,
) -> None:
    """Stream the twin's signals into its encrypted feeds, raise alerts on readings out of
    their expected range, run queued program calls after re-checking their safety rules,
    and replace components whose serial number changed — until Ctrl-C."""
    from twinledger.agent.agent import DeviceAgent

    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    twin_id = client(home).request("GET", f"/v1/twins/{twin}")["id"]
    keys = device_keys(device)
    devices = client(home).request("GET", f"/v1/twins/{twin_id}")["devices"]
    if not any(d["key"] == keys.signing.public.hex() and d["status"] == "active" for d in devices):
        raise TwinledgerError(f"the keys in {device} are no active device of twin {twin_id}; add it with "
                              "twinledger device add", code="unknown_device")  # fmt: skip

    def say(text: str) -> None:
        if as_json:
            sys.stdout.write(json.dumps({"time": datetime.now().astimezone().isoformat(), "event": text}) + "\n")
            sys.stdout.flush()
        else:
            out.print(f"[dim]{datetime.now():%H:%M:%S}[/] {text}", highlight=False)

    device_agent = DeviceAgent(home, load_config(home), keys, twin_id, opcua, namespace=namespace,
                               sampling_ms=sampling_ms, flush_seconds=flush_seconds, say=say)  # fmt: skip

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await device_agent.run(stop)

    asyncio.run(run())
    say(f"stopped: {', '.join(f'{v:,} {k}' for k, v in device_agent.stats.items())}")
