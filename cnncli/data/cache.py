"""`--cache ram|disk`: image files decoded once, at the training resolution, into a uint8 store.

As Ultralytics' `cache=`: the first epoch (or run) decodes each file and scales it so that its
shorter side is `side` pixels (never up: a small image stays as it is; the aspect ratio is
kept), and every later read is a slice of one flat uint8 array instead of a JPEG decode.

- `disk`: a memory-mapped file in the cnncli cache folder (`cache_dir()/images/`), reused by
  later runs. Its name is a key of the file list, each file's size and mtime, the side and the
  format version: a changed, added or removed file gives another key, and the store is built
  again (the old one of the same folder is removed then). It is built in a temporary folder
  and renamed when complete, so a killed writer leaves no half store that a later run could
  read (its temporary folder is removed by the next build). One process builds a store: the
  builders of one place take an exclusive lock (`fcntl.flock` on `.<place>.lock` in the cache
  folder), so the ranks of a torchrun job, or several runs, or several machines on one shared
  filesystem (NFSv4 and Lustre carry flock between clients) decode the files once: the others
  wait on the lock, then open the store the first one finished.
- `ram`: the same store in (shared) memory, built by each run, refused up front when it would
  cost more than the memory budget (cnncli.cost).

The size of the store is known before anything is allocated: one pass over the image headers
(no decoding) gives each image's size after scaling. Decoding runs in DataLoader workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from cnncli.data.cache_build import (  # noqa: F401 - scaled_size and BUILD_CHUNK are part of this module's names
    BUILD_CHUNK,
    _FileSink,
    _fill,
    _plan,
    _ScaledFetch,
    _TensorSink,
    scaled_size,
)
from cnncli.errors import InputError, RuntimeFailure

FORMAT_VERSION = 1
MODES = ("ram", "disk")


def store_root() -> Path:
    from cnncli.data.registry import cache_dir

    return cache_dir() / "images"


def cache_key(paths: Sequence[str], side: int, label: str | None = None,
              channels: int | None = None, files: Sequence[str] | None = None,
              interpolation: str = "bilinear") -> tuple[str, str]:
    """(place key, content key): the first names what is cached (`label`, e.g. the dataset and
    split; by default the files' common folder) at which side, the second everything a store
    depends on (the sample ids in order, each file's size and mtime, side, resize, format version;
    bilinear stores keep the keys they had before the resize was a choice).
    `files`: the files behind the samples when the ids are not files (a shard's samples)."""
    resized = "" if interpolation == "bilinear" else f" interpolation={interpolation}"
    content = hashlib.sha256(f"v{FORMAT_VERSION} side={side} channels={channels} n={len(paths)}{resized}\n".encode())
    if files is not None:
        content.update("\0".join(paths).encode())
    for path in (paths if files is None else files):
        try:
            st = os.stat(path)
        except OSError as e:
            raise InputError(f"--cache: cannot read {path}: {e.strerror or e}") from None
        content.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if label is None:
        label = os.path.commonpath([os.path.abspath(p) for p in paths])
    where = hashlib.sha256(f"v{FORMAT_VERSION}\0{side}\0{channels}\0{label}{resized}".encode())
    return where.hexdigest()[:12], content.hexdigest()[:24]


def _header_size(path) -> tuple[int, int, int]:
    """(channels, height, width) from a file's header, EXIF orientation applied; no decoding."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            gray = image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")
            orientation = image.getexif().get(0x0112, 1) if image.format in ("JPEG", "WEBP", "PNG") else 1
    except Exception:  # noqa: BLE001 - decoded later, where the decoder names what is wrong
        raise InputError("not a readable image (its header)") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return (1 if gray else 3), height, width


class ImageStore:
    """Images of different sizes in one flat uint8 array; `store[i]` is image i as (C, H, W).

    The array is a tensor in shared memory (ram) or a read-only memory map (disk) opened
    lazily in each process, so that DataLoader workers share it instead of copying it.
    """

    def __init__(self, table, total: int, data=None, path: Path | None = None, hit: bool = False,
                 failed: dict[int, str] | None = None):
        self.table = table  # int64 (N, 4): offset, channels, height, width (0 x 0: did not decode)
        self.failed = dict(failed or {})  # why each of those did not decode
        self.total = int(total)  # bytes of the array
        self._data = data
        self.path = path
        self.hit = hit  # read from a store built earlier (no file was decoded)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def nbytes(self) -> int:
        return self.total

    def _array(self):
        if self._data is None:
            import numpy as np
            import torch

            mm = np.memmap(self.path / "data.u8", dtype=np.uint8, mode="r", shape=(max(1, self.nbytes),))
            with warnings.catch_warnings():  # a read-only view: nothing writes through it
                warnings.simplefilter("ignore", UserWarning)
                self._data = torch.from_numpy(mm)
        return self._data

    def __getitem__(self, i: int):
        off, c, h, w = (int(v) for v in self.table[i])
        if h == 0:
            raise IndexError(i)  # a sample that did not decode when the store was built
        return self._array()[off:off + c * h * w].view(c, h, w).clone()

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.path is not None:
            state["_data"] = None  # each process maps the file itself
        return state


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_temporaries(root: Path, where: str) -> None:
    """The temporaries of stores of place `where` that writers killed midway left. Called with
    the place's lock held, so none is being written (a writer holds the lock to the rename); the
    pid check is for writers of an older cnncli, which took no lock."""
    for tmp in root.glob(f".{where}-*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
        except (ValueError, IndexError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _open_disk(folder: Path, content: str):
    import torch

    try:
        import numpy as np

        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") != content or meta.get("version") != FORMAT_VERSION or not meta.get("complete"):
            return None
        table = torch.from_numpy(np.load(folder / "table.npy", allow_pickle=False).astype(np.int64))
        if table.shape != (meta["images"], 4):
            return None
        failed = {int(k): str(v) for k, v in (meta.get("failed") or {}).items()}
        store = ImageStore(table, int(meta["bytes"]), path=folder, hit=True, failed=failed)
        if (folder / "data.u8").stat().st_size != max(1, store.nbytes):
            return None
        return store
    except (OSError, ValueError, KeyError, TypeError):
        return None


class _PathSource:
    """Image files as a source: `load(i)` decodes file i with `decode`."""

    def __init__(self, paths: Sequence[str], decode: Callable | None):
        self.ids = [str(p) for p in paths]
        self.decode = decode

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int):
        if self.decode is None:
            from cnncli.data.photo_decode import decode_photo

            return decode_photo(self.ids[i])
        return self.decode(self.ids[i])


def _headers(source) -> Callable[[int], tuple[int, int, int] | None]:
    """(C, H, W) of sample i from its header, EXIF applied: a file's, or the bytes a source reads."""
    base, positions = source, None
    while hasattr(base, "base") and hasattr(base, "positions"):
        positions = base.positions if positions is None else base.positions[positions]
        base = base.base
    read = getattr(base, "read", None)

    def header(i: int):
        try:
            if read is not None:
                return _header_size(io.BytesIO(read(int(positions[i]) if positions is not None else i)))
            return _header_size(source.ids[i])
        except (InputError, OSError):
            return None

    return header


def open_store(
    source,
    side: int,
    mode: str,
    workers: int = 0,
    decode: Callable | None = None,
    progress: Callable[[int, int], None] | None = None,
    label: str | None = None,
    channels: int | None = None,
    files: Sequence[str] | None = None,
    waiting: Callable[[Path], None] | None = None,
    interpolation: str = "bilinear",
) -> ImageStore:
    """The store of `source` at `side`: read from the disk cache when its key matches, else built.

    `source`: an ImageSource (data/stream.py: ids, load(i)) or a list of image paths (decoded
    with `decode`, by default data/stream.decode_photo). `channels` 1 or 3 makes every image
    gray or colour (None: each as its file is); `label` names what is cached (see
    `cache_key`); `files` are the files behind the samples when the ids are not file paths;
    `workers` decode in DataLoader worker processes; `waiting(lock path)` is called when
    another process is building the same disk store (this one then opens what it built);
    `interpolation`: how images are resized to the store's side (the run's, bilinear or bicubic).
    """
    import torch

    from cnncli import cost

    if mode not in MODES:
        raise InputError(f"--cache must be one of {', '.join(MODES)}, got '{mode}'")
    if isinstance(source, (list, tuple)):
        source = _PathSource(source, decode)
    paths = list(source.ids)
    if not paths:
        raise InputError("--cache: no images to cache")
    if channels not in (None, 1, 3):
        raise InputError(f"--cache: channels must be 1 or 3, got {channels}")
    where, content = cache_key(paths, side, label, channels, files, interpolation)
    root = store_root()
    final = root / f"{where}-{content}"
    if mode == "disk" and final.is_dir():
        store = _open_disk(final, content)
        if store is not None:
            return store
    if mode == "ram":
        table, total = _plan(_headers(source), len(paths), side, channels)
        cost.check(f"--cache ram: {len(paths):,} images with the shorter side at most {side} px need", total)
        data = torch.empty(total, dtype=torch.uint8).share_memory_()
        failed = _fill(_TensorSink(data), _ScaledFetch(source, side, interpolation), paths, table, workers, progress)
        return ImageStore(table, total, data=data, failed=failed)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RuntimeFailure(f"--cache disk: cannot use {root}: {e.strerror or e}") from None
    from cnncli.data.store_lock import build_lock

    with build_lock(root, where, waiting):
        if final.is_dir():  # built by the process that held the lock, or damaged
            store = _open_disk(final, content)
            if store is not None:
                return store
            shutil.rmtree(final, ignore_errors=True)  # damaged: built again below
        return _build_disk(source, paths, side, channels, where, content, workers, progress, label, interpolation)


def _build_disk(source, paths, side, channels, where, content, workers, progress, label,
                interpolation: str = "bilinear") -> ImageStore:
    """Decode the store of `source` into a temporary folder and rename it (the lock held)."""
    root = store_root()
    final = root / f"{where}-{content}"
    table, total = _plan(_headers(source), len(paths), side, channels)
    check_room("disk", total, f"--cache disk: {len(paths):,} images with the shorter side at most {side} px need")
    _remove_dead_temporaries(root, where)
    tmp = root / f".{where}-{content}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        import numpy as np

        tmp.mkdir(parents=True)
        with open(tmp / "data.u8", "wb") as f:  # its full size (sparse), then written in place by the workers
            f.truncate(max(total, 1))
        failed = _fill(_FileSink(tmp / "data.u8"), _ScaledFetch(source, side, interpolation), paths, table,
                       workers, progress)
        meta = {"version": FORMAT_VERSION, "key": content, "side": side, "images": len(paths),
                "bytes": total, "first": os.path.abspath(paths[0]), "label": label, "complete": True,
                "failed": {str(i): why for i, why in failed.items()}}
        np.save(tmp / "table.npy", table.numpy(), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta))
        for name in ("data.u8", "table.npy", "meta.json"):
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
        for old in root.glob(f"{where}-*"):  # the store of these files before one changed
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another run finished the same store first
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeFailure(f"--cache disk: cannot write {tmp}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImageStore(table, total, path=final, hit=False, failed=failed)


class CachedImages:
    """A map-style dataset over a store: (transform(uint8 image), label)."""

    def __init__(self, store: ImageStore, labels: Sequence[int], transform: Callable | None = None):
        if len(store) != len(labels):
            raise ValueError(f"{len(store)} cached images but {len(labels)} labels")
        self.store, self.labels, self.transform = store, list(labels), transform

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int):
        image = self.store[i]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i]


