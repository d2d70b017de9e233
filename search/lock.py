"""One writer per index folder: an exclusive `flock` on `OUT/index.lock`, held for the whole run.

The kernel drops the lock when its process ends, however it ends, so a killed run never leaves a
stale lock behind. The file holds who took it (process id, host, time) for the error message.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from typing import Iterator

LOCK = "index.lock"


class IndexLockedError(RuntimeError):
    """Another process is writing the index folder."""


@contextmanager
def index_lock(index_dir: str) -> Iterator[None]:
    """Hold `index_dir`'s lock, or raise `IndexLockedError` naming the lock file and its holder."""
    os.makedirs(index_dir, exist_ok=True)
    path = os.path.join(index_dir, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise IndexLockedError(f"--index {index_dir} is being written by another index run ({holder} holds "
                                   f"{path}): wait for it to finish, or index into another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)   # releases the lock
