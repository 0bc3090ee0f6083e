"""`imagefolder:PATH` and `csv:FILE` as a dataset: splits from the index, then tensors or a stream.

Layouts (data/index.py reads them without decoding): `PATH/<class>/*`, or
`PATH/train|val|test/<class>/*` where `val/` is the validation split and `test/` the test split;
`csv:FILE` with columns path, label (name or index) and an optional split column.

Splits: a given `val` split is used as is (nothing is held out of train for it), otherwise
`val_fraction` of train is held out (stratified, `seed`); a given `test` split is used as is,
otherwise `test_fraction` of train is held out with a fixed seed (so it never moves with
--seed). `max_samples` caps train (and val in proportion) from the index, before anything is
decoded.

Then the kind of dataset: the images the splits use are priced from their headers (a sample
of up to 32 files, extrapolated); under `MEMORY_BUDGET` bytes decoded they become the
in-memory uint8 tensors of the fast path (one common size, as before), above it (or with
`stream=True`) a streaming dataset (data/stream.py) decoded per batch in DataLoader workers,
with the aspect ratio kept by its transforms.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from cnncli.data.index import IMAGE_EXTENSIONS, ImageIndex, index_source
from cnncli.data.splits import (
    DatasetSplits,
    ImageData,
    channel_stats,
    stratified_cap,
    stratified_holdout,
)
from cnncli.data.stream import (
    DEFAULT_CROP_PCT,
    FileSource,
    StreamConfig,
    StreamSplit,
    SubsetSource,
    declared_size,
)
from cnncli.errors import InputError, UnreadableImageError

# Decoded bytes (at the files' own sizes) above which a folder streams instead of being loaded
MEMORY_BUDGET = 512 * 1024 * 1024
HEADER_SAMPLE = 32  # headers read to price a folder
STATS_SAMPLE = 64  # training images decoded to measure mean/std when no pretrained config gives them


def _positions(ix: ImageIndex, split: str) -> torch.Tensor:
    return torch.tensor(ix.select(split), dtype=torch.int64)


def plan_splits(ix: ImageIndex, val_fraction: float, max_samples: int | None, seed: int,
                hold_out_test: bool, test_fraction: float) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Positions into the index of each split, and how they were made (for the run's record)."""
    labels = torch.tensor(ix.labels, dtype=torch.int64)
    train = _positions(ix, "train")
    info: dict[str, Any] = {}
    if "test" in ix.split_names():
        test = _positions(ix, "test")
        info["test_split"] = "given"
    elif not hold_out_test:
        test = torch.zeros(0, dtype=torch.int64)
        info["test_split"] = "none (not held out)"
    else:
        keep, held = stratified_holdout(labels[train], test_fraction, seed=0)
        if len(held) == 0:
            raise InputError(f"{ix.source} is too small to hold out a test split; add images or a test/ folder")
        train, test = train[keep], train[held]
        info["test_split"] = f"held out ({test_fraction:g}, fixed seed)"
    if "val" in ix.split_names():
        val = _positions(ix, "val")
        info["val_split"] = "given"
    else:
        keep, held = stratified_holdout(labels[train], val_fraction, seed)
        train, val = train[keep], train[held]
        info["val_split"] = f"held out ({val_fraction:g})"
    if max_samples is not None:
        train = train[stratified_cap(labels[train], max_samples, seed)]
        if len(val) and val_fraction > 0:
            val_cap = max(round(max_samples * val_fraction / (1.0 - val_fraction)), len(ix.class_names))
            val = val[stratified_cap(labels[val], val_cap, seed)]
    return {"train": train, "val": val, "test": test}, info


def estimated_bytes(paths: list[str], sample: int = HEADER_SAMPLE) -> int:
    """Decoded size of `paths` at their own sizes, from the headers of a few of them."""
    if not paths:
        return 0
    chosen = random.Random(0).sample(paths, min(sample, len(paths)))
    sizes = [s for s in (declared_size(p) for p in chosen) if s is not None]
    if not sizes:
        return 0
    mean = sum(c * h * w for c, h, w in sizes) / len(sizes)
    return int(mean * len(paths))


