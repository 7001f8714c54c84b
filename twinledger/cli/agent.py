"""``twinledger agent``: run a twin's device agent against an OPC UA server."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from twinledger.cli.common import Home, Json, client, command, out
from twinledger.config import load_config
from twinledger.errors import TwinledgerError
from twinledger.services.access import device_keys
from twinledger.services.remote import segment


@command
def agent(
    home: Home,
    twin: Annotated[str, typer.Option("--twin", help="Twin id or device id.")],
    opcua: Annotated[str, typer.Option("--opcua", help="The device's OPC UA endpoint, e.g. "
                                                       "opc.tcp://127.0.0.1:4840/twinledger/plant/")],  # fmt: skip
    device: Annotated[Path, typer.Option("--device", help="The device's key directory (twinledger device add).",
                                         file_okay=False, exists=True)],  # fmt: skip
    server_cert: Annotated[Path | None, typer.Option("--opcua-server-cert", help="The device's OPC UA certificate "
                                                     "(DER or PEM). Without it the agent trusts the certificate the "
                                                     "device presents on first contact, and only that one.",
                                                     dir_okay=False, exists=True)] = None,  # fmt: skip
    insecure: Annotated[bool, typer.Option("--opcua-insecure", help="Connect without OPC UA security, to a "
                                           "device that offers none, on a network you trust.")] = False,  # fmt: skip
    namespace: Annotated[str, typer.Option(help="The OPC UA namespace of the nodes named by AML ID.")] = (
        "urn:twinledger:bottling-plant"),
    sampling_ms: Annotated[int, typer.Option(help="Sampling and publishing interval (ms).", min=10)] = 50,
    flush_seconds: Annotated[float, typer.Option(help="Seconds of readings per feed segment.", min=0.05)] = 1.0,
    as_json: Json = False,
) -> None:
    """Stream the twin's signals into its encrypted feeds, raise alerts on readings out of
    their expected range, run queued program calls after re-checking their safety rules,
    and replace components whose serial number changed — until Ctrl-C. It talks to the
    device over OPC UA Sign & Encrypt with the certificate in the device directory, which
    the device must trust."""
    from twinledger.agent.agent import DeviceAgent
    from twinledger.ingest.opcua import DeviceTrust, agent_identity, read_certificate_file

    if insecure and server_cert:
        raise TwinledgerError("--opcua-insecure and --opcua-server-cert contradict each other", code="bad_options")
    if server_cert:
        read_certificate_file(server_cert)
    twin_id = client(home).request("GET", f"/v1/twins/{segment(twin)}")["id"]
    keys = device_keys(device)
    devices = client(home).request("GET", f"/v1/twins/{segment(twin_id)}")["devices"]
    if not any(d["key"] == keys.signing.public.hex() and d["status"] == "active" for d in devices):
        raise TwinledgerError(f"the keys in {device} are no active device of twin {twin_id}; add it with "
                              "twinledger device add", code="unknown_device")  # fmt: skip

    def say(text: str) -> None:
        if as_json:
            sys.stdout.write(json.dumps({"time": datetime.now().astimezone().isoformat(), "event": text}) + "\n")
            sys.stdout.flush()
        else:
            out.print(f"[dim]{datetime.now():%H:%M:%S}[/] {text}", highlight=False)

    identity = None if insecure else agent_identity(device, keys.signing.public)
    device_agent = DeviceAgent(home, load_config(home), keys, twin_id, opcua, opcua_identity=identity,
                               opcua_trust=DeviceTrust(server_cert) if server_cert else None, namespace=namespace,
                               sampling_ms=sampling_ms, flush_seconds=flush_seconds, say=say)  # fmt: skip
    if identity is not None:
        say(f"OPC UA certificate {identity.path} ({identity.fingerprint}): the device must trust it")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await device_agent.run(stop)

    asyncio.run(run())
    say(f"stopped: {', '.join(f'{v:,} {k}' for k, v in device_agent.stats.items())}")
