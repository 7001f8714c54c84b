"""What the store and feed tests share: the CLI, and a four-organisation consortium whose
nodes are all store nodes with the background repair timer off (passes run when a test
asks, never in the middle of one)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from network_helpers import Network, make_network

from twinledger.config import load_config
from twinledger.services.remote import store_client

ORGANISATIONS = ("manufacturer", "owner", "maintainer", "auditor")
MANUFACTURER, OWNER, MAINTAINER, AUDITOR = range(4)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twinledger", *args], capture_output=True, text=True, timeout=180)


def ok(*args: str) -> Any:
    done = cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def store_consortium(directory: Path) -> Iterator[Network]:
    network = make_network(directory)
    for path in network.homes:
        doc = tomllib.loads((path / "node.toml").read_text())
        doc["storage"]["repair_interval"] = 0
        (path / "node.toml").write_text(tomli_w.dumps(doc))
    try:
        for i in range(4):
            network.start(i)
        yield network
    finally:
        network.stop_all()


def home(network: Network, i: int) -> str:
    return str(network.homes[i])


def with_client(network: Network, i: int, work: Any) -> Any:
    """Run ``work(client)`` with a store client acting as organisation i's node."""
    config = load_config(network.homes[i])
    members = httpx.get(f"{network.url(i)}/v1/members", headers=network.headers(i), timeout=10).json()

    async def run() -> Any:
        async with store_client(config, members) as client:
            return await work(client)

    return asyncio.run(run())
