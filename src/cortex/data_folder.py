"""The data folder as the server and the CLI share it: its identity, its server lock, whether it can be written.

A server record (server.json) alone cannot say which folder a server serves: `cp -r` copies it, and a
pid can be reused. So a server reports the identity of its folder on /healthz, and holds an exclusive
lock on `server.lock` in the folder for its whole life. Neither survives a copy: the identity includes
the folder's inode, and a lock belongs to the open file, not to the copied bytes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import tempfile
import time
from pathlib import Path

LOCK_FILE = "server.lock"
_LOCK_TRIES = 20  # x 50 ms: a CLI probe (lock_holder) holds the lock for an instant only


class FolderInUse(Exception):
    """Another live server holds the data folder's lock."""


def folder_id(data_dir: Path) -> str:
    """An opaque id of the folder `data_dir` names: its real path, device and inode, hashed.

    A copy, or another folder moved to the same path, has another id. The hash keeps /healthz (open
    without a key) from showing the server's paths.
    """
    real = os.path.realpath(data_dir)
    st = os.stat(real)
    return hashlib.sha256(f"{real}\0{st.st_dev}\0{st.st_ino}".encode()).hexdigest()[:32]


def writable(*folders: Path) -> bool:
    """Whether this process can create files in each of `folders` that exists, found by trying:
    permission bits do not tell (root ignores them, a read-only mount overrides them)."""
    return all(_can_create_in(folder) for folder in folders if folder.is_dir())


def _can_create_in(folder: Path) -> bool:
    try:
        fd, name = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return False
        raise
    os.close(fd)
    os.unlink(name)
    return True


def lock_folder(data_dir: Path) -> int:
    """Take the folder's server lock and write this pid into it; returns the descriptor, which holds
    the lock until it is closed or the process ends.

    Only the holder may sweep the store's staging and trash folders: a second server for the same
    folder would otherwise delete a live import's staging folder at its start. Raises FolderInUse.
    """
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    for _ in range(_LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(0.05)
    else:
        holder = _read_pid(fd)
        os.close(fd)
        raise FolderInUse(f"another cortex server (pid {holder or 'unknown'}) serves {data_dir}")
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def lock_holder(data_dir: Path) -> int | None:
    """The pid of the server that holds the folder's lock (0 if it has not written it yet), or None
    when no process holds it. Probes with a shared lock held for an instant, never written."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd)
    else:
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0) or 0)
    except (OSError, ValueError):
        return 0
