"""The output-path policy: a command writes only files it owns.

- A file output (`--out`, `--plot`, `--predictions`, ...) may replace an existing file only when
  that file is of the kind this command writes (a PNG for a picture, a cnncli ONNX file for
  `export --format onnx`, ...) and is not one of a run's own files; anything else is refused
  with one line (exit 2) unless `--force`. A folder, FIFO, device node or socket in its place
  is never replaced, not even with `--force` (so `--out /dev/null` is refused too: cnncli
  writes atomically, by renaming a new file over the old one, which would turn the device into
  a regular file). The folder a file goes into must exist: a file output creates no folders.
- A run folder (train, finetune; tune's study folder) is marked at creation by `.cnncli-run`, a
  small JSON file naming the command. A command writes a run only into a new or empty folder, or
  a folder that is a run of the same command; a folder holding anything else is refused unless
  `--force`. Runs made before the marker existed are recognised by `train_state.safetensors`.
- While a run trains, its marker is held with `fcntl.flock` (released by the kernel on exit, even
  on SIGKILL): a second `train --out` or `--resume` of the same folder refuses with one line;
  readers (`eval`, `export`, `viz` of the run) take no lock.

`--force` reaches the library through `forced()`, a context the CLI opens around a command.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import stat
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cnncli.errors import InputError

MARKER = ".cnncli-run"
OLD_RUN_FILE = "train_state.safetensors"  # what marked a run before the marker existed
# the files a run writes itself: no other command replaces them (unless --force)
RUN_FILES = frozenset({MARKER, "model.safetensors", "last.safetensors", OLD_RUN_FILE, "config.toml",
                       "metrics.jsonl", "curves.png", "confusion.png", "eval.json", "results.csv", "study.db",
                       "best.toml"})

_force: contextvars.ContextVar[bool] = contextvars.ContextVar("cnncli_force", default=False)


@contextlib.contextmanager
def forced(force: bool) -> Iterator[None]:
    """Within this block, an existing output of another kind may be replaced (`--force`)."""
    token = _force.set(bool(force))
    try:
        yield
    finally:
        _force.reset(token)


def force_given() -> bool:
    return _force.get()


# ---------------------------------------------------------------------------- kinds of files

@dataclass(frozen=True)
class Kind:
    """A kind of file a command writes: what it is called, and how an existing one is recognised."""

    name: str
    recognise: Callable[[Path], bool]


def _starts_with(magic: bytes) -> Callable[[Path], bool]:
    def check(path: Path) -> bool:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic

    return check


def _contains(needle: bytes, first: bytes = b"") -> Callable[[Path], bool]:
    """The file starts with `first` and holds `needle` anywhere (read through mmap, not loaded)."""
    import mmap

    def check(path: Path) -> bool:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return False
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return m[:len(first)] == first and m.find(needle) >= 0

    return check


def _cnncli_safetensors(path: Path) -> bool:
    """A model file cnncli wrote (checkpoint or export): cnncli metadata, not a training state."""
    from cnncli.checkpoint import META_KEY, read_header
    from cnncli.errors import CnnError

    try:
        _tensors, metadata = read_header(path)
        doc = json.loads(metadata.get(META_KEY, "null"))
    except (CnnError, OSError, ValueError):
        return False
    return isinstance(doc, dict) and "train_state" not in doc


def _torchscript(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/extra/cnncli.json") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _openvino_bin(path: Path) -> bool:
    """IR weights have no header: they are cnncli's when the .xml beside them is."""
    xml = path.with_suffix(".xml")
    return xml.is_file() and OPENVINO_XML.recognise(xml)


