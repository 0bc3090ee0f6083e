"""`wds:SPEC`: WebDataset tar shards, read as a torch IterableDataset that each rank and worker splits.

SPEC is one of
- a folder that `cnncli datasets pack` wrote (its `index.json` names the shards of each split,
  the class names and the counts), or that index file itself;
- a shard pattern, local or a `pipe:` command, with braces (`shards/train-{000000..000099}.tar`,
  several joined by `::` as webdataset does): the training split. A `{split}` in it stands for
  train, val and test (the splits whose shards exist);
- `train=PATTERN;val=PATTERN;test=PATTERN` (val and test optional): a pattern per split.
Class names and counts come from an `index.json` beside the shards when it lists them, otherwise
from the tar headers (one pass that reads names and the small `.cls` members, never an image).

A sample is `KEY.jpg|png|jpeg|webp` (the image) and `KEY.cls` (the class number as text), as
`pack` writes and as most WebDataset image sets are laid out.

Two readers:
- `TarSource` (what train, finetune and eval use, through `load_shards`): the shards' tar
  headers give each sample's byte range, so a sample is read at random like a file (the
  streaming interface of data/stream.py: workers, transforms, exact resume, bad files). Its
  epoch order (`shard_order`) shuffles the shards by (seed, epoch), shuffles the samples
  inside each shard, and cuts the result into equal runs per rank: each DDP rank reads its
  own shards, every sample once per epoch. `pipe:` shards are copied once into the cache
  folder for it.
- `ShardDataset`, a torch IterableDataset that reads shards front to back (local or `pipe:`,
  nothing indexed): each epoch the shard list is shuffled with a generator seeded by (seed,
  epoch), dealt to the (rank, worker) slots, and each slot shuffles its samples in a bounded
  buffer seeded by (seed, epoch, slot). Every sample is read exactly once per epoch across all
  ranks and workers; under DDP (world > 1) each rank stops at (or tops up to) an equal share
  so that ranks take the same number of steps. With fewer shards than slots, the slots split
  samples instead. The epoch lives in shared memory so that persistent workers see `set_epoch`.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnncli.errors import InputError, RuntimeFailure

INDEX_NAME = "index.json"
INDEX_FORMAT = "cnncli-shards"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SPLITS = ("train", "val", "test")
MAX_SHARDS = 1_000_000
SHUFFLE_BUFFER = 1000  # samples a worker holds for its in-shard shuffle (bounded memory)


@dataclass
class ShardSplit:
    """The shards of one split and what is known of them without reading an image."""

    urls: list[str]
    count: int
    class_counts: list[int]


@dataclass
class ShardSource:
    """A `wds:` dataset: splits, class names, where the names and counts came from."""

    spec: str
    splits: dict[str, ShardSplit]
    class_names: list[str]
    counted_from: str  # "index" or "tar headers"
    index: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def sizes(self) -> dict[str, int]:
        return {name: s.count for name, s in self.splits.items()}


# ------------------------------------------------------------------------------ specs
def is_wds(name: str) -> bool:
    return name.strip().lower().startswith("wds:")


def expand_pattern(pattern: str) -> list[str]:
    """Shard URLs of a brace pattern (webdataset's own expansion: `::`, `{a..b}`, `{x,y}`)."""
    from webdataset.shardlists import expand_urls

    try:
        urls = [u for u in expand_urls(pattern) if u]
    except Exception as e:  # noqa: BLE001 - braceexpand's errors on unbalanced braces
        raise InputError(f"wds: cannot expand the pattern '{pattern}': {e}") from None
    if not urls:
        raise InputError(f"wds: the pattern '{pattern}' names no shards")
    if len(urls) > MAX_SHARDS:
        raise InputError(f"wds: the pattern '{pattern}' names {len(urls):,} shards, more than {MAX_SHARDS:,}")
    return urls


def _is_local(url: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+]*:", url) or url.startswith("file:")


def _local_path(url: str) -> Path:
    return Path(url[5:] if url.startswith("file:") else url).expanduser()


def _check_local(urls: list[str], what: str) -> None:
    missing = [u for u in urls if _is_local(u) and not _local_path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{what}: shard {missing[0]} not found{more}")


def read_index(path: Path) -> dict[str, Any]:
    """A pack's index.json, checked for what the reader relies on."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"wds: {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"wds: {path} is not a readable JSON index: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise InputError(f"wds: {path} is not an index written by 'cnncli datasets pack'")
    names, splits = doc.get("class_names"), doc.get("splits")
    if not isinstance(names, list) or not names or not isinstance(splits, dict) or "train" not in splits:
        raise InputError(f"wds: {path} lacks class_names or a train split")
    for name, split in splits.items():
        if name not in SPLITS or not isinstance(split, dict) or not isinstance(split.get("shards"), list):
            raise InputError(f"wds: {path}: split '{name}' is not one of {', '.join(SPLITS)} with a shard list")
        if not isinstance(split.get("count"), int) or split["count"] < 0:
            raise InputError(f"wds: {path}: split '{name}' has no sample count")
    return doc


def _from_index(spec: str, path: Path) -> ShardSource:
    doc = read_index(path)
    folder = path.parent
    splits = {}
    for name in SPLITS:
        if name not in doc["splits"]:
            continue
        entry = doc["splits"][name]
        urls = [str(folder / s) if _is_local(s) and not os.path.isabs(s) else s for s in entry["shards"]]
        _check_local(urls, f"wds:{spec}")
        counts = entry.get("class_counts") or [0] * len(doc["class_names"])
        splits[name] = ShardSplit(urls, entry["count"], [int(c) for c in counts])
    return ShardSource(spec, splits, [str(c) for c in doc["class_names"]], "index", doc)


def _split_patterns(spec: str) -> dict[str, str]:
    if re.match(r"^\s*(train|val|test)\s*=", spec):
        patterns = {}
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            key, eq, value = part.partition("=")
            key = key.strip().lower()
            if not eq or key not in SPLITS or not value.strip():
                raise InputError(f"wds: '{part}' must be train=PATTERN, val=PATTERN or test=PATTERN")
            patterns[key] = value.strip()
        if "train" not in patterns:
            raise InputError("wds: train=PATTERN is required (val= and test= are optional)")
        return patterns
    if "{split}" in spec:
        found = {"train": spec.replace("{split}", "train")}
        for name in ("val", "test"):
            found[name] = spec.replace("{split}", name)
        return found
    return {"train": spec}


def _split_urls(patterns: dict[str, str], spec: str) -> dict[str, list[str]]:
    """Shard URLs per split. With `{split}`, the val and test shards are those of the range
    that exist (their splits are smaller than train's); train's must all exist."""
    urls = {s: expand_pattern(p) for s, p in patterns.items()}
    if "{split}" in spec:
        for name in ("val", "test"):
            urls[name] = [u for u in urls[name] if not _is_local(u) or _local_path(u).is_file()]
            if not urls[name]:
                del urls[name]
    for u in urls.values():
        _check_local(u, f"wds:{spec}")
    return urls


def open_source(name: str) -> ShardSource:
    """The `wds:SPEC` dataset named on the command line (see the module doc)."""
    spec = name.strip()[4:].strip() if is_wds(name) else name.strip()
    if not spec:
        raise InputError("wds needs shards: --data wds:FOLDER (from 'cnncli datasets pack') or wds:PATTERN")
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            return _from_index(spec, path / INDEX_NAME)
        tars = sorted(p.name for p in path.glob("*.tar"))
        by_split = {s: [str(path / t) for t in tars if t.startswith(f"{s}-")] for s in SPLITS}
        if not by_split["train"]:
            raise InputError(f"wds:{spec}: no {INDEX_NAME} and no train-*.tar shards in the folder")
        return _counted(spec, {s: u for s, u in by_split.items() if u})
    if path.suffix == ".json" and path.is_file():
        return _from_index(spec, path)
    urls = _split_urls(_split_patterns(spec), spec)
    indexed = _beside_index(spec, urls)
    return indexed or _counted(spec, urls)


def _beside_index(spec: str, urls: dict[str, list[str]]) -> ShardSource | None:
    """The pack index in the shards' folder, when it describes exactly these shards."""
    first = urls["train"][0]
    if not _is_local(first):
        return None
    index_path = _local_path(first).parent / INDEX_NAME
    if not index_path.is_file():
        return None
    try:
        source = _from_index(spec, index_path)
    except InputError:
        return None
    splits = {}
    for name, wanted in urls.items():
        names = sorted(Path(u).resolve() for u in wanted)
        match = [s for s in source.splits.values() if sorted(Path(u).resolve() for u in s.urls) == names]
        if not match:
            return None
        splits[name] = ShardSplit(wanted, match[0].count, match[0].class_counts)
    return ShardSource(spec, splits, source.class_names, "index", source.index)


def _open_stream(url: str):
    from webdataset.gopen import gopen

    try:
        return gopen(url, "rb")
    except Exception as e:  # noqa: BLE001 - gopen raises OSError, ValueError, or the pipe's own
        raise InputError(f"wds: cannot open {url}: {e}") from None


def count_shard(url: str) -> tuple[int, dict[int, int]]:
    """(samples, count per class number) of one shard from its headers and `.cls` members."""
    from webdataset.tariterators import base_plus_ext

    images: set[str] = set()
    labels: dict[str, int] = {}
    stream = _open_stream(url)
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, ext = base_plus_ext(member.name)
                if key is None:
                    continue
                ext = ext.lower()
                if ext in IMAGE_KEYS:
                    images.add(key)
                elif ext == "cls":
                    labels[key] = _label(tar.extractfile(member).read(65), url, key)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"wds: {url} is not a readable tar shard: {e}") from None
    finally:
        stream.close()
    per_class: dict[int, int] = {}
    for key in images:
        if key not in labels:
            raise InputError(f"wds: {url}: sample {key} has an image but no .cls label")
        per_class[labels[key]] = per_class.get(labels[key], 0) + 1
    return len(images), per_class


def _counted(spec: str, urls: dict[str, list[str]]) -> ShardSource:
    from cnncli.output import note

    note(f"wds:{spec}: no {INDEX_NAME}; counting samples from the tar headers of "
         f"{sum(len(u) for u in urls.values()):,} shards")
    counts: dict[str, tuple[int, dict[int, int]]] = {}
    for name, shard_urls in urls.items():
        total, per_class = 0, {}
        for url in shard_urls:
            n, classes = count_shard(url)
            total += n
            for c, k in classes.items():
                per_class[c] = per_class.get(c, 0) + k
        counts[name] = (total, per_class)
    if counts["train"][0] == 0:
        raise InputError(f"wds:{spec}: the train shards hold no samples")
    num_classes = max(max(pc, default=-1) for _, pc in counts.values()) + 1
    splits = {name: ShardSplit(urls[name], total, [pc.get(c, 0) for c in range(num_classes)])
              for name, (total, pc) in counts.items()}
    return ShardSource(spec, splits, [str(c) for c in range(num_classes)], "tar headers")


def _label(data: bytes, url: str, key: str) -> int:
    text = data.decode("utf-8", "replace").strip()
    if not text.isdigit() or len(text) > 9:
        raise InputError(f"wds: {url}: sample {key}: label '{text[:20]}' is not a class number")
    return int(text)


# ------------------------------------------------------------------------------ decoding
def decode_image_bytes(data: bytes, name: str):
    """Image bytes of a shard member as uint8 (C, H, W), C 1 or 3; InputError naming the sample.

    The same decoders as image files (cnncli.data.transforms): Pillow for PNG, torchvision's
    libjpeg/libwebp for the rest, headers priced first.
    """
    import warnings

    import torch
    from torchvision.io import decode_image

    from cnncli.data import transforms

    where = Path(name)
    if not data:
        raise InputError(f"{name}: empty image")
    transforms._check_pixel_count(where, data)
    if data.startswith(transforms._PNG_SIGNATURE):
        return transforms._decode_png(where, data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), apply_exif_orientation=True)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"{name}: {transforms._decoder_message(e)}") from None
    if image.dim() == 4:
        image = image[0]
    if image.shape[0] in (2, 4):
        image = image[: image.shape[0] - 1]
    if image.shape[0] not in (1, 3):
        raise InputError(f"{name}: unsupported image layout {tuple(image.shape)}")
    return image.contiguous()


