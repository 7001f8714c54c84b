"""Start node processes and wait until they serve (used by the demo, benchmarks and tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from twinledger.cli.client import NodeClient, NodeUnreachable
from twinledger.config import load_config, read_run_file
from twinledger.errors import TwinledgerError


@dataclass
class NodeProcess:
    home: Path
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

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


def start_node(home: Path, timeout: float = 60.0) -> NodeProcess:
    """Start ``twinledger node start --home HOME`` and return once its API answers."""
    config = load_config(home)
    config.run_file.unlink(missing_ok=True)
    log_path = home / "node.log"
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(
        [sys.executable, "-m", "twinledger", "node", "start", "--home", str(home)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
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