def _predictions_csv(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.readline().rstrip(b"\r\n") == b"id,dataset,split,true,predicted,prob_true,prob_predicted,loss,top5"


def _never(_path: Path) -> bool:
    return False


PNG = Kind("a PNG picture", _starts_with(b"\x89PNG\r\n\x1a\n"))
NPY = Kind("a .npy array", _starts_with(b"\x93NUMPY"))
PREDICTIONS_CSV = Kind("a predictions CSV written by 'cnncli eval --predictions'", _predictions_csv)
MODEL_SAFETENSORS = Kind("a cnncli model file (.safetensors)", _cnncli_safetensors)
# ONNX metadata_props entry with the key "cnncli" (protobuf: field 1, length 6); ir_version first
ONNX = Kind("an ONNX file exported by cnncli", _contains(b"\n\x06cnncli", first=b"\x08"))
TORCHSCRIPT = Kind("a TorchScript file exported by cnncli", _torchscript)
OPENVINO_XML = Kind("an OpenVINO IR exported by cnncli", _contains(b"cnncli", first=b"<?xml"))
OPENVINO_BIN = Kind("the weights of an OpenVINO IR exported by cnncli", _openvino_bin)
SQLITE = Kind("an SQLite database", _starts_with(b"SQLite format 3\x00"))
NEW_FILE = Kind("a file this command may replace", _never)  # new-model: any existing file needs --force
TUNE_BEST = Kind("a tune best.toml", _starts_with(b"# the best trial"))


# ---------------------------------------------------------------------------- one output file

def _special(mode: int) -> str | None:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return None


def check_file(path: str | os.PathLike, kind: Kind, flag: str = "--out", force: bool | None = None) -> Path:
    """Refuse (InputError, one line) an output file this command may not write; return it.

    Call it before the work, so that a refused path is the only thing the user sees.
    """
    path = Path(path)
    force = force_given() if force is None else force
    try:
        st = os.stat(path)  # follows a symbolic link: what would be written is its target
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError(f"{flag} {path} is a link to nothing; choose another path") from None
        parent = path.parent
        if not parent.exists():
            raise InputError(f"{flag} {path}: the folder {parent} does not exist; create it first "
                             "or choose another path") from None
        if not parent.is_dir():
            raise InputError(f"cannot write {path}: {parent} is not a folder; choose another place "
                             "to write to") from None
        return path
    except OSError as e:  # e.g. a component that is a file: ENOTDIR
        raise InputError(f"cannot write {path}: {e.strerror or e}; choose another place to write to") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{flag} {path} exists and is not a file but a folder; give a file name")
    special = _special(st.st_mode)
    if special is not None or not stat.S_ISREG(st.st_mode):
        raise InputError(f"{flag} {path} is a {special or 'special file'}: cnncli never writes over special "
                         "files, not even with --force; choose a regular file")
    real = path.resolve() if path.is_symlink() else path  # a link into a run is the run's file
    if real.name == MARKER:
        raise InputError(f"{flag} {path} is the marker and lock of the run in {real.parent}: it is never "
                         "replaced, not even with --force; choose another path")
    if force:
        return path
    owner = run_of(real.parent)
    if owner is not None and real.name in RUN_FILES and not _held_here(real.parent):
        what = f"the {owner} run" if owner else "the run"
        raise InputError(f"{flag} {path} is a file of {what} in {real.parent}; choose another path "
                         "(or --force to replace it)")
    try:
        same = kind.recognise(path)
    except OSError:
        same = False
    if not same:
        raise InputError(f"{flag} {path} exists and is not {kind.name}; choose another path "
                         "(or --force to replace it)")
    return path


def write_file(path: str | os.PathLike, data: bytes, kind: Kind, flag: str = "--out") -> Path:
    """`check_file`, then the atomic write (through a symbolic link, which stays a link)."""
    from cnncli.fileio import atomic_write_bytes

    path = check_file(path, kind, flag)
    atomic_write_bytes(path.resolve() if path.is_symlink() else path, data)
    return path


def check_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output folder (explain --out, datasets show --export): created if missing; not a file."""
    from cnncli.fileio import ensure_writable_dir

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    return ensure_writable_dir(path)


# ---------------------------------------------------------------------------- run folders

def run_of(folder: str | os.PathLike) -> str | None:
    """The command whose run `folder` is ('train', 'finetune', 'tune'), '' for a run that does not
    say (made before the marker existed, or a marker cut short), None when it is not a run."""
    folder = Path(folder)
    marker = folder / MARKER
    try:
        if marker.is_file():
            try:
                doc = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError):
                return ""
            return str(doc.get("command", "")) if isinstance(doc, dict) else ""
        if (folder / OLD_RUN_FILE).is_file():
            return ""
    except OSError:
        return None
    return None


def _contents(folder: Path) -> list[str]:
    """What a folder holds, leaving out what a run may leave behind without being one."""
    import re

    return sorted(p.name for p in folder.iterdir()
                  if p.name != MARKER and not re.fullmatch(r"\..+\.[A-Za-z0-9_]{8}\.tmp", p.name)
                  and not p.name.startswith(".probe"))


# folders this process holds the lock of (its own runs, which it may write whole)
_HELD: weakref.WeakValueDictionary[str, RunLock] = weakref.WeakValueDictionary()


# study folders this process works in (shared with other processes of the study: no lock)
_STUDIES: set[str] = set()


def _held_here(folder: Path) -> bool:
    try:
        key = str(folder.resolve())
    except OSError:
        return False
    return key in _HELD or key in _STUDIES


class RunLock:
    """The lock on a run folder, held for as long as this object lives (or `release()`)."""

    def __init__(self, folder: Path, command: str, fd: int):
        self.folder, self.command, self._fd = folder, command, fd
        self._key = str(folder.resolve())
        _HELD[self._key] = self
        self.made: list[Path] = []  # folders this claim created, the run's first (claim_new_run)
        self.scratch: set[str] = set()  # files the run wrote that hold no result (its config.toml)

    def discard_if_unused(self) -> bool:
        """After a run failed: remove the folders this claim created if the run folder holds
        nothing but its marker and `scratch` files (a parent only once it is empty). Anything
        else in it, or a folder the claim did not create, stays as it is. True if removed."""
        if not self.made or self._fd is None:
            return False
        folder = self.made[0]
        try:
            names = {p.name for p in folder.iterdir()}
            if MARKER not in names or not names <= {MARKER} | self.scratch:
                return False
            for name in sorted(names - {MARKER}):
                (folder / name).unlink()
            (folder / MARKER).unlink()
            self.release()
            for made in self.made:  # the run folder, then the parents the claim created
                made.rmdir()  # refuses a folder that is not empty: what another process put there stays
        except OSError:
            return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
                if _HELD.get(self._key) is self:
                    del _HELD[self._key]

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


def _in_use_error(folder: Path, flag: str) -> InputError:
    return InputError(f"{flag} {folder} is in use: another cnncli process is writing this run; "
                      "wait for it to end or choose another folder")


def _refuse_in_use(folder: Path, flag: str) -> None:
    """Say 'in use' first when another process holds the run (probing writes nothing)."""
    import fcntl

    if _held_here(folder):
        return
    try:
        fd = os.open(folder / MARKER, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use_error(folder, flag) from None
    finally:
        os.close(fd)  # closing drops the probe's shared lock


def _marker_text(command: str) -> str:
    return json.dumps({"cnncli": "run", "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"


def _create_marker(folder: Path, command: str) -> None:
    """The marker, whole from its first moment (a temporary file linked into place: no kill leaves
    it empty); if another process made it first, theirs stays."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f"{MARKER}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, _marker_text(command).encode("utf-8"))
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, folder / MARKER)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def _lock(folder: Path, command: str, flag: str) -> RunLock:
    """flock the folder's marker (created if missing) and write what the run is into it."""
    import fcntl

    previous = _HELD.get(str(folder.resolve()))
    if previous is not None:  # this process's own earlier run of the folder (it ended): let it go
        previous.release()
    try:
        if not (folder / MARKER).exists():
            _create_marker(folder, command)
        fd = os.open(folder / MARKER, os.O_RDWR)
    except OSError as e:
        raise InputError(f"cannot write {folder}: {e.strerror or e}; choose another place to write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _in_use_error(folder, flag) from None
    if run_of(folder) != command:  # a marker cut short, or --force over another command's run
        # written in place (not renamed): the lock is on this file's inode
        text = _marker_text(command)
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode("utf-8"), 0)
        os.fsync(fd)
    return RunLock(folder, command, fd)