# ------------------------------------------------------------------------------ the dataset
def _slot_seed(seed: int, epoch: int, slot: int = -1) -> int:
    # a plain integer mix: random.Random(int) is the same in every process (no hash salt)
    return (seed * 1_000_003 + epoch) * 1_000_033 + slot + 1


def _buffer_shuffle(items: Iterator, rng: random.Random, size: int) -> Iterator:
    """A bounded shuffle: hold `size` items, emit a random one as each new one arrives."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def _world() -> tuple[int, int]:
    """(rank, world size): torch.distributed when initialized, else torchrun's environment."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _torch_iterable():
    from torch.utils.data import IterableDataset

    return IterableDataset


class ShardDataset(_torch_iterable()):
    """The samples of one split's shards: (transform(uint8 image), label), split by rank and worker.

    `rank`/`world` default to torch.distributed's (or torchrun's environment). `shuffle=False`
    reads shards and samples in order (evaluation). `len()` is the samples this rank yields.
    """

    def __init__(self, urls: list[str], count: int, num_classes: int,
                 transform: Callable | None = None, seed: int = 0, shuffle: bool = True,
                 rank: int | None = None, world: int | None = None, channels: int | None = None,
                 buffer: int = SHUFFLE_BUFFER, with_keys: bool = False):
        if not urls:
            raise InputError("wds: no shards to read")
        auto_rank, auto_world = _world()
        self.urls = list(urls)
        self.count = int(count)
        self.num_classes = int(num_classes)
        self.transform = transform
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = auto_rank if rank is None else int(rank)
        self.world = auto_world if world is None else int(world)
        self.channels = channels
        self.buffer = max(1, int(buffer))
        self.with_keys = with_keys
        if not 0 <= self.rank < self.world:
            raise InputError(f"wds: rank {self.rank} is not in a world of {self.world}")
        self._epoch = multiprocessing.Value("q", 0, lock=False)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration follows (seen by persistent workers too)."""
        self._epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def __len__(self) -> int:
        return self.count if self.world == 1 else self.count // self.world

    def plan(self, epoch: int, worker: int = 0, workers: int = 1) -> tuple[list[str], int, int]:
        """(shards this slot reads, sample stride, sample offset) for (rank, worker) at `epoch`."""
        order = list(self.urls)
        if self.shuffle:
            random.Random(_slot_seed(self.seed, epoch)).shuffle(order)
        slots = self.world * workers
        slot = self.rank * workers + worker
        if len(order) >= slots:  # whole shards per slot: each file is opened by one process
            return order[slot::slots], 1, 0
        if len(order) >= self.world:  # shards per rank, samples per worker
            return order[self.rank::self.world], workers, worker
        return order, slots, slot  # too few shards: every slot reads all, keeps its samples

    def _samples(self, urls: list[str], stride: int, offset: int) -> Iterator[tuple[str, str, bytes, int]]:
        from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

        def reraise(exn: Exception) -> bool:
            raise RuntimeFailure(f"wds: cannot read shard {exn.args[-1] if exn.args else ''}: "
                                 f"{exn.args[0] if exn.args else exn}") from None

        stream = group_by_keys(tar_file_expander(url_opener(({"url": u} for u in urls), handler=reraise),
                                                 handler=reraise), handler=reraise)
        for i, sample in enumerate(stream):
            if stride > 1 and i % stride != offset:
                continue
            ext = next((k for k in IMAGE_KEYS if k in sample), None)
            url, key = sample.get("__url__", "?"), sample["__key__"]
            if ext is None or "cls" not in sample:
                continue  # a sample of other members (metadata): not an image sample
            label = _label(sample["cls"], url, key)
            if label >= self.num_classes:
                raise RuntimeFailure(f"wds: {url}: sample {key} has class {label}, but the dataset has "
                                     f"{self.num_classes} classes")
            yield url, key, sample[ext], label

    def _slot_stream(self, epoch: int, worker: int, workers: int):
        urls, stride, offset = self.plan(epoch, worker, workers)
        samples = self._samples(urls, stride, offset)
        if self.shuffle:
            rng = random.Random(_slot_seed(self.seed, epoch, self.rank * workers + worker))
            samples = _buffer_shuffle(samples, rng, self.buffer)
        return samples

    def _quota(self, worker: int, workers: int) -> int | None:
        if self.world == 1:
            return None
        share = len(self)
        return share // workers + (1 if worker < share % workers else 0)

    def __iter__(self):
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        quota = self._quota(worker, workers)
        produced, rounds = 0, 0
        while True:
            for url, key, data, label in self._slot_stream(epoch + rounds * 7919, worker, workers):
                if quota is not None and produced >= quota:
                    return
                yield self._item(url, key, data, label)
                produced += 1
            if quota is None or produced >= quota:
                return
            if produced == 0 and rounds == 0:
                raise RuntimeFailure(f"wds: rank {self.rank} worker {worker} got no samples; "
                                     "pack into more shards or use fewer workers")
            rounds += 1  # DDP: top this rank up to its equal share from another pass over its shards

    def _item(self, url: str, key: str, data: bytes, label: int):
        try:
            image = decode_image_bytes(data, f"{url}:{key}")
        except InputError as e:
            raise RuntimeFailure(str(e)) from None
        if self.channels == 3 and image.shape[0] == 1:
            image = image.expand(3, -1, -1).contiguous()
        elif self.channels == 1 and image.shape[0] == 3:
            from torchvision.transforms.v2.functional import rgb_to_grayscale

            image = rgb_to_grayscale(image)
        if self.transform is not None:
            image = self.transform(image)
        if self.with_keys:
            return image, label, f"{url}:{key}"
        return image, label

    def __getstate__(self):
        # shared memory travels only to a process being started (DataLoader's spawned workers);
        # any other copy (a deepcopy, a pickle) gets its own epoch counter with the same value
        from multiprocessing.context import get_spawning_popen

        state = dict(self.__dict__)
        if get_spawning_popen() is None:
            state["_epoch"] = int(self._epoch.value)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if isinstance(self._epoch, int):
            self._epoch = multiprocessing.Value("q", self._epoch, lock=False)


def split_dataset(source: ShardSource, split: str, **kwargs) -> ShardDataset:
    """The ShardDataset of one split of a source (kwargs as ShardDataset takes them)."""
    if split not in source.splits:
        raise InputError(f"wds:{source.spec} has no {split} split (it has {', '.join(source.splits)})")
    s = source.splits[split]
    if "channels" not in kwargs and source.index.get("channels") in (1, 3):
        kwargs["channels"] = source.index["channels"]
    return ShardDataset(s.urls, s.count, source.num_classes, **kwargs)


# ------------------------------------------------------------------------------ random access for training
def localize(url: str) -> str:
    """A local path for a shard URL: itself, or (a `pipe:` command) its output copied once into
    the cache folder (`cache_dir()/shards/`, keyed by the command), read from there afterwards."""
    if _is_local(url):
        return str(_local_path(url))
    import hashlib
    import shutil

    from cnncli.data.registry import cache_dir
    from cnncli.output import note

    folder = cache_dir() / "shards"
    target = folder / f"{hashlib.sha256(url.encode()).hexdigest()[:24]}.tar"
    if target.is_file():
        return str(target)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{target.name}.{os.getpid()}.tmp"
    note(f"wds: copying {url} into {folder} once (training reads shards at random)")
    stream = _open_stream(url)
    try:
        with open(tmp, "wb") as f:
            shutil.copyfileobj(stream, f, 1 << 20)
        stream.close()
        os.replace(tmp, target)
    except Exception as e:  # noqa: BLE001 - the pipe's exit status, a full disk: one line either way
        tmp.unlink(missing_ok=True)
        raise InputError(f"wds: cannot read {url}: {e}") from None
    return str(target)


class TarSource:
    """The samples of local tar shards with random access (an `ImageSource`, data/stream.py).

    Built from the tar headers: each sample's image member is an (offset, size) in its shard,
    its label the `.cls` member; `load(i)` reads those bytes and decodes them as a file is
    decoded. `groups[i]` is the shard of sample i (for orders that keep a rank on its shards).
    """

    def __init__(self, urls: list[str], class_names: list[str]):
        import torch
        from webdataset.tariterators import base_plus_ext

        self.shards = [localize(u) for u in urls]
        self.urls = list(urls)
        self.class_names = list(class_names)
        ids, labels, groups, offsets, sizes = [], [], [], [], []
        for g, (url, path) in enumerate(zip(self.urls, self.shards)):
            found: dict[str, list] = {}
            try:
                with tarfile.open(path, "r:") as tar:
                    for member in tar:
                        if not member.isreg():
                            continue
                        key, ext = base_plus_ext(member.name)
                        if key is None:
                            continue
                        ext = ext.lower()
                        entry = found.setdefault(key, [None, None])
                        if ext in IMAGE_KEYS:
                            entry[0] = (member.offset_data, member.size)
                        elif ext == "cls":
                            entry[1] = _label(tar.extractfile(member).read(65), url, key)
            except (tarfile.TarError, OSError, EOFError) as e:
                raise InputError(f"wds: {url} is not a readable (uncompressed) tar shard: {e}") from None
            for key, (image, label) in found.items():
                if image is None:
                    continue
                if label is None:
                    raise InputError(f"wds: {url}: sample {key} has an image but no .cls label")
                if label >= len(self.class_names):
                    raise InputError(f"wds: {url}: sample {key} has class {label}, but the dataset has "
                                     f"{len(self.class_names)} classes")
                ids.append(f"{url}:{key}")
                labels.append(label)
                groups.append(g)
                offsets.append(image[0])
                sizes.append(image[1])
        self.ids = ids
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.groups = torch.tensor(groups, dtype=torch.int64)
        self.offsets = torch.tensor(offsets, dtype=torch.int64)
        self.sizes = torch.tensor(sizes, dtype=torch.int64)
        self.min_side: int | None = None
        self._files: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, i: int) -> bytes:
        g = int(self.groups[i])
        f = self._files.get(g)
        if f is None:
            f = self._files[g] = open(self.shards[g], "rb")  # noqa: SIM115 - kept open for the next samples
        f.seek(int(self.offsets[i]))
        return f.read(int(self.sizes[i]))

    def load(self, i: int):
        from cnncli.data.stream import BadImage, decode_photo_data

        try:
            data = self.read(i)
        except OSError as e:
            raise BadImage(self.ids[i], f"cannot read: {e.strerror or e}") from None
        return decode_photo_data(data, self.ids[i], self.min_side)

    def declared_size(self, i: int):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.read(i))) as image:
                w, h = image.size
                return h, w
        except Exception:  # noqa: BLE001 - unknown size
            return None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}  # each worker opens the shards itself
        return state


def shard_order(groups, epoch: int, seed: int, rank: int, world: int):
    """This rank's sample order for an epoch: shards shuffled by (seed, epoch), samples shuffled
    within each shard, the whole cut into `world` equal runs, so each rank reads its own shards
    (two ranks share at most the shard at a boundary) and every sample is used once."""
    import torch

    n = len(groups)
    gen = torch.Generator().manual_seed(_slot_seed(seed, epoch))
    shard_rank = torch.randperm(int(groups.max()) + 1 if n else 1, generator=gen)
    within = torch.randperm(n, generator=gen)
    order = torch.argsort(shard_rank[groups] * n + within)
    per_rank = n // world
    return order[rank * per_rank:(rank + 1) * per_rank]


def _stream_split_class():
    from cnncli.data.stream import StreamSplit, SubsetSource

    class ShardStreamSplit(StreamSplit):
        """A streaming split of shards whose epoch order keeps each rank on its own shards."""

        def epoch_order(self, epoch: int, seed: int, rank: int, world: int):
            src = self.src  # a SubsetSource of the TarSource, or a --cache store over one
            groups = src.groups if hasattr(src, "groups") else src.base.groups[src.positions]
            return shard_order(groups, epoch, seed, rank, world)

        def subset(self, index):
            return ShardStreamSplit(SubsetSource(self.src, index), self.name, self.source, self.config)

    return ShardStreamSplit


def load_shards(name: str, *, val_fraction: float = 0.1, max_samples: int | None = None, seed: int = 0,
                hold_out_test: bool = True, test_fraction: float = 0.2, info: dict[str, Any] | None = None):
    """`wds:SPEC` as a StreamingSplits: splits from the index (or held out as for folders)."""

    from cnncli.data.folders import StreamingSplits, _details, plan_splits
    from cnncli.data.index import ImageIndex
    from cnncli.data.stream import SubsetSource

    source = open_source(name)
    urls = [u for s in source.splits.values() for u in s.urls]
    tars = TarSource(urls, source.class_names)
    split_of = {u: s for s, sp in source.splits.items() for u in sp.urls}
    splits = [split_of[tars.urls[int(g)]] for g in tars.groups.tolist()]
    for s, sp in source.splits.items():
        found = splits.count(s)
        if source.counted_from == "index" and found != sp.count:
            raise InputError(f"wds:{source.spec}: the index says {sp.count:,} {s} samples, the shards hold {found:,}")
    ix = ImageIndex(tars.ids, tars.labels.tolist(), splits, source.class_names, f"wds:{source.spec}", source.spec)
    plan, how = plan_splits(ix, val_fraction, max_samples, seed, hold_out_test, test_fraction)
    details = dict(info or {})
    details.update(how)
    details["kind"] = "stream"
    details["shards"] = {s: len(sp.urls) for s, sp in source.splits.items()}
    details["counted_from"] = source.counted_from

    split_class = _stream_split_class()
    parts = {s: split_class(SubsetSource(tars, pos), ix.source, source.spec) for s, pos in plan.items()}
    return StreamingSplits(parts["train"], parts["val"], parts["test"], source.class_names,
                           _details(ix, parts, details, seed, val_fraction, max_samples, None))
