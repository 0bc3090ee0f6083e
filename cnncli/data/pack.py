"""`cnncli datasets pack SOURCE OUT`: any dataset cnncli reads, written as WebDataset tar shards.

OUT gets `train-000000.tar`, ... (and `val-*`, `test-*`), `--shard-size` samples each, and an
`index.json` (written last) with the class names, the channels, the count per split and per
class, and where the data came from: what `wds:OUT` reads back, with the same names and counts.

The splits are the ones cnncli would train on: an image folder or CSV keeps its train/val/test;
a missing test split is held out of train (20 %, stratified, seed 0, as `imagefolder:` does) and
then a missing val split (10 %, seed 0); tensor datasets (fashion-mnist, cifar10, synthetic)
keep their test split and hold val out of train as `train --val-fraction 0.1 --seed 0` does.

Image bytes: files are copied as they are (no re-encoding, nothing lost) unless `--img-size S`
asks to scale them so that the shorter side is S (then JPEG at quality 95, PNG for PNG
sources); images held in memory (tensor datasets) become PNG. Each shard is written to a
temporary file and renamed when complete. OUT may be new, empty, or a pack cnncli wrote
(replaced only with `force`); a folder holding anything else is refused.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cnncli.data.shards import INDEX_FORMAT, INDEX_NAME, SPLITS, read_index
from cnncli.errors import InputError, RuntimeFailure

MAX_SHARD_SIZE = 1_000_000
INDEX_VERSION = 1


def _shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def check_out_folder(out: Path, force: bool) -> list[Path]:
    """Refuse an OUT that holds files cnncli did not write; the old pack's files to remove."""
    if out.exists() and not out.is_dir():
        raise InputError(f"pack: {out} exists and is not a folder; give a new or empty folder")
    if not out.exists():
        return []
    entries = [p for p in out.iterdir()]
    if not entries:
        return []
    index = out / INDEX_NAME
    old: list[Path] = []
    if index.is_file():
        try:
            doc = read_index(index)
        except InputError:
            doc = None
        if doc is not None:
            old = [out / s for split in doc["splits"].values() for s in split["shards"] if "/" not in s]
            old.append(index)
    ours = {p.name for p in old} | {p.name for p in entries if p.name.startswith(".") and p.name.endswith(".tmp")}
    foreign = sorted(p.name for p in entries if p.name not in ours)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(f"pack: {out} holds files that are not a cnncli pack ({shown}); give a new or empty folder")
    if old and not force:
        raise InputError(f"pack: {out} already holds a pack ({len(old) - 1} shards); pass --force to replace it")
    return [p for p in entries if p.name in ours]


class _ShardWriter:
    """Tar shards of one split, each written to a temporary name and renamed when complete."""

    def __init__(self, out: Path, split: str, shard_size: int):
        self.out, self.split, self.shard_size = out, split, shard_size
        self.names: list[str] = []
        self.count = 0
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._in_shard = 0

    def _open(self) -> None:
        name = _shard_name(self.split, len(self.names))
        self._tmp = self.out / f".{name}.{os.getpid()}.tmp"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self.names.append(name)
        self._in_shard = 0

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, self.out / self.names[-1])
        self._tar, self._tmp = None, None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if self._tar is None or self._in_shard >= self.shard_size:
            self._close()
            self._open()
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self._in_shard += 1
        self.count += 1

    def finish(self) -> list[str]:
        self._close()
        return self.names

    def abort(self) -> None:
        if self._tar is not None:
            try:
                self._tar.close()
            finally:
                self._tmp.unlink(missing_ok=True)


def _scaled_size(height: int, width: int, side: int) -> tuple[int, int]:
    scale = side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _encode(image, fmt: str) -> bytes:
    import warnings

    from torchvision.io import encode_jpeg, encode_png

    with warnings.catch_warnings():  # torchvision 0.29's notice that torchcodec will take over
        warnings.simplefilter("ignore", DeprecationWarning)
        if fmt == "png":
            return bytes(encode_png(image.contiguous()).numpy())
        return bytes(encode_jpeg(image.contiguous(), quality=95).numpy())


def _resize(image, side: int):
    from torchvision.transforms.v2.functional import resize

    h, w = image.shape[-2:]
    return resize(image, list(_scaled_size(h, w, side)), antialias=True)


def _file_samples(paths: list[str], img_size: int | None) -> Iterator[tuple[dict[str, bytes], int, str]]:
    """(members, channels, id) per image file: the file's bytes, or scaled and re-encoded. A
    format shards do not carry (GIF, BMP, TIFF, PPM: what webdataset's decoders and ours read is
    IMAGE_KEYS) is decoded and written as PNG, losslessly, at its size or scaled."""
    from cnncli.data.shards.source import IMAGE_KEYS
    from cnncli.data.transforms import decode_image_file

    for path in paths:
        ext = Path(path).suffix.lower().lstrip(".")
        ext = "jpg" if ext == "jpeg" else ext
        if ext not in IMAGE_KEYS:
            image = decode_image_file(path)
            image = image if img_size is None else _resize(image, img_size)
            yield {"png": _encode(image, "png")}, int(image.shape[0]), path
            continue
        if img_size is None:
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise InputError(f"pack: cannot read {path}: {e.strerror or e}") from None
            yield {ext: data}, _header_channels(path), path
            continue
        image = decode_image_file(path)
        fmt = "png" if ext == "png" else "jpg"
        yield {fmt: _encode(_resize(image, img_size), fmt)}, int(image.shape[0]), path


