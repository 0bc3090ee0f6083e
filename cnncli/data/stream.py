"""Streaming datasets: an index of samples, decoded and transformed in DataLoader workers.

The other kind of dataset beside the in-memory uint8 tensors of `splits.ImageData` (which stay
the fast path for Fashion-MNIST, CIFAR-10, synthetic data and small folders). A `StreamSplit`
looks like an `ImageData` to the rest of the program (`labels`, `class_names`, `ids`, `name`,
`source`, `len()`, `subset()`, `class_counts()`, and `images`, which slices like a tensor and
decodes on demand), so callers that only slice a few images (show, mistakes, export's sample)
keep working; the trainer and `evaluate` ask it for whole epochs instead (`epoch_batches`,
`eval_batches`), which run in `torch.utils.data` worker processes.

## What a source must provide (the interface other sources, e.g. wds shards or a cache, implement)

    class MySource:                               # see `ImageSource` below
        class_names: list[str]                    # shared by every split
        labels: torch.Tensor                      # int64 (N,), one per sample, on the CPU
        ids: list[str]                            # N names a person can find (file paths)
        def __len__(self) -> int: ...             # N
        def load(self, i: int) -> torch.Tensor:   # sample i as uint8 (C, H, W), C 1 or 3, any H, W
            ...                                   # raise BadImage(ids[i], reason) when it cannot

    optional:  def declared_size(self, i) -> tuple[int, int] | None    # (H, W) from a header

`load` runs in worker processes: the source must be picklable (paths and small tensors, no
open files; open them lazily inside `load`), and it must not draw random numbers. It must keep
its memory bounded per sample (refuse what a header declares too big before decoding: see
`decode_photo`). `SubsetSource(source, positions)` views part of any source, so a source needs
no `subset` of its own. Random access is what `load(i)` promises; a sequential format (tar
shards) either indexes its members or wraps a cache that does.

## How the trainer asks for an epoch

    split.configure(StreamConfig(size=224, train=True, ...))    # once, when the network is known
    for step, positions, x, skipped in split.epoch_batches(order, batch_size, epoch, seed, start_step):
        # x: uint8 (B, C, size, size) (pinned on CUDA); positions: int64 (B,) indices into split
        # (the samples of order[step*bs:(step+1)*bs] that decoded, in order); skipped: ids dropped

`order` is this rank's sample order for the epoch (the trainer draws it from (seed, epoch) and
shards it by rank); batches start at `start_step`, so a resumed epoch continues with exactly
the samples and augmentations it would have had. Each sample's random transform is drawn from
its own generator seeded by `sample_seed(seed, epoch, step, position)`, never from a worker's
RNG state, so the result does not depend on the number of workers or on which worker ran it.
`eval_batches(batch_size, index)` yields (positions, x) with the eval transform.

## The decoder (data/photo_decode.py)
PIL (Pillow), on purpose: torchvision 0.29 deprecates its image decoding (torchvision.io) in
favour of TorchCodec, which is not installed here and is built for video; Pillow is already a
dependency (torchvision needs it), decodes PNG/JPEG/WebP without crashing on corrupt PNG data
(torchvision's decode_png segfaults: see transforms._decode_pillow), reads the size from a header
without decoding (the pixel-count bound), and its JPEG `draft` mode decodes at 1/2, 1/4 or 1/8
scale via the DCT, which makes evaluating on large photos several times cheaper in time and
memory.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from cnncli.data.index import PathTable, PickedPaths
from cnncli.data.photo_decode import BadImage, declared_size, decode_photo, decode_photo_data  # noqa: F401 - re-exported
from cnncli.errors import InputError, RuntimeFailure

DEFAULT_CROP_PCT = 0.875
INTERPOLATIONS = ("bilinear", "bicubic")  # what pretrained configs say and both resizers do alike


def interpolation_of(name: str | None) -> str:
    """A pretrained config's interpolation as cnncli resizes (anything else: bilinear)."""
    name = str(name or "").lower()
    return name if name in INTERPOLATIONS else "bilinear"


class BadImageFailure(RuntimeFailure):
    """A training or evaluation pass met a file it cannot decode (without --skip-bad-images)."""


@runtime_checkable
class ImageSource(Protocol):
    """What a streaming split reads samples from (see the module doc)."""

    class_names: list[str]
    labels: torch.Tensor
    ids: list[str]

    def __len__(self) -> int: ...

    def load(self, i: int) -> torch.Tensor: ...


