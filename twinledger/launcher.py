"""Start node processes and wait until they serve (used by the demo, benchmarks and tests)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from twinledger.config import live_node_pid, load_config, read_run_file
from twinledger.errors import TwinledgerError
from twinledger.services.remote import NodeClient, NodeUnreachable


@dataclass
class NodeProcess:
    home: Path
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def headers(self) -> dict[str, str]:
        """What authenticates a request to this node's API as its home's operator."""
        return {"authorization": f"Bearer {load_config(self.home).api_token()}"}

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        self.process.kill()
        self.process.wait()


def start_node(home: Path, timeout: float = 60.0, detach: bool = False) -> NodeProcess:
    """Start ``twinledger node start --home HOME`` and return once its API answers.
    A detached node runs in its own session, so it outlives the command that started it."""
    config = load_config(home)
    config.run_file.unlink(missing_ok=True)
    log_path = home / "node.log"
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(
        [sys.executable, "-m", "twinledger", "node", "start", "--home", str(home)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=detach,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise TwinledgerError(f"node exited with code {process.returncode}: {tail[0]}")
        run = read_run_file(config)
        if run is not None and run.get("pid") == process.pid:
            client = NodeClient(config, timeout=2)
            try:
                client.health()
                return NodeProcess(home, process, client.url, log_path)
            except NodeUnreachable:
                pass
            finally:
                client.close()
        time.sleep(0.05)
    process.kill()
    raise TwinledgerError(f"node did not start within {timeout:.0f} s (log: {log_path})")


# -- a local network: one node per organisation ----------------------------------------------------

NETWORK_FILE = "network.json"


def network_homes(directory: Path) -> list[tuple[str, Path]]:
    """(organisation, home) of each node of the local network in ``directory``."""
    try:
        doc = json.loads((directory / NETWORK_FILE).read_text())
        return [(org, directory / org) for org in doc["organisations"]]
    except FileNotFoundError:
        raise TwinledgerError(f"{directory} holds no network; run `twinledger network init --dir {directory}`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TwinledgerError(f"cannot read {directory / NETWORK_FILE}: {exc}") from exc


def write_network_file(directory: Path, organisations: list[str], consensus: str) -> None:
    (directory / NETWORK_FILE).write_text(json.dumps({"organisations": organisations, "consensus": consensus}, indent=2))


def running_pid(home: Path) -> int | None:
    """The pid of the node running from ``home``, if its run file names a live process."""
    return live_node_pid(load_config(home))


def stop_pid(pid: int, timeout: float = 15.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; True if it stopped gracefully."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return False


def free_port_block(count: int, host: str = "127.0.0.1", start: int = 20000) -> int:
    """The first port of ``count`` consecutive free ports, below the ephemeral range where
    outgoing connections would take ports from under a starting node."""
    for base in range(start, 32000 - count, count + 3):
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise TwinledgerError(f"no {count} consecutive free ports on {host}")
