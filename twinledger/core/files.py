"""Files, opened so that a symbolic link or a planted file cannot redirect them.

Small files that must survive a crash whole are written beside, flushed, then renamed.
A file is read from a directory others may write (a watched directory) only if it is a
regular file at open time, not a link; a temporary file is created fresh, never opened
through a link someone planted at its name. Every file is readable by its owner only
unless a caller says more.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from twinledger.errors import TwinledgerError

NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


class UnsafeFile(TwinledgerError):
    code = "unsafe_file"


def create_new(path: Path, mode: int = 0o600) -> BinaryIO:
    """``path`` opened for writing as a new file: never an existing one, never through a link."""
    return os.fdopen(os.open(path, NEW, mode), "wb")


def create_fresh(path: Path, mode: int = 0o600) -> BinaryIO:
    """Like ``create_new``, for a scratch name (``.x.part``, ``x.tmp``) a crash may have
    left behind: whatever is there — a stale file or a planted link — is removed first
    (removing a link does not follow it)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return create_new(path, mode)


def read_regular(path: Path, limit: int = -1) -> tuple[bytes, os.stat_result]:
    """The bytes of ``path`` (at most ``limit`` + 1 of them, if given) and its status, if
    at the moment it is opened it is a regular file and not a link (a link swapped in
    after a directory scan is refused, and a FIFO cannot block the reader)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise UnsafeFile(f"{path.name}: not opened ({exc.strerror or exc}); only regular files are read") from None
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise UnsafeFile(f"{path.name} is not a regular file; only regular files are read")
        return handle.read(limit + 1 if limit >= 0 else -1), status


def replace_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash at any point leaves the old file or
    the new one, never a torn one; readable by the owner only unless ``mode`` says more."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with create_fresh(temporary, mode) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