def _header_channels(path: str) -> int:
    """1 for a gray file, 3 otherwise, from the header alone (the reader makes all alike)."""
    from PIL import Image

    from cnncli.data.formats import gray_mode

    try:
        with Image.open(path) as image:
            return 1 if gray_mode(image.mode) else 3
    except Exception:  # noqa: BLE001 - unreadable here: the reader names it when it decodes
        return 3


def _tensor_samples(images, img_size: int | None) -> Iterator[tuple[dict[str, bytes], int, str]]:
    for image in images:
        if img_size is not None:
            image = _resize(image, img_size)
        yield {"png": _encode(image, "png")}, int(image.shape[0]), ""


def _index_splits(source: str) -> tuple[list[str], dict[str, tuple[list[str], list[int]]], dict[str, str], Callable]:
    """Class names, {split: (paths, labels)}, how each split was made, and the sample reader."""
    import torch

    from cnncli.data.index import index_source
    from cnncli.data.splits import stratified_holdout

    index = index_source(source)
    splits = {s: ([index.paths[i] for i in index.select(s)], [index.labels[i] for i in index.select(s)])
              for s in index.split_names()}
    made = {s: "given" for s in splits}
    for missing, fraction in (("test", 0.2), ("val", 0.1)):
        if missing in splits:
            continue
        paths, labels = splits["train"]
        keep, held = stratified_holdout(torch.tensor(labels, dtype=torch.int64), fraction, seed=0)
        if len(held) == 0:
            made[missing] = "none (too few images to hold out)"
            continue
        splits[missing] = ([paths[i] for i in held.tolist()], [labels[i] for i in held.tolist()])
        splits["train"] = ([paths[i] for i in keep.tolist()], [labels[i] for i in keep.tolist()])
        made[missing] = f"held out of train ({fraction:g}, stratified, seed 0)"
    return index.class_names, splits, made, _file_samples


def pack_dataset(
    source: str,
    out: str | os.PathLike,
    shard_size: int = 1000,
    img_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Write SOURCE as shards into OUT; the index document written (see the module doc)."""
    from cnncli.data.index import is_index_source
    from cnncli.data.registry import canonical_dataset_name
    from cnncli.fileio import atomic_write_text, ensure_writable_dir
    from cnncli.output import note

    source = canonical_dataset_name(source)
    if not 1 <= shard_size <= MAX_SHARD_SIZE:
        raise InputError(f"--shard-size must be in [1, {MAX_SHARD_SIZE:,}], got {shard_size}")
    if img_size is not None and not 1 <= img_size <= 4096:
        raise InputError(f"--img-size must be in [1, 4096], got {img_size}")
    if source.strip().lower().startswith("wds:"):
        raise InputError(f"pack: {source} is shards already; copy its folder, or pack the dataset it was made from")
    out = Path(out).expanduser()
    old = check_out_folder(out, force)

    if is_index_source(source):
        class_names, file_splits, made, _ = _index_splits(source)
        work = {s: (lambda p=p: _file_samples(p, img_size), labels, p) for s, (p, labels) in file_splits.items()}
    else:
        from cnncli.data.registry import load_dataset

        data = load_dataset(source, data_dir, val_fraction=0.1, seed=0)
        class_names = list(data.class_names)
        made = {"train": "given", "val": "held out of train (0.1, stratified, seed 0)", "test": "given"}
        parts = {"train": data.train, "val": data.val, "test": data.test}
        work = {s: (lambda d=d: _tensor_samples(d.images, img_size), d.labels.tolist(), d.ids)
                for s, d in parts.items() if len(d)}

    ensure_writable_dir(out)
    for path in old:  # the replaced pack (force): its shards go before new ones take their names
        path.unlink(missing_ok=True)
    splits_doc: dict[str, Any] = {}
    channels = 0
    for split in SPLITS:
        if split not in work:
            continue
        samples, labels, _ = work[split]
        note(f"pack: writing {len(labels):,} {split} samples into {out}")
        writer = _ShardWriter(out, split, shard_size)
        counts = [0] * len(class_names)
        try:
            for i, ((members, c, item_id), label) in enumerate(zip(samples(), labels)):
                channels = max(channels, c)
                members["cls"] = str(int(label)).encode()
                if item_id:
                    members["id.txt"] = str(item_id).encode("utf-8", "replace")
                writer.write(f"{i:09d}", members)
                counts[label] += 1
                if progress is not None:
                    progress(split, i + 1, len(labels))
        except InputError as e:
            writer.abort()
            raise InputError(f"pack: {e}") from None
        except OSError as e:
            writer.abort()
            raise RuntimeFailure(f"pack: cannot write shards into {out}: {e.strerror or e}") from None
        except BaseException:
            writer.abort()
            raise
        splits_doc[split] = {"shards": writer.finish(), "count": writer.count, "class_counts": counts,
                             "made": made.get(split, "given")}
    doc = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "source": source,
        "class_names": class_names,
        "num_classes": len(class_names),
        "channels": channels or None,
        "img_size": img_size,
        "shard_size": shard_size,
        "splits": splits_doc,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_text(out / INDEX_NAME, json.dumps(doc, indent=2) + "\n")
    return doc
