"""CIFAR-10's "python version" batches, read with a restricted unpickler.

The batches (`data_batch_1`..`data_batch_5`, `test_batch`, `batches.meta`) are pickles written
by Python 2. A pickle can call any importable function while it loads, so a file from
somewhere else could run `os.system`. `RestrictedUnpickler` resolves only the few globals that
rebuild a numpy array and refuses every other one before anything is called; the loaded
object is then checked to be the expected dict of bytes keys, an (N, 3072) uint8 array and a
list of labels.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import InputError

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
FOLDER_NAME = "cifar-10-batches-py"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# The original files are at most ~31 MB each; refuse to even try something far larger.
MAX_FILE_BYTES = 512 << 20


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes: text to latin-1 bytes, nothing else."""
    if not isinstance(obj, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(obj, "latin1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only names a CIFAR batch needs: numpy's array-rebuilding helpers, under both spellings.

    numpy 1.x pickles name `numpy.core.*`, numpy 2.x `numpy._core.*`; we map both to the
    functions of the installed numpy without importing the deprecated `numpy.core` alias.
    `_frombuffer` appears in pickles of protocol 5 (re-saved batches); it only wraps bytes.
    """
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays, dicts, lists, bytes and numbers, and nothing else."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self.source = source
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise InputError(
                f"{self.source}: refuses to load: the file would call {module}.{name}, and a CIFAR "
                f"batch only needs numpy arrays (is it really a CIFAR-10 python batch?)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise InputError(f"{self.source}: refuses to load: the file uses persistent references")


def restricted_load(path: str | Path) -> Any:
    """Load a pickle file allowing only numpy arrays and plain containers; InputError otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"{path}: {size} bytes is far larger than a CIFAR-10 batch; refusing to read it")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001  (any malformed pickle: truncated, wrong opcodes, bad array state)
        raise InputError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from None


def _key(d: dict, key: str) -> Any:
    """CIFAR keys are bytes (Python 2 str); accept str keys too (a batch re-saved by Python 3)."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def read_batch(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: images uint8 (N, 3, 32, 32) and labels int64 (N,), validated."""
    path = Path(path)
    batch = restricted_load(path)
    if not isinstance(batch, dict):
        raise InputError(f"{path}: expected a dict with 'data' and 'labels', got {type(batch).__name__}")
    data, labels = _key(batch, "data"), _key(batch, "labels")
    if data is None or labels is None:
        keys = ", ".join(sorted(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k) for k in batch))
        raise InputError(f"{path}: expected keys 'data' and 'labels', found: {keys or 'none'}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InputError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {what}")
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise InputError(f"{path}: 'labels' must be a list of integers")
    if len(labels) != len(data):
        raise InputError(f"{path}: {len(data)} images but {len(labels)} labels")
    label_array = np.asarray(labels, dtype=np.int64)
    bad = np.flatnonzero((label_array < 0) | (label_array >= num_classes))
    if len(bad):
        raise InputError(f"{path}: label {labels[bad[0]]} at position {bad[0]} is out of range 0..{num_classes - 1}")
    # each row is 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32
    return data.reshape(-1, 3, 32, 32), label_array


def read_class_names(folder: Path) -> list[str]:
    """Class names from batches.meta when present and sane, else the standard ten."""
    path = folder / META_FILE
    if not path.exists():
        return list(CLASS_NAMES)
    meta = restricted_load(path)
    names = _key(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, (bytes, str)) for n in names):
        raise InputError(f"{path}: expected 'label_names', a list of 10 class names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def missing_files(folder: Path) -> list[str]:
    return [name for name in TRAIN_BATCHES + [TEST_BATCH] if not (folder / name).is_file()]


def read_cifar10_folder(folder: str | Path):
    """All of `cifar-10-batches-py/`: (train images, train labels, test images, test labels, names)."""
    folder = Path(folder)
    missing = missing_files(folder)
    if missing:
        raise InputError(f"{folder}: incomplete CIFAR-10 folder, missing {', '.join(missing)}")
    names = read_class_names(folder)
    train = [read_batch(folder / name) for name in TRAIN_BATCHES]
    test_images, test_labels = read_batch(folder / TEST_BATCH)
    train_images = np.concatenate([t[0] for t in train])
    train_labels = np.concatenate([t[1] for t in train])
    return train_images, train_labels, test_images, test_labels, names