def check_new_run(folder: str | os.PathLike, command: str, flag: str = "--out") -> Path:
    """Refuse a folder a new run of `command` may not be written into (nothing is written)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    if not path.is_dir():
        _check_can_create(path)
        return path
    _check_can_create(path)
    _refuse_in_use(path, flag)
    owner = run_of(path)
    if (path / OLD_RUN_FILE).exists():
        raise InputError(f"{path} already holds a run; resume it with --resume {path} or choose another {flag}")
    if owner is None:
        held = _contents(path)
        if held and not force_given():
            listed = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise InputError(f"{flag} {path} is not empty and is not a cnncli run (it holds {listed}); "
                             f"choose a new or empty folder (or --force to write into it)")
    elif owner and owner != command and not force_given():
        raise InputError(f"{flag} {path} is a cnncli {owner} run, not a {command} run; choose another {flag}")
    return path


def _check_can_create(path: Path) -> None:
    """The folder (or the nearest one above it that exists) can be written: said now, not after
    the data is loaded (nothing is created here)."""
    import errno

    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise InputError(f"cannot write {path}: {os.strerror(errno.ENOTDIR)} ({ancestor} is a file); "
                         "choose another place to write to")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: {ancestor} is not writable (permission denied or a "
                         "read-only file system); choose another place to write to")


def claim_new_run(folder: str | os.PathLike, command: str, flag: str = "--out",
                  made_here: bool = False) -> RunLock:
    """A new run of `command` in `folder`: checked, created, locked and marked. The lock knows
    which folders it created (`made_here`: the caller just created `folder` itself), so that a
    run that fails before writing anything can take them away again (RunLock.discard_if_unused)."""
    from cnncli.fileio import ensure_writable_dir

    path = check_new_run(folder, command, flag)
    missing, ancestor = [], path  # what ensure_writable_dir is about to create, deepest first
    while not ancestor.exists() and ancestor != ancestor.parent:
        missing.append(ancestor)
        ancestor = ancestor.parent
    if made_here and not missing:
        missing = [path]
    ensure_writable_dir(path)
    lock = _lock(path, command, flag)
    lock.made = missing
    try:
        check_new_run(path, command, flag)  # again under the lock: another writer may have just finished
    except InputError:
        lock.release()
        raise
    return lock


def claim_resumed_run(folder: str | os.PathLike, command: str) -> RunLock:
    """`--resume folder`: it must be a run (of this command, where it says), not in use."""
    path = Path(folder)
    owner = run_of(path)
    if owner is None:
        raise InputError(f"{path} is not a cnncli run (no {MARKER} or {OLD_RUN_FILE} in it)")
    _refuse_in_use(path, "--resume")
    if owner and owner != command:
        raise InputError(f"{path} is a {owner} run; continue it with 'cnncli {owner} --resume {path}'")
    return _lock(path, command, "--resume")


def new_run_folder(name: str, root: str | os.PathLike = "runs") -> Path:
    """`runs/<name>/`, or `runs/<name>-2/` ... when the name is taken: created here, so that two
    processes choosing at once get two folders."""
    from cnncli.fileio import ensure_writable_dir

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "run"
    base = Path(root) / safe
    ensure_writable_dir(base.parent)
    n = 1
    while True:
        path = base if n == 1 else base.with_name(f"{safe}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
        except OSError as e:
            raise InputError(f"cannot write {path}: {e.strerror or e}; choose another place to write to") from None


def claim_study_folder(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """tune's study folder: shared by the processes of one study (no lock), marked as tune's."""
    from cnncli.fileio import atomic_write_text, ensure_writable_dir

    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    if path.is_dir():
        owner = run_of(path)
        held = _contents(path)
        old_study = "study.db" in held or any(h.startswith("trial-") for h in held)
        if owner is None and held and not old_study and not force_given():
            listed = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise InputError(f"{flag} {path} is not empty and is not a cnncli study (it holds {listed}); "
                             "choose a new or empty folder (or --force to write into it)")
        if owner and owner != "tune" and not force_given():
            raise InputError(f"{flag} {path} is a cnncli {owner} run, not a tune study; choose another {flag}")
    ensure_writable_dir(path)
    if run_of(path) != "tune":
        atomic_write_text(path / MARKER, _marker_text("tune"))
    _STUDIES.add(str(path.resolve()))
    return path