# ------------------------------------------------------------------------------ the streaming splits' side
class CachedSource:
    """An ImageSource (data/stream.py) whose `load(i)` reads the store instead of decoding."""

    def __init__(self, inner, store: ImageStore):
        self.inner, self.store = inner, store
        self.class_names = list(inner.class_names)
        self.labels = inner.labels
        self.ids = list(inner.ids)

    @property
    def groups(self):  # the shards of a wds split (data/shards/order.py orders by them)
        base, positions = self.inner, None
        while hasattr(base, "base") and hasattr(base, "positions"):
            positions = base.positions if positions is None else base.positions[positions]
            base = base.base
        groups = base.groups
        return groups if positions is None else groups[positions]

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int):
        from cnncli.data.photo_decode import BadImage

        try:
            return self.store[i]
        except IndexError:
            why = self.store.failed.get(i, "cannot decode the image")
            raise BadImage(self.ids[i], f"{why} (found when it was cached)") from None

    def declared_size(self, i: int):
        _, _, h, w = (int(v) for v in self.store.table[i])
        return (h, w) if h else None


def request_cache(data, mode: str) -> None:
    """Ask a dataset for a store (`--cache`); tensor datasets are in memory already (a note says so)."""
    if mode not in MODES:
        raise InputError(f"--cache {mode}: choose ram or disk")
    if getattr(data, "streaming", False):
        data.cache = mode
        return
    from cnncli.output import note

    note(f"--cache {mode}: this dataset is held in memory already; nothing to cache")


