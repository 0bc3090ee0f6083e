"""The lock that makes one process build a `--cache disk` store (data/cache.py).

`fcntl.flock` on a file in the cache folder: the ranks of a torchrun job, several runs, or
several machines whose cache folder is one shared filesystem (NFSv4 and Lustre carry flock
between clients; Linux's NFS client maps it to a byte-range lock) serialize their builds of a
place; a process that finds the lock held waits, then opens the store the holder finished.
The lock is released when its file descriptor closes, so a killed builder never leaves it held.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from cnncli.errors import RuntimeFailure


@contextlib.contextmanager
def build_lock(root: Path, where: str, waiting: Callable[[Path], None] | None = None):
    """Hold the exclusive lock of place `where` (a file in `root`, kept: removing a lock file
    that another process waits on would let a third take a new one); `waiting(path)` is called
    once when another process holds it, before blocking until it is released."""
    import fcntl

    path = root / f".{where}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RuntimeFailure(f"--cache disk: cannot create the lock {path}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting(path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # a filesystem without locks: say so rather than build twice unseen
            raise RuntimeFailure(f"--cache disk: cannot lock {path}: {e.strerror or e} (the folder's "
                                 "filesystem has no file locks; set XDG_CACHE_HOME to a local folder)") from None
        yield path
    finally:
        os.close(fd)  # releases the lock