class StreamingSplits:
    """A DatasetSplits whose splits stream (see data/stream.py); mean/std measured when first asked."""

    streaming = True

    def __init__(self, train: StreamSplit, val: StreamSplit, test: StreamSplit, class_names: list[str],
                 info: dict[str, Any]):
        self.train, self.val, self.test = train, val, test
        train.workers = val.workers = test.workers = train.workers  # one split's workers at a time
        self.class_names = list(class_names)
        self.info = info
        self._stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    def configure(self, input_size, crop_pct: float | None = None, workers: int | None = None,
                  pin_memory: bool = False, skip_bad: bool = False, squash: bool = False,
                  interpolation: str = "bilinear") -> None:
        """The network's (C, H, W) and the loader's settings, for every split."""
        cfg = StreamConfig(size=int(input_size[1]), channels=int(input_size[0]),
                           crop_pct=float(crop_pct or DEFAULT_CROP_PCT), squash=squash,
                           interpolation=interpolation, workers=workers,
                           pin_memory=pin_memory, skip_bad=skip_bad)
        for split in (self.train, self.val, self.test):
            split.configure(cfg)
        if getattr(self, "cache", None):  # --cache ram|disk: decoded once into a store (data/cache.py)
            from cnncli.data.cache import cache_splits

            cache_splits(self, cfg)

    def _measure(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self._stats is None:
            train = self.train
            n = len(train)
            pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE].sort().values
            small = StreamSplit(SubsetSource(train.src, pick), train.name, train.source,
                                StreamConfig(size=64, channels=3, workers=0))
            images = small.decoded_sample()
            self._stats = channel_stats(images)
            self.info["stats_measured_on"] = len(images)
        return self._stats

    @property
    def mean(self) -> tuple[float, ...]:
        return self._measure()[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self._measure()[1]

    def skipped(self) -> list[str]:
        return [s for split in (self.train, self.val, self.test) for s in split.skipped]


def _tensor_split(paths: list[str], labels: list[int], names: list[str], name: str, source: str,
                  size: tuple[int, int], channels: int, decoded: list[torch.Tensor]) -> ImageData:
    from cnncli.data.imagefolder import _stack

    images = _stack(decoded, size, channels) if decoded else torch.zeros((0, channels, *size), dtype=torch.uint8)
    return ImageData(images, torch.tensor(labels, dtype=torch.int64), names, name, source, paths)


def _in_memory(ix: ImageIndex, plan: dict[str, torch.Tensor], image_size, info: dict[str, Any],
               seed: int, val_fraction: float, max_samples: int | None) -> DatasetSplits:
    """Decode exactly the planned images into uint8 tensors of one size (the fast path)."""
    from cnncli.data.imagefolder import _default_size, _parse_size
    from cnncli.data.transforms import decode_image_file

    try:
        decoded = {s: [decode_image_file(ix.paths[i]) for i in pos.tolist()] for s, pos in plan.items()}
    except InputError as e:  # one line that says how to find the others and how to go on without them
        raise UnreadableImageError(f"{e} (`cnncli datasets check {ix.source}` lists every such file; move them "
                                   "out, or skip them in train, finetune and eval with --skip-bad-images)") from None
    every = [img for imgs in decoded.values() for img in imgs]
    size = _parse_size(image_size) or _default_size([tuple(img.shape[1:]) for img in every])
    channels = 3 if any(img.shape[0] == 3 for img in every) else 1
    parts = {}
    for s, pos in plan.items():
        p = pos.tolist()
        parts[s] = _tensor_split([ix.paths[i] for i in p], [ix.labels[i] for i in p], ix.class_names,
                                 ix.source, ix.root, size, channels, decoded[s])
    mean, std = channel_stats(parts["train"].images)
    info["image_size"] = list(size)
    info["kind"] = "tensor"
    return DatasetSplits(parts["train"], parts["val"], parts["test"], mean, std, list(ix.class_names),
                         _details(ix, parts, info, seed, val_fraction, max_samples, [channels, *size]))


def _details(ix, parts, info, seed, val_fraction, max_samples, image_shape) -> dict[str, Any]:
    return {**info, "name": ix.source, "source": ix.root, "image_shape": image_shape,
            "num_classes": len(ix.class_names), "train": len(parts["train"]), "val": len(parts["val"]),
            "test": len(parts["test"]), "val_fraction": val_fraction, "max_samples": max_samples, "seed": seed}


def _check_classes(ix: ImageIndex) -> None:
    """Every class folder of the training split holds an image (an empty one is a mistake)."""
    from pathlib import Path

    counts = ix.class_counts().get("train", [])
    for name, n in zip(ix.class_names, counts):
        if n == 0:
            base = Path(ix.root) / "train" if any(s != "train" for s in ix.splits) or (Path(ix.root) / "train").is_dir() \
                else Path(ix.root)
            raise InputError(f"imagefolder: class folder {base / name} holds no images")


def load_indexed(name: str, *, val_fraction: float = 0.1, max_samples: int | None = None, seed: int = 0,
                 hold_out_test: bool = True, test_fraction: float = 0.2, image_size=None,
                 stream: bool | None = None, info: dict[str, Any] | None = None):
    """`imagefolder:PATH` or `csv:FILE` as a DatasetSplits (tensors) or StreamingSplits (see the module doc)."""
    ix = index_source(name)
    if ix.other_files and ix.source.startswith("imagefolder:"):
        raise InputError(f"imagefolder: {ix.other_files[0]} is not an image ({', '.join(IMAGE_EXTENSIONS)} "
                         "expected); move it out of the class folder")
    if ix.source.startswith("imagefolder:"):
        _check_classes(ix)
    info = dict(info or {})
    plan, how = plan_splits(ix, val_fraction, max_samples, seed, hold_out_test, test_fraction)
    info.update(how)
    used = [ix.paths[i] for pos in plan.values() for i in pos.tolist()]
    if stream is None:
        need = estimated_bytes(used)
        stream = need > MEMORY_BUDGET
        info["estimated_decoded_bytes"] = need
    if not stream:
        return _in_memory(ix, plan, image_size, info, seed, val_fraction, max_samples)
    if image_size is not None:
        raise InputError(f"{name}: image_size is for a folder loaded in memory; a streaming dataset takes "
                         "the network's size (--img-size)")
    files = FileSource(ix.paths, ix.labels, ix.class_names)
    parts = {s: StreamSplit(SubsetSource(files, pos), ix.source, ix.root) for s, pos in plan.items()}
    info["kind"] = "stream"
    return StreamingSplits(parts["train"], parts["val"], parts["test"], ix.class_names,
                           _details(ix, parts, info, seed, val_fraction, max_samples, None))