def _files_behind(source) -> list[str] | None:
    """The files behind a source's samples when its ids are not paths (tar shards), else None."""
    base = source
    while hasattr(base, "base"):
        base = base.base
    return list(base.shards) if hasattr(base, "shards") else None


def cache_splits(data, cfg) -> None:
    """Give each split of a StreamingSplits (data/folders.py) a store at the training resolution:
    the shorter side the eval transform resizes to (size / crop_pct), which RandomResizedCrop
    also crops from. The training split's store is built (or opened) now; val's and test's when
    their first pass starts (StreamSplit.ready), so the first training step waits for the
    training images only. Records what happened in `data.info["cache"]`."""
    from cnncli import output

    mode = data.cache
    side = max(int(cfg.size), int(math.floor(cfg.size / cfg.crop_pct)))
    record = {"mode": mode, "side": side, "splits": {}}
    deferred, build_train = [], None
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if len(split) == 0 or isinstance(split.src, CachedSource):
            continue
        files = _files_behind(split.src)
        label = f"{split.name}:{os.path.abspath(str(split.source))}:{name}"  # relative paths differ by folder
        where = "memory" if mode == "ram" else "the cnncli cache folder"

        def progress(done, total, name=name, where=where):
            if done == 1:
                output.note(f"--cache {mode}: decoding {total:,} {name} images once into {where}")

        def waiting(lock, name=name):
            output.note(f"--cache disk: another process is building the {name} store (it holds {lock}); "
                        "waiting for it")

        def build(split=split, name=name, files=files, label=label, progress=progress, waiting=waiting):
            store = open_store(split.src, side, mode, workers=cfg.resolved_workers(), progress=progress,
                               label=label, channels=int(cfg.channels), files=files, waiting=waiting,
                               interpolation=cfg.interpolation)
            if store.hit:
                output.note(f"--cache {mode}: {len(store):,} {name} images read from {store.path}")
            record["splits"][name] = {"images": len(store), "bytes": store.nbytes, "hit": store.hit,
                                      "path": str(store.path) if store.path else None}
            return CachedSource(split.src, store)

        if name == "train":
            build_train = build
        else:  # val and test are built when their first pass starts: not before the first training step
            record["splits"][name] = {"images": len(split), "built": False}
            split.pending_source = build
            if not (mode == "disk" and _store_exists(split.src, side, label, int(cfg.channels), files,
                                                     cfg.interpolation)):
                deferred.append(split)
    # ... but whether they will fit is said now, not after the training: their size estimated
    # from a sample of headers (each build checks its exact size again before it allocates)
    need = sum(estimated_store_bytes(split.src, side, int(cfg.channels)) for split in deferred)
    if need:
        check_room(mode, need, f"--cache {mode}: the val and test images need about")
    if build_train is not None:
        data.train.src = build_train()
    data.info["cache"] = record


