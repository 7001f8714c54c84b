"""Real multi-node networks on loopback for tests: homes from `init_network`, node
processes, a cuttable TCP proxy in front of each node, and helpers to load and compare."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from twinledger.config import init_network, load_config
from twinledger.core.encoding import encode
from twinledger.core.killpoints import ENVIRONMENT
from twinledger.core.types import Transaction, encode_transaction, sign_transaction
from twinledger.crypto.keys import SigningKey
from twinledger.errors import TwinledgerError
from twinledger.launcher import NodeProcess, free_port_block, start_node

OCTETS = {"content-type": "application/octet-stream"}
ORGS = ["manufacturer", "owner", "maintainer", "auditor"]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    """Poll ``condition`` until it gives something true, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class CuttableProxy:
    """Forwards TCP to one node; ``cut`` refuses and drops every connection to it and every
    connection from ``source_ip`` (the cut-off node's own outbound address)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.cut = False
        self.blocked_sources: set[str] = set()
        self._links: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = writer.get_extra_info("peername")[0]
        if self.cut or source in self.blocked_sources:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        if self.cut or source in self.blocked_sources:  # cut while connecting: set_cut could not see this link
            writer.close()
            up_writer.close()
            return
        for w in (writer, up_writer):
            self._links.add(w)
            w.source = source  # type: ignore[attr-defined]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._links.discard(writer)
        self._links.discard(up_writer)

    def set_cut(self, cut: bool, blocked_sources: set[str] | None = None) -> None:
        """Returns once the cut is in force: links are closed before anything else is read."""

        async def apply() -> None:
            self.cut = cut
            self.blocked_sources = set(blocked_sources or ())
            for w in list(self._links):
                if cut or getattr(w, "source", None) in self.blocked_sources:
                    w.close()

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(timeout=10)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@dataclass
class Network:
    directory: Path
    homes: list[Path]
    chain_id: str
    processes: dict[int, NodeProcess] = field(default_factory=dict)
    proxies: list[CuttableProxy] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)

    def start(self, i: int) -> NodeProcess:
        self.processes[i] = start_node(self.homes[i])
        return self.processes[i]

    def headers(self, i: int) -> dict[str, str]:
        """Authenticates a request to node ``i`` as its home's operator."""
        return {"authorization": f"Bearer {load_config(self.homes[i]).api_token()}"}

    def url(self, i: int) -> str:
        return self.processes[i].url

    def kill(self, i: int) -> None:
        self.processes.pop(i).kill()

    def start_armed(self, i: int, point: str) -> None:
        """Start node i armed to kill itself at ``point`` (``name[:n]``, see
        core/killpoints.py); start it as it was before; return once it died there."""
        os.environ[ENVIRONMENT] = point
        try:
            self.processes[i] = start_node(self.homes[i])  # clients may use it meanwhile
        except TwinledgerError as exc:  # it reached the point before its API answered
            assert "exited with code -9" in exc.message, exc.message
            return
        finally:
            del os.environ[ENVIRONMENT]
        process = self.processes[i].process
        try:
            code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node {i} never reached kill point {point}") from None
        finally:
            self.kill(i)
        assert code == -signal.SIGKILL, f"node {i} armed at {point} ended with code {code}"

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.stop()
        self.processes.clear()
        for proxy in self.proxies:
            proxy.close()

    def logs_with_tracebacks(self) -> list[Path]:
        """The node logs holding a traceback: a user would read them as a crash."""
        return [log for home in self.homes if (log := home / "node.log").exists() and "Traceback" in log.read_text()]

    def cut_off(self, i: int, cut: bool = True) -> None:
        """Isolate node i: nothing reaches it, nothing it sends arrives."""
        for j, proxy in enumerate(self.proxies):
            if j == i:
                proxy.set_cut(cut)
            else:
                proxy.set_cut(False, {self.hosts[i]} if cut else set())

    def health(self, i: int) -> dict:
        return httpx.get(f"{self.url(i)}/v1/health", headers=self.headers(i), timeout=10).json()

    def height(self, i: int) -> int:
        return self.health(i)["height"]

    def wait_height(self, i: int, height: int, timeout: float = 60) -> bool:
        """Long-poll the node for block ``height``; False if it does not arrive in time."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            response = httpx.get(f"{self.url(i)}/v1/blocks/{height}",
                                 headers=self.headers(i), params={"wait": str(min(left, 30))}, timeout=40)
            if response.status_code == 200:
                return True
        return False

    def block_hashes(self, i: int, up_to: int) -> list[tuple[str, str]]:
        """(block hash, state root) for heights 1..up_to on node i."""
        out = []
        for h in range(1, up_to + 1):
            header = httpx.get(f"{self.url(i)}/v1/blocks/{h}", headers=self.headers(i), timeout=10).json()["header"]
            out.append((header["hash"], header["state_root"]))
        return out

    def missing(self, i: int, txs: list[Transaction], timeout: float = 60) -> set[str]:
        """Hashes of ``txs`` not in node i's chain once it has committed them all or
        ``timeout`` passed, following the chain block by block (long polls, no sleeping)."""
        wanted = {tx.hash.hex() for tx in txs}
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url(i), headers=self.headers(i), timeout=40) as http:
            height = 1
            while wanted and (left := deadline - time.monotonic()) > 0:
                response = http.get(f"/v1/blocks/{height}", params={"wait": str(min(left, 30))})
                if response.status_code != 200:
                    continue
                wanted -= {tx["hash"] for tx in response.json()["transactions"]}
                height += 1
        return wanted

    def submit(self, i: int, txs: list[Transaction]) -> dict:
        body = encode([encode_transaction(tx) for tx in txs])
        return httpx.post(f"{self.url(i)}/v1/transactions/batch", content=body,
                          headers={**OCTETS, **self.headers(i)}, timeout=30).json()


def make_network(directory: Path, *, proxied: bool = False, orgs: list[str] = ORGS, consensus: str = "bft",
                 authority_signatures: int | None = None) -> Network:  # fmt: skip
    """Homes for a network on free loopback ports; with ``proxied``, node i listens on
    127.0.0.(i+2) and every peer reaches it through a cuttable proxy."""
    chain_id = "test-consortium"
    base = free_port_block(3 * len(orgs), start=20000 + 1000 * (os.getpid() % 10))
    init_network(directory, orgs, chain_id=chain_id, base_port=base, block_interval_ms=100, consensus=consensus,
                 authority_signatures=authority_signatures)  # fmt: skip
    homes = [directory / org for org in orgs]
    network = Network(directory, homes, chain_id)
    addresses = []
    for i in range(len(homes)):
        host = f"127.0.0.{i + 2}" if proxied else "127.0.0.1"
        network.hosts.append(host)
        addresses.append((host, base + 3 * i))
    if proxied:
        network.proxies = [CuttableProxy(address) for address in addresses]
    public = [p.address for p in network.proxies] if proxied else [f"{h}:{p}" for h, p in addresses]
    for i, home in enumerate(homes):
        doc = tomllib.loads((home / "node.toml").read_text())
        doc["p2p"].update(host=addresses[i][0], port=addresses[i][1], seeds=[a for j, a in enumerate(public) if j != i])
        if proxied:
            doc["p2p"]["advertise"] = public[i]
        doc["api"]["port"] = 0
        (home / "node.toml").write_text(tomli_w.dumps(doc))
        load_config(home)
    return network


class Load:
    """Signed transactions submitted in the background to some nodes; remembers what the
    API accepted."""

    def __init__(self, network: Network, targets: list[int], batch: int = 50) -> None:
        self.network = network
        self.targets = targets
        self.batch = batch
        self.key = SigningKey.generate()
        self.nonce = 0
        self.accepted: list[Transaction] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        turn = 0
        while not self._stop.is_set():
            target = self.targets[turn % len(self.targets)]
            turn += 1
            txs = [sign_transaction(self.key, chain_id=self.network.chain_id, nonce=self.nonce + k, contract="records",
                                    method="put", args={"payload": bytes(64)}, timestamp=int(time.time() * 1000))
                   for k in range(self.batch)]  # fmt: skip
            try:
                result = self.network.submit(target, txs)
            except (httpx.HTTPError, KeyError):
                self.errors += 1
                continue
            accepted = {r["hash"] for r in result.get("results", []) if r.get("status") in ("accepted", "duplicate")}
            self.accepted.extend(tx for tx in txs if tx.hash.hex() in accepted)
            self.nonce += self.batch
            self._stop.wait(0.05)
