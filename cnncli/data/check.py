"""`check_dataset`: what is in a dataset before anyone trains on it.

Class counts per split and the balance between classes (largest / smallest, classes of fewer
than FEW_IMAGES images, classes a split has none of), image sizes and channel counts, unreadable
files, exact duplicates and near duplicates, within and across splits, and the pairs whose
labels disagree. A held-out image (val or test) that also appears in train (exactly or nearly)
is a leak: `leak` in the report is what `cnncli datasets check --strict` turns into exit code 1.

Sources: a named dataset (fashion-mnist, cifar10, ...: its original train and test splits,
already in memory as uint8 tensors), or `imagefolder:PATH` / `csv:FILE`, which are streamed
from the index (`cnncli.data.index`): each file is read once, its header checked (Pillow's
open + verify, the pixel count priced before decoding), and it is decoded downscaled (JPEG
through Pillow's draft mode) to a 32x32 gray thumbnail, of which only the 64-bit pHash and a
16x16 copy stay in memory: under 300 bytes an image (and its path), whatever its size.

Exact duplicates are identical content (the same file bytes; for a named dataset the same
pixels). Near duplicates are found in two steps: pHashes within `threshold` bits (multi-index
hashing, `cnncli.data.phash`), then confirmed on the 16x16 thumbnails: the correlation of
their contrast-normalized pixels must reach `min_similarity`. Measured on generated pictures:
noise and JPEG re-encoding stay above 0.998, a one-pixel shift of a 128 px image above 0.99
(and within 6 bits); on Fashion-MNIST, similar but distinct articles mostly fall below 0.99.
A one-pixel shift of a 28x28 image moves it by 3.6% of its width, as far as two different
shirts are apart: it is not reported at the default settings.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cnncli.data.index import SPLITS, ImageIndex, index_source, is_index_source
from cnncli.data.phash import DEFAULT_THRESHOLD, HASH_SIZE, close_pairs, phash_thumbnails
from cnncli.errors import InputError

DEFAULT_MIN_SIMILARITY = 0.99
DEFAULT_MAX_PAIRS = 1000
FEW_IMAGES = 10  # a class with fewer images in all is listed in the report's `balance.few`
SMALL = HASH_SIZE // 2  # the side of the thumbnails kept for confirming near duplicates
BYTES_PER_IMAGE = 8 + SMALL * SMALL + 16 + 8  # hash, thumbnail, digest, label/split
MAX_CHECK_BYTES = 4 * 2**30
CHUNK = 256  # files per task handed to a worker thread
HELD_OUT = ("val", "test")
# cnncli.data.transforms.MAX_IMAGE_PIXELS, the most any command decodes; repeated here because
# that module imports torch, which checking a folder of files does not need (a test keeps them equal)
MAX_IMAGE_PIXELS = 100_000_000


# ------------------------------------------------------------------------- reading files
def _read_file(path: str) -> tuple[Any, ...]:
    """(ok, reason, (width, height), channels, digest, thumbnail 32x32 float32) of one image file."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False, "file not found", None, None, None, None
    except OSError as e:
        return False, f"cannot read: {e.strerror or e}", None, None, None, None
    if not data:
        return False, "empty file", None, None, None, None
    digest = hashlib.blake2b(data, digest_size=16).digest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # the header only
                width, height = image.size
                mode = image.mode
                if width * height > MAX_IMAGE_PIXELS:
                    return False, f"{width}x{height} pixels is more than cnncli decodes", (width, height), None, None, None
                image.verify()  # the structure and checksums, without decoding
            with Image.open(io.BytesIO(data)) as image:
                if image.format == "JPEG":
                    image.draft("L", (HASH_SIZE * 2, HASH_SIZE * 2))  # decode at 1/2..1/8 scale
                gray = image.convert("L").resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BILINEAR)
                thumb = np.asarray(gray, dtype=np.float32)
    except Image.DecompressionBombError:
        return False, "more pixels than cnncli decodes", None, None, None, None
    except Exception as e:  # noqa: BLE001 - Pillow reports corrupt data as many exception types
        reason = " ".join(str(e).split()) or type(e).__name__
        return False, f"cannot decode: {reason}", None, None, None, None
    channels = 1 if mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F") else 3
    return True, "", (width, height), channels, digest, thumb


def _read_chunk(paths: list[str]) -> list[tuple[Any, ...]]:
    return [_read_file(p) for p in paths]


