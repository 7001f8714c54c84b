"""Files opened so that a link or a planted file cannot redirect them (security review,
finding 8): the watched directory reads only what is a regular file when it is opened,
and temporary files are created fresh, never written through a link left at their name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from network_helpers import free_port_block

from twinledger.config import init_network
from twinledger.core.files import UnsafeFile, create_fresh, create_new, read_regular, replace_durably
from twinledger.ingest.directory import DirectoryIngest, DirectoryJournal, FileRefused


def test_a_temporary_file_is_never_written_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim.key"
    victim.write_bytes(b"precious")
    part = tmp_path / ".report.pdf.part"
    part.symlink_to(victim)
    with create_fresh(part) as sink:
        sink.write(b"downloaded")
    assert victim.read_bytes() == b"precious" and not part.is_symlink() and part.read_bytes() == b"downloaded"
    assert part.stat().st_mode & 0o777 == 0o600

    (tmp_path / "state.tmp").symlink_to(victim)
    replace_durably(tmp_path / "state", b"new state")
    assert victim.read_bytes() == b"precious" and (tmp_path / "state").read_bytes() == b"new state"

    with pytest.raises(FileExistsError):  # a share file or token file is never written over anything
        create_new(victim)
    (tmp_path / "share").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        create_new(tmp_path / "share")
    assert not (tmp_path / "nowhere").exists()


def test_only_a_regular_file_is_read(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the node")
    (tmp_path / "link").symlink_to(secret)
    os.mkfifo(tmp_path / "fifo")
    for name in ("link", "fifo"):
        with pytest.raises(UnsafeFile, match="only regular files are read"):
            read_regular(tmp_path / name)
    data, status = read_regular(secret, limit=3)
    assert data == b"not " and status.st_size == 16


def test_the_watched_directory_refuses_a_file_swapped_for_a_link_after_its_scan(tmp_path):
    watched = tmp_path / "outbox"
    watched.mkdir()
    (watched / "batch.csv").write_bytes(b"1,2,3\n")
    secret = tmp_path / "operator.key"
    secret.write_bytes(b"the operator's key")
    watcher = DirectoryIngest(watched, "*.csv", None, DirectoryJournal(tmp_path / "dir.db"), settle=0)  # type: ignore[arg-type]
    assert watcher._candidates({}) == ["batch.csv"]
    assert watcher._record(watched / "batch.csv", 1, 100).payload == b"1,2,3\n"

    (watched / "batch.csv").unlink()  # between the scan and the read, a link takes its place
    (watched / "batch.csv").symlink_to(secret)
    with pytest.raises(FileRefused, match="only regular files are read"):
        watcher._record(watched / "batch.csv", 1, 100)
    (watched / "big.csv").write_bytes(b"x" * 101)
    with pytest.raises(FileRefused, match="more than the 100 bytes"):
        watcher._record(watched / "big.csv", 2, 100)
    assert Path(secret).read_bytes() == b"the operator's key"


def test_homes_and_the_consortium_ca_are_their_owner_s_alone(tmp_path):
    """Security review: homes were 0755. The consortium CA's key stays out of every home."""
    init_network(tmp_path / "net", ["plantco", "rival"], base_port=free_port_block(6))
    assert (tmp_path / "net" / "consortium" / "consortium-ca.key").exists()
    for directory in ("consortium", "plantco", "plantco/keys", "plantco/data", "plantco/run", "rival/certs"):
        assert (tmp_path / "net" / directory).stat().st_mode & 0o777 == 0o700, directory
    for home in ("plantco", "rival"):
        assert not [p for p in (tmp_path / "net" / home).rglob("*") if "consortium-ca.key" in p.name or p.parent.name == "ca"]
        assert all(key.stat().st_mode & 0o777 == 0o600 for key in (tmp_path / "net" / home / "keys").iterdir())