def stream_choice(stream: bool | None, cache: str | None, skip_bad_images: bool) -> bool | None:
    """--stream/--no-stream as given, or True where only the streaming path can do what was asked:
    --cache (the store is filled from decoded batches) and --skip-bad-images (a batch drops the
    files that fail; the in-memory path decodes everything up front and stops at the first)."""
    if stream is None and (cache or skip_bad_images):
        return True
    if stream is False and skip_bad_images:
        raise InputError("--skip-bad-images skips files on the streaming path: drop --no-stream")
    return stream


def usable_cores() -> int:
    """The CPU cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def sample_seed(seed: int, epoch: int, step: int, position: int) -> int:
    """The seed of one sample's random transform: a function of where it is in the run only."""
    return (((seed * 1_000_003 + epoch) * 100_003 + step) * 10_007 + position) % (2**63 - 1)


# ------------------------------------------------------------------ sources
class FileSource:
    """Image files with labels (an `index.ImageIndex` split): `load(i)` decodes file i."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int] | torch.Tensor, class_names: Sequence[str]):
        self.ids = paths if isinstance(paths, PathTable) else PathTable(paths)  # no object per file
        self.labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int, min_side: int | None = None) -> torch.Tensor:
        """File i decoded; `min_side`: see decode_photo (the eval transform's, via load_sample)."""
        return decode_photo(self.ids[i], min_side)

    def declared_size(self, i: int) -> tuple[int, int] | None:
        size = declared_size(self.ids[i])
        return None if size is None else size[1:]


class SubsetSource:
    """The samples `positions` of another source, in that order."""

    def __init__(self, source, positions: torch.Tensor | Sequence[int]):
        base = source.base if isinstance(source, SubsetSource) else source
        pos = torch.as_tensor(positions, dtype=torch.int64).reshape(-1)
        self.positions = source.positions[pos] if isinstance(source, SubsetSource) else pos
        self.base = base
        self.class_names = list(base.class_names)
        self.labels = source.labels[pos]  # the view's labels (a relabelled view keeps its own)
        self.ids = PickedPaths(base.ids, self.positions)  # read from the base's table when asked

    def __len__(self) -> int:
        return len(self.positions)

    def load(self, i: int) -> torch.Tensor:
        return self.base.load(int(self.positions[i]))

    def declared_size(self, i: int):
        fn = getattr(self.base, "declared_size", None)
        return fn(int(self.positions[i])) if fn else None


def load_sample(source, i: int, min_side: int | None = None) -> torch.Tensor:
    """Sample i of `source`; a file a FileSource names decoded at the JPEG scale `min_side` allows.

    The scale is the caller's (the eval transform's), not a setting of the source: the splits of
    one folder share their FileSource, and a training pass decodes at full resolution whatever
    an eval pass did before it, in this process or in workers forked after it."""
    while isinstance(source, SubsetSource):
        source, i = source.base, int(source.positions[i])
    return source.load(i, min_side) if isinstance(source, FileSource) else source.load(i)


# ------------------------------------------------------------------ transforms
@dataclass(frozen=True)
class StreamConfig:
    """How a streaming split turns samples into batches (set once the network is known)."""

    size: int = 224  # the square side the network takes
    channels: int = 3  # what every sample is converted to (gray repeated, colour to luma)
    crop_pct: float = DEFAULT_CROP_PCT  # eval: resize the shorter side to size / crop_pct, center crop
    squash: bool = False  # eval: the whole image to size x size instead (a run trained in memory)
    interpolation: str = "bilinear"  # every resize (antialiased): the pretrained weights' own, or bilinear
    train: bool = False  # RandomResizedCrop + horizontal flip, else the eval transform
    workers: int | None = None  # None: the usable cores; 0: in this process
    pin_memory: bool = False  # on CUDA: page-locked batches, copied with non_blocking=True
    prefetch: int = 2  # batches each worker prepares ahead
    skip_bad: bool = False  # --skip-bad-images: drop, count and report, instead of stopping

    def resolved_workers(self) -> int:
        return usable_cores() if self.workers is None else max(0, int(self.workers))


class PhotoTransform:
    """Sample -> uint8 (channels, size, size) with torchvision.transforms.v2, aspect ratio kept.

    train: RandomResizedCrop(size) (scale 0.08-1, ratio 3/4-4/3, as timm and torchvision train
    ImageNet) and a horizontal flip; eval: resize the shorter side to size / crop_pct, then a
    center crop of size x size. The batch augment list (data/augment.py) runs after, on whole
    batches, as for tensor datasets. Random draws come from torch's global generator, which
    `apply` seeds per sample and restores after.
    """

    def __init__(self, cfg: StreamConfig):
        from torchvision.transforms import v2

        self.cfg = cfg
        size = int(cfg.size)
        mode = v2.InterpolationMode(interpolation_of(cfg.interpolation))
        if cfg.train:
            self.ops = v2.Compose([v2.RandomResizedCrop(size, interpolation=mode, antialias=True),
                                   v2.RandomHorizontalFlip()])
        elif cfg.squash:  # as the in-memory path prepares images: all of it, the aspect ratio not kept
            self.resize_to = size
            self.ops = v2.Resize((size, size), interpolation=mode, antialias=True)
        else:
            self.resize_to = max(size, int(math.floor(size / cfg.crop_pct)))
            self.ops = v2.Compose([v2.Resize(self.resize_to, interpolation=mode, antialias=True), v2.CenterCrop(size)])

    def min_side(self) -> int | None:
        """The shorter side the eval transform needs from the decoder (None: full resolution)."""
        return None if self.cfg.train else self.resize_to

    def apply(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        channels = self.cfg.channels
        if image.shape[0] != channels:
            if image.shape[0] == 1:
                image = image.expand(channels, -1, -1)
            else:
                import torchvision.transforms.v2.functional as F

                image = F.rgb_to_grayscale(image)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator the ops draw from, alone
            out = self.ops(image)
        return out.contiguous()


def own_eval(meta, pipeline: dict | None = None) -> dict[str, Any]:
    """How a network's test images are made when they stream (StreamConfig's crop_pct, squash,
    interpolation): the centre crop its document's pipeline records when it was trained
    streaming, or `pipeline`'s (a pretrained network's: its weights' eval transform); the whole
    image squashed when it is a run trained in memory (so a folder too large for memory is still
    scored as the run saw its images); else the default crop."""
    pipeline = pipeline or (((meta or {}).get("data_pipeline") or {}) if hasattr(meta or {}, "get") else {})
    if pipeline.get("kind") == "stream":
        return {"crop_pct": float(pipeline.get("crop_pct") or DEFAULT_CROP_PCT), "squash": False,
                "interpolation": interpolation_of(pipeline.get("interpolation"))}
    return {"crop_pct": DEFAULT_CROP_PCT, "squash": bool(meta)}


def weights_pipeline(info) -> dict | None:
    """The eval transform a timm network's pretrained config gives its weights (timm's validate.py
    uses it for a checkpoint file too): shorter side to size / crop_pct with the config's resize,
    the centre crop. None for a network that is not timm's."""
    if getattr(info, "source", None) != "timm":
        return None
    cfg = getattr(info, "extra", None) or {}
    return {"kind": "stream", "crop_pct": float(cfg.get("crop_pct") or DEFAULT_CROP_PCT),
            "interpolation": interpolation_of(cfg.get("interpolation"))}


def trained_streaming(meta) -> bool:
    """The network's eval transform is a streaming one (a centre crop): its photos must stream too."""
    return bool(meta) and ((meta.get("data_pipeline") or {}).get("kind") == "stream")


def photo_for_network(path: str | Path, input_size: Sequence[int], crop_pct: float | None = None,
                      interpolation: str | None = None) -> torch.Tensor:
    """One file through a streaming run's eval transform (predict): uint8 (C, H, H); InputError.

    The full-size decode lives only inside this call, so a batch holds network-sized images."""
    cfg = StreamConfig(size=int(input_size[1]), channels=int(input_size[0]), crop_pct=float(crop_pct or DEFAULT_CROP_PCT),
                       interpolation=interpolation_of(interpolation))
    transform = PhotoTransform(cfg)
    try:
        image = decode_photo(path, transform.min_side())
    except BadImage as e:
        raise InputError(str(e)) from None
    return transform.apply(image, 0)


# ------------------------------------------------------------------ the DataLoader pieces
class _Samples(torch.utils.data.Dataset):
    """Jobs (position, seed) to (position, image or None, reason): decoding never raises here, so
    a bad file reaches the main process as data and is reported there in one line."""

    def __init__(self, source, transform: PhotoTransform):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, job: tuple[int, int]):
        i, seed = job
        try:
            image = load_sample(self.source, i, self.transform.min_side())
        except BadImage as e:
            return i, None, str(e)
        except InputError as e:
            return i, None, str(e)
        return i, self.transform.apply(image, seed), None


def _collate(items):
    keep = [(i, x) for i, x, _ in items if x is not None]
    bad = [reason for _, x, reason in items if x is None]
    positions = torch.tensor([i for i, _ in keep], dtype=torch.int64)
    x = torch.stack([x for _, x in keep]) if keep else None
    return positions, x, bad


class _Plan:
    """The batch sampler: yields the batches of jobs set for the next pass (persistent workers
    keep running between passes; only this plan changes)."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc `malloc_trim`; a no-op elsewhere).

    Workers are forked from this process: every page it holds at the fork is shared with them
    until this process writes it, and then copied. The freed activations of training steps stay
    in glibc's heap, are reused by the next step, and so were copied once per fork: a streamed
    resnet18 run's workers held ~480 MB more after the first validation pass (when they are
    started again) than in the first epoch. Trimmed before the fork, those pages are not shared."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim this way
        pass


class _Loader:
    """A DataLoader over one transform, kept (with its persistent workers) across epochs."""

    def __init__(self, source, cfg: StreamConfig):
        self.transform = PhotoTransform(cfg)
        self.plan = _Plan()
        workers = cfg.resolved_workers()
        kwargs: dict[str, Any] = {}
        if workers > 0:
            kwargs = {"persistent_workers": True, "prefetch_factor": max(1, cfg.prefetch)}
        self.loader = torch.utils.data.DataLoader(
            _Samples(source, self.transform), batch_sampler=self.plan, num_workers=workers,
            collate_fn=_collate, pin_memory=cfg.pin_memory, **kwargs)

    def run(self, batches: list[list[tuple[int, int]]]):
        self.plan.batches = batches
        if getattr(self.loader, "_iterator", None) is None and self.loader.num_workers > 0:
            release_free_memory()  # the workers about to be forked inherit less of this process
        return iter(self.loader)

    def stop(self) -> None:
        """Shut the persistent workers down now (the next `run` starts new ones)."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None


class Workers:
    """The splits of one dataset share this: one loader's workers run at a time.

    Every loader (train and eval transform, per split) keeps its workers between passes, but a
    pass on another one shuts them down first: val and test passes do not add their workers to
    the idle training ones (each worker holds a copy-on-write share of the main process that
    grows as the main process writes), so the process tree holds `workers` workers at most.
    """

    def __init__(self):
        self.active: _Loader | None = None

    def switch_to(self, loader: _Loader | None) -> None:
        if self.active is not None and self.active is not loader:
            self.active.stop()
        self.active = loader


# ------------------------------------------------------------------ the split
class LazyImages:
    """`split.images`: slicing gives uint8 batches (eval transform), decoded in this process.

    For callers that take a few images (show, mistakes, a calibration sample); passes over a
    whole split use `StreamSplit.eval_batches`, which runs in workers.
    """

    def __init__(self, split: StreamSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        cfg = self.split.config
        return (len(self.split), cfg.channels, cfg.size, cfg.size)

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    def __getitem__(self, sel) -> torch.Tensor:
        if isinstance(sel, int):
            return self[[sel]][0]
        if isinstance(sel, slice):
            positions = list(range(len(self.split)))[sel]
        else:
            positions = torch.as_tensor(sel, dtype=torch.int64).reshape(-1).tolist()
        transform = PhotoTransform(replace(self.split.config, train=False))
        out = []
        for i in positions:
            try:
                out.append(transform.apply(load_sample(self.split.src, i, transform.min_side()), 0))
            except (BadImage, InputError) as e:
                raise BadImageFailure(str(e)) from None
        cfg = self.split.config
        return torch.stack(out) if out else torch.zeros((0, cfg.channels, cfg.size, cfg.size), dtype=torch.uint8)


class StreamSplit:
    """One split of a streaming dataset (see the module doc): a source and how to batch it."""

    streaming = True

    def __init__(self, source, name: str, source_name: str, config: StreamConfig | None = None):
        self.src = source
        self.name = name
        self.source = source_name  # as ImageData.source: where it was loaded from
        self.config = config or StreamConfig()
        self.skipped: list[str] = []  # what --skip-bad-images dropped (one line each)
        self._loaders: dict[bool, _Loader] = {}
        self.workers = Workers()  # StreamingSplits gives its splits one (see Workers)
        # `--cache` of a split not needed yet (val, test): the source with a store, built in this
        # process when the split's first pass starts (data/cache.py, cache_splits)
        self.pending_source: Callable[[], Any] | None = None

    # -- what ImageData has
    @property
    def labels(self) -> torch.Tensor:
        return self.src.labels

    @labels.setter
    def labels(self, value: torch.Tensor) -> None:  # relabelled (eval --pretrained): this split's own view
        if not isinstance(self.src, SubsetSource):
            self.src = SubsetSource(self.src, torch.arange(len(self.src)))
        self.src.labels = torch.as_tensor(value, dtype=torch.int64)

    @property
    def class_names(self) -> list[str]:
        return list(self.src.class_names)

    @property
    def ids(self) -> list[str]:
        return list(self.src.ids)

    @property
    def images(self) -> LazyImages:
        return LazyImages(self)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config.channels, self.config.size, self.config.size)

    @property
    def num_classes(self) -> int:
        return len(self.src.class_names)

    def __len__(self) -> int:
        return len(self.src)

    def ready(self) -> None:
        """Build what a pass needs first (a deferred `--cache` store), in this process."""
        if self.pending_source is not None:
            make, self.pending_source = self.pending_source, None
            self.src = make()

    def subset(self, index: torch.Tensor) -> StreamSplit:
        self.ready()
        return self._shares(StreamSplit(SubsetSource(self.src, index), self.name, self.source, self.config))

    def _shares(self, split: StreamSplit) -> StreamSplit:
        split.workers = self.workers  # a part used in place of this split runs its workers in turn
        return split

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def decoded_sample(self) -> torch.Tensor:
        """Every sample with the eval transform, in this process, files that fail left out (for
        measuring mean/std on a small subset: a bad file is reported when training meets it)."""
        transform = PhotoTransform(replace(self.config, train=False))
        out = []
        for i in range(len(self)):
            try:
                out.append(transform.apply(load_sample(self.src, i, transform.min_side()), 0))
            except (BadImage, InputError):
                continue
        if not out:
            raise InputError(f"{self.name}: none of the {len(self)} images sampled from the training split decodes")
        return torch.stack(out)

    # -- batches
    def configure(self, config: StreamConfig) -> None:
        """Set how batches are made (closes workers started under another configuration)."""
        if config != self.config:
            self.close()
        self.config = config

    def close(self) -> None:
        for loader in self._loaders.values():
            loader.stop()
        self._loaders.clear()

    def _loader(self, train: bool) -> _Loader:
        if self.pending_source is not None:
            self.workers.switch_to(None)  # the idle workers of another split stop before the build
            self.ready()
        if train not in self._loaders:
            self._loaders[train] = _Loader(self.src, replace(self.config, train=train))
        self.workers.switch_to(self._loaders[train])
        return self._loaders[train]

    def _check(self, bad: list[str]) -> None:
        if not bad:
            return
        if not self.config.skip_bad:
            raise BadImageFailure(f"{bad[0]} (skip such files with --skip-bad-images)")
        self.skipped += bad

    def epoch_batches(self, order: torch.Tensor, batch_size: int, epoch: int, seed: int, start_step: int = 0,
                      position_offset: int = 0, position_stride: int = 1,
                      ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, list[str]]]:
        """(step, positions, uint8 batch, skipped ids) for the steps of one epoch from `start_step`.

        `order`: the positions this rank trains on, in order; step s takes
        order[s*batch_size:(s+1)*batch_size]. Sample k of a step is seeded as the sample at
        position_offset + k * position_stride of the global batch: under torchrun (offset the
        rank, stride the world size, rank r taking every W-th sample of the global order) that
        is where it is in the one-process run's step, so both draw the same crops. A step whose
        every sample was skipped is not yielded.
        """
        order = order.tolist() if isinstance(order, torch.Tensor) else list(order)
        steps = math.ceil(len(order) / batch_size) if batch_size else 0
        plan, step_of = [], []
        for s in range(start_step, steps):
            chunk = order[s * batch_size:(s + 1) * batch_size]
            plan.append([(i, sample_seed(seed, epoch, s, position_offset + k * position_stride))
                         for k, i in enumerate(chunk)])
            step_of.append(s)
        for s, (positions, x, bad) in zip(step_of, self._loader(True).run(plan)):
            self._check(bad)
            if x is None:
                continue
            yield s, positions, x, bad

    def eval_batches(self, batch_size: int, index: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(positions, uint8 batch) over the split (or `index`), with the eval transform."""
        order = list(range(len(self))) if index is None else index.tolist()
        plan = [[(i, 0) for i in order[lo:lo + batch_size]] for lo in range(0, len(order), batch_size)]
        for positions, x, bad in self._loader(False).run(plan):
            self._check(bad)
            if x is not None:
                yield positions, x


def concat_splits(parts: list[StreamSplit]) -> StreamSplit:
    """Several splits of one source as one split (`eval --split all`), in the order given."""
    first = parts[0]
    bases = {id(p.src.base if isinstance(p.src, SubsetSource) else p.src) for p in parts}
    if len(bases) != 1 or not all(isinstance(p.src, SubsetSource) for p in parts):
        raise ValueError("concat_splits joins subsets of one source")
    positions = torch.cat([p.src.positions for p in parts])
    return first._shares(StreamSplit(SubsetSource(first.src.base, positions), first.name, first.source, first.config))
