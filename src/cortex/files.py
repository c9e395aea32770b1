"""Reading files that a user or a copied folder hands us: regular files only, never more than a bound.

`Path.read_text` on a FIFO blocks forever (a thread of the pool with it, and 8 of them stop the
server), and on a 10 GB sparse file reads 10 GB. Here the file is opened without blocking, checked to
be a regular file by `fstat` on the open descriptor (no race with a swap after a check), and refused
beyond `limit` bytes before anything is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cortex.errors import InvalidModelFile


def read_regular_file(path: Path, limit: int, *, param: str | None = "model_path") -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes, else InvalidModelFile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidModelFile(f"Cannot read {path.name}: {exc.strerror}", param=param) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidModelFile(f"{path.name} is not a regular file", param=param)
        if st.st_size > limit:
            raise InvalidModelFile(
                f"{path.name} is {st.st_size} bytes, over the limit of {limit} bytes for this file", param=param
            )
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise InvalidModelFile(f"Cannot read {path.name}: {exc.strerror}", param=param) from exc
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew while we read it
        raise InvalidModelFile(f"{path.name} is over the limit of {limit} bytes for this file", param=param)
    return data


def is_regular_file(path: Path) -> bool:
    """True for a regular file (symlinks followed); False for FIFOs, devices, folders, or nothing."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False