def _ordered(pool: ThreadPoolExecutor, chunks: list[list[str]], ahead: int):
    """Results of `_read_chunk` in order, with at most `ahead` chunks decoded and waiting
    (Executor.map would submit them all: a slow consumer would hold the whole folder)."""
    from collections import deque

    pending: deque = deque()
    for chunk in chunks:
        pending.append(pool.submit(_read_chunk, chunk))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ------------------------------------------------------------------------- the items checked
class _Items:
    """What the search needs about every readable image, as arrays, plus how to name each."""

    def __init__(self, n: int):
        self.hashes = np.zeros(n, dtype=np.uint64)
        self.small = np.zeros((n, SMALL * SMALL), dtype=np.uint8)
        self.group = np.zeros(n, dtype=np.int64)  # the same number for identical content
        self.labels = np.zeros(n, dtype=np.int64)
        self.splits = np.zeros(n, dtype=np.int64)  # position in SPLITS
        self.names: list[str] = []


def _small_from_thumbs(thumbs: np.ndarray) -> np.ndarray:
    pooled = (thumbs[:, 0::2, 0::2] + thumbs[:, 1::2, 0::2] + thumbs[:, 0::2, 1::2] + thumbs[:, 1::2, 1::2]) / 4
    return np.clip(np.rint(pooled), 0, 255).astype(np.uint8).reshape(len(thumbs), -1)


def _price(n: int) -> None:
    need = n * BYTES_PER_IMAGE
    if need > MAX_CHECK_BYTES:
        raise InputError(f"checking {n:,} images needs {need / 2**30:.1f} GiB of hashes and thumbnails, "
                         f"more than the {MAX_CHECK_BYTES / 2**30:.0f} GiB allowed; check a part of it")


def _group_ids(digests: list[bytes]) -> np.ndarray:
    first: dict[bytes, int] = {}
    return np.array([first.setdefault(d, len(first)) for d in digests], dtype=np.int64)


