"""Shared fixtures: real node processes, a real PostgreSQL server, fresh homes."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from twinledger.config import NodeConfig, init_home, load_config
from twinledger.launcher import NodeProcess, start_node
from twinledger.services.remote import NodeClient


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed; `make test` installs it (apt-get install postgresql)")
    return found[-1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server on a private Unix socket; yields a base connection URL."""
    root = Path(tempfile.mkdtemp(prefix="twinledger-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = "postgres" if _has_user("postgres") else "nobody"
        shutil.chown(root, user)
        run_as = ["runuser", "-u", user, "--"]
    data = root / "data"
    subprocess.run([*run_as, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([*run_as, _pg_bin("pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"),
                    "-o", f"-k {root} -c listen_addresses='' -c fsync=on", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql://postgres@/postgres?host={root}"
    finally:
        subprocess.run([*run_as, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="session")
def postgres_database(postgres_server: str) -> Iterator[object]:
    """Factory of fresh, empty databases on the test server."""
    import psycopg

    counter = iter(range(1_000_000))

    def create() -> str:
        name = f"tl_{os.getpid()}_{next(counter)}"
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return postgres_server.replace("/postgres?", f"/{name}?")

    yield create


@pytest.fixture
def home_factory(tmp_path: Path):
    def make(org: str = "acme", **kwargs) -> NodeConfig:
        kwargs.setdefault("api_port", 0)
        kwargs.setdefault("block_interval_ms", 50)
        return init_home(tmp_path / f"{org}-{kwargs.get('node', 'node-1')}", org, **kwargs)

    return make


@pytest.fixture(scope="module")
def running_node(tmp_path_factory) -> Iterator[tuple[NodeProcess, NodeConfig, NodeClient]]:
    """One real node process shared by a test module."""
    home = tmp_path_factory.mktemp("node") / "home"
    init_home(home, "acme", api_port=0, block_interval_ms=50)
    node = start_node(home)
    config = load_config(home)
    client = NodeClient(config)
    try:
        yield node, config, client
    finally:
        client.close()
        node.stop()


LOG_TAIL_LINES = 60


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that ran node processes shows the end of each node's log: a failure in
    CI is otherwise a timeout that says nothing of what the nodes were doing."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        for home in getattr(value, "homes", None) or ():
            log = Path(home) / "node.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                report.sections.append((f"{Path(home).name}/node.log (last {len(tail)} lines)", "\n".join(tail)))
