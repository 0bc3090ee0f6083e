"""Atomic file writes: a file is either its old complete version or its new complete version.

Data goes to a temporary file in the same folder, is flushed to disk, and replaces the target
with one rename, so a crash (even SIGKILL) or a full disk in the middle never leaves a torn
file behind.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

from cnncli.errors import InputError, RuntimeFailure


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(path, e) from e
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a run's files are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(folder)
    except OSError as e:
        raise _write_error(path, e) from e
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writes killed midway (SIGKILL, power loss) left in `folder`.

    They are hidden (`.NAME.XXXXXXXX.tmp`, mkstemp's pattern above) and never read; call this
    only where no other process is writing, e.g. when a run is resumed.
    """
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if re.fullmatch(r"\..+\.[A-Za-z0-9_]{8}\.tmp", path.name):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line (metrics.jsonl): rewritten atomically so a crash never leaves half a line."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    atomic_write_bytes(path, old + line.rstrip("\n").encode("utf-8") + b"\n")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(path: Path, e: OSError) -> Exception:
    # ENOENT: a folder that cannot be created where it was asked for (e.g. under /proc)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENOENT):
        return InputError(f"cannot write {path}: {e.strerror or e}; choose another place to write to")
    if e.errno == errno.ENOSPC:
        return RuntimeFailure(f"could not write {path}: no space left on device (the previous version is intact)")
    return RuntimeFailure(f"could not write {path}: {e.strerror or e}")


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create a folder (and parents) or fail with one line saying why."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe", delete=True)
        probe.close()
    except OSError as e:
        raise _write_error(path, e) from e
    return path