def _scan_index(index: ImageIndex, workers: int, progress: Callable[[int, int], None] | None):
    """Read every file of the index in worker threads; (items, report parts)."""
    n = len(index)
    _price(n)
    thumbs_batch: list[np.ndarray] = []
    keep: list[int] = []
    digests: list[bytes] = []
    sizes: Counter = Counter()
    channels: Counter = Counter()
    unreadable: list[dict[str, Any]] = []
    hashes = np.zeros(n, dtype=np.uint64)
    small = np.zeros((n, SMALL * SMALL), dtype=np.uint8)
    done = 0

    def flush() -> None:
        if thumbs_batch:
            block = np.stack(thumbs_batch)
            at = len(keep) - len(block)
            hashes[at:len(keep)] = phash_thumbnails(block)
            small[at:len(keep)] = _small_from_thumbs(block)
            thumbs_batch.clear()

    chunks = [index.paths[i:i + CHUNK] for i in range(0, n, CHUNK)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        position = 0
        for results in _ordered(pool, chunks, ahead=2 * max(1, workers)):
            for ok, reason, size, ch, digest, thumb in results:
                if ok:
                    keep.append(position)
                    digests.append(digest)
                    thumbs_batch.append(thumb)
                    sizes[f"{size[0]}x{size[1]}"] += 1
                    channels[str(ch)] += 1
                else:
                    unreadable.append({"path": index.paths[position], "split": index.splits[position],
                                       "reason": reason})
                position += 1
            flush()
            done += len(results)
            if progress is not None:
                progress(done, n)
    m = len(keep)
    items = _Items(0)
    items.hashes, items.small = hashes[:m], small[:m]
    items.group = _group_ids(digests)
    keep_arr = np.array(keep, dtype=np.int64)
    items.labels = np.array(index.labels, dtype=np.int64)[keep_arr] if m else np.zeros(0, np.int64)
    split_codes = np.array([SPLITS.index(s) for s in index.splits], dtype=np.int64)
    items.splits = split_codes[keep_arr] if m else np.zeros(0, np.int64)
    root = index.root.rstrip(os.sep) + os.sep
    items.names = [index.paths[i][len(root):] if index.paths[i].startswith(root) else index.paths[i] for i in keep]
    return items, sizes, channels, unreadable


def _scan_tensors(splits: list[tuple[str, Any]], progress):
    """Items of in-memory splits [(split name, ImageData)]: pixel digests, hashes, thumbnails."""
    from cnncli.data.phash import thumbnails_from_tensor

    n = sum(len(d) for _, d in splits)
    _price(n)
    items = _Items(n)
    digests: list[bytes] = []
    at, batch = 0, 8192
    for split, data in splits:
        flat = data.images.reshape(len(data), -1).numpy()
        for start in range(0, len(data), batch):
            thumbs = thumbnails_from_tensor(data.images[start:start + batch])
            stop = at + len(thumbs)
            items.hashes[at:stop] = phash_thumbnails(thumbs)
            items.small[at:stop] = _small_from_thumbs(thumbs)
            digests += [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat[start:start + batch]]
            at = stop
            if progress is not None:
                progress(at, n)
        items.labels[at - len(data):at] = data.labels.numpy()
        items.splits[at - len(data):at] = SPLITS.index(split)
        items.names += [f"{split}[{i}]" for i in range(len(data))]
    items.group = _group_ids(digests)
    shape = splits[0][1].image_shape if splits else (0, 0, 0)
    sizes = Counter({f"{shape[2]}x{shape[1]}": n})
    channels = Counter({str(shape[0]): n})
    return items, sizes, channels, []


# ------------------------------------------------------------------------- finding pairs
def _thumbnail_stats(small: np.ndarray, batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the mean of its 16x16 thumbnail and the norm of the thumbnail minus that mean
    (at least that of one gray level a pixel: a flat thumbnail correlates with nothing)."""
    means = np.empty(len(small), dtype=np.float32)
    norms = np.empty(len(small), dtype=np.float32)
    for start in range(0, len(small), batch):
        x = small[start:start + batch].astype(np.float32)
        means[start:start + batch] = x.mean(axis=1)
        centred = x - means[start:start + batch, None]
        norms[start:start + batch] = np.sqrt(np.einsum("ij,ij->i", centred, centred))
    return means, np.maximum(norms, np.sqrt(small.shape[1]))


def _similarity(small: np.ndarray, stats, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Correlation of the contrast-normalized 16x16 thumbnails of pairs (i, j)."""
    means, norms = stats
    dot = np.einsum("ij,ij->i", small[i].astype(np.float32), small[j].astype(np.float32))
    covariance = dot - small.shape[1] * means[i] * means[j]
    return covariance / (norms[i] * norms[j])


def _find_pairs(items: _Items, class_names: list[str], threshold: int, min_similarity: float, max_pairs: int):
    counts = Counter()
    held = np.array([s in HELD_OUT for s in SPLITS])
    leaked = np.zeros(len(items.hashes), dtype=bool)
    listed: list[tuple] = []  # (priority, distance, i, j, kind, similarity)
    stats = _thumbnail_stats(items.small)
    for block in close_pairs(items.hashes, threshold):
        i, j, d = block.i, block.j, block.distance
        exact = items.group[i] == items.group[j]
        sim = np.ones(len(i), dtype=np.float32)
        if not exact.all():
            sim[~exact] = _similarity(items.small, stats, i[~exact], j[~exact])
        keep = exact | (sim >= min_similarity)
        i, j, d, exact, sim = i[keep], j[keep], d[keep], exact[keep], sim[keep]
        if not len(i):
            continue
        si, sj = items.splits[i], items.splits[j]
        cross = si != sj
        train_i, train_j = si == SPLITS.index("train"), sj == SPLITS.index("train")
        leak_i = held[si] & train_j  # i is held out, its twin is in train
        leak_j = held[sj] & train_i
        leaked[i[leak_i]] = True
        leaked[j[leak_j]] = True
        conflict = items.labels[i] != items.labels[j]
        counts["exact"] += int(exact.sum())
        counts["near"] += int((~exact).sum())
        counts["cross"] += int(cross.sum())
        counts["leak"] += int((leak_i | leak_j).sum())
        counts["conflict"] += int(conflict.sum())
        # what a reader wants first: leaks, then label conflicts, then other cross-split pairs
        priority = np.where(leak_i | leak_j, 0, np.where(conflict, 1, np.where(cross, 2, 3)))
        order = np.lexsort((d, priority))[: max_pairs]
        listed += [(int(priority[k]), int(d[k]), int(i[k]), int(j[k]), bool(exact[k]), float(sim[k])) for k in order]
        if len(listed) > 4 * max_pairs:
            listed = sorted(listed)[:max_pairs]
    listed = sorted(listed)[:max_pairs]

    def item(k: int) -> dict[str, Any]:
        return {"item": items.names[k], "split": SPLITS[items.splits[k]], "label": class_names[items.labels[k]]}

    pairs = [
        {"kind": "exact" if exact else "near", "distance": dist, "similarity": round(sim, 4),
         "a": item(i), "b": item(j), "cross_split": bool(items.splits[i] != items.splits[j]),
         "leak": prio == 0, "label_conflict": bool(items.labels[i] != items.labels[j])}
        for prio, dist, i, j, exact, sim in listed
    ]
    return counts, int(leaked.sum()), pairs


# ------------------------------------------------------------------------- the one door in
def _load_named(name: str, data_dir) -> tuple[str, list[str], list[tuple[str, Any]]]:
    from cnncli.data.registry import load_dataset

    data = load_dataset(name, data_dir=data_dir, val_fraction=0.0, hold_out_test=True)
    splits = [("train", data.train)] + ([("test", data.test)] if len(data.test) else [])
    return str(data.info.get("source", name)), list(data.class_names), splits


def check_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    threshold: int = DEFAULT_THRESHOLD,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The report of `cnncli datasets check` as one JSON-ready dict (see the module doc)."""
    if not 0 <= threshold <= 16:
        raise InputError(f"--threshold must be between 0 and 16 bits of 64, got {threshold}")
    if not 0.0 < min_similarity <= 1.0:
        raise InputError(f"--min-similarity must be in (0, 1], got {min_similarity}")
    if max_pairs < 0:
        raise InputError(f"--max-pairs must be 0 or more, got {max_pairs}")
    from cnncli.data.registry import canonical_dataset_name

    name = canonical_dataset_name(name)
    if name.strip().lower().startswith("wds:"):
        raise InputError(f"datasets check reads image files, not shards: check the dataset {name[4:]} was "
                         "packed from (its index.json names it)")
    started = time.perf_counter()
    workers = workers or min(4, os.cpu_count() or 1)
    other_files: list[str] = []
    if is_index_source(name):
        index = index_source(name)
        source, class_names = index.source, index.class_names
        other_files = index.other_files
        items, sizes, channels, unreadable = _scan_index(index, workers, progress)
        split_counts = index.class_counts()
    else:
        source, class_names, splits = _load_named(name, data_dir)
        items, sizes, channels, unreadable = _scan_tensors(splits, progress)
        split_counts = {s: d.class_counts() for s, d in splits}
    counts, leaked, pairs = _find_pairs(items, class_names, threshold, min_similarity, max_pairs)
    groups = np.bincount(items.group) if len(items.group) else np.zeros(0, np.int64)
    return {
        "dataset": name,
        "source": source,
        "classes": class_names,
        "images": int(sum(sum(c) for c in split_counts.values())),
        "splits": {s: {"images": sum(c), "class_counts": dict(zip(class_names, c))} for s, c in split_counts.items()},
        "image_sizes": dict(sizes.most_common()),
        "channels": dict(sorted(channels.items())),
        "unreadable": unreadable,
        "not_images": other_files,
        "exact_duplicates": {"groups": int((groups > 1).sum()), "images": int(groups[groups > 1].sum()),
                             "pairs": counts["exact"]},
        "near_duplicates": {"pairs": counts["near"]},
        "cross_split_pairs": counts["cross"],
        "leaks": {"pairs": counts["leak"], "held_out_images": leaked},
        "label_conflicts": counts["conflict"],
        "leak": leaked > 0,
        "pairs_listed": len(pairs),
        "pairs": pairs,
        "balance": _balance(class_names, split_counts),
        "settings": {"hash": "pHash, 64 bits (8x8 DCT of a 32x32 gray thumbnail)", "threshold": threshold,
                     "min_similarity": min_similarity, "max_pairs": max_pairs},
        "seconds": round(time.perf_counter() - started, 3),
    }


def _balance(class_names: list[str], split_counts: dict[str, list[int]]) -> dict[str, Any]:
    """Largest and smallest class over all splits and their ratio, classes with fewer than
    FEW_IMAGES images, and per split the classes it has no image of."""
    from cnncli.data.balance import imbalance

    totals = [sum(int(c[i]) for c in split_counts.values()) for i in range(len(class_names))]
    found = imbalance(totals, class_names) or {"largest": None, "smallest": None, "ratio": None}
    absent = {s: [n for n, c in zip(class_names, counts) if int(c) == 0] for s, counts in split_counts.items()}
    return {**found, "few": [n for n, t in zip(class_names, totals) if t < FEW_IMAGES],
            "absent": {s: names for s, names in absent.items() if names}}