def _store_exists(source, side: int, label: str, channels: int, files, interpolation: str = "bilinear") -> bool:
    where, content = cache_key(list(source.ids), side, label, channels, files, interpolation)
    return (store_root() / f"{where}-{content}").is_dir()


ESTIMATE_SAMPLE = 64  # headers read to estimate the size of a store not built yet


def estimated_store_bytes(source, side: int, channels: int | None = None, sample: int = ESTIMATE_SAMPLE) -> int:
    """The bytes of `source`'s store at `side`, from the headers of an evenly spread sample."""
    n = len(source.ids)
    if n == 0:
        return 0
    header = _headers(source)
    m = min(n, sample)
    picks = sorted({round(k * (n - 1) / max(1, m - 1)) for k in range(m)})
    sizes = [h for h in (header(i) for i in picks) if h is not None]
    if not sizes:
        return 0
    per = [(channels or c) * math.prod(scaled_size(hh, ww, side)) for c, hh, ww in sizes]
    return int(sum(per) / len(per) * n)


def check_room(mode: str, total: int, what: str) -> None:
    """InputError (exit 2) when `total` bytes do not fit: the memory budget (ram) or the free
    space of the cache folder, less 256 MB (disk)."""
    from cnncli import cost

    if mode == "ram":
        cost.check(what, total)
        return
    root = store_root()
    probe = root if root.exists() else next((p for p in root.parents if p.exists()), root)
    try:
        free = shutil.disk_usage(probe).free
    except OSError as e:
        raise RuntimeFailure(f"--cache disk: cannot use {root}: {e.strerror or e}") from None
    if total > free - (256 << 20):
        raise InputError(f"{what} {cost.human(total)} on disk; {root} has {cost.human(free)} free "
                         "(use --cache ram, or free space)")
