"""The trainer's `Feed` for a streaming dataset (data/stream.py): batches from DataLoader workers.

The trainer draws the epoch's order and calls `start_epoch(order, epoch, start_step)` once;
each step then takes the next batch the workers prepared (decoded, RandomResizedCrop + flip
with the sample's own seed), runs the batch augment list on it with the step's seed (as for
tensor datasets) and prepares it for the network. Samples a `--skip-bad-images` run dropped
come back as the step's kept indices, so the labels follow them.
"""

from __future__ import annotations

import torch

from cnncli.engine.step import Feed, step_seed


class StreamFeed:
    """Pulls one epoch's batches from a StreamSplit in step order (see the module doc)."""

    def __init__(self, split, batch_size: int, seed: int, augment, prepare, forward, position_offset: int = 0,
                 position_stride: int = 1):
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.augment, self.prepare = augment, prepare
        self.position_offset, self.position_stride = position_offset, position_stride
        self.feed = Feed(self.inputs, forward, self.start_epoch)
        self._it = None
        self._held = None

    def start_epoch(self, order: torch.Tensor, epoch: int, start_step: int) -> None:
        self._it = self.split.epoch_batches(order, self.batch_size, epoch, self.seed, start_step,
                                            self.position_offset, self.position_stride)
        self._held = None

    def inputs(self, idx: torch.Tensor, epoch: int, step: int):
        """(network input, the indices of the samples in it) for `step`; (None, empty) when every
        sample of the step was skipped."""
        item = self._held if self._held is not None else next(self._it, None)
        self._held = None
        if item is None or item[0] > step:  # this step's samples were all skipped
            self._held = item
            return None, idx[:0]
        _, positions, x, _ = item
        if self.augment is not None:
            x = self.augment(x, generator=torch.Generator().manual_seed(step_seed(self.seed, epoch, step) + 1))
        return self.prepare(x), positions


def configure_stream(trainer, info, mean, std, extra_meta: dict):
    """Set a streaming dataset's transforms and loader for the trainer's network; (mean, std).

    Eval crops use the backbone's pretrained crop_pct (timm's config) or 0.875, and every resize
    its interpolation (bicubic for most timm weights) or bilinear; a resumed run keeps what it
    recorded (bilinear for runs from before this was recorded). Mean/std are the
    caller's, else the backbone's pretrained ones (a timm network), else measured on a sample
    of the training split (StreamingSplits.mean).
    """
    cfg, extra = trainer.cfg, (info.extra if info is not None else {}) or {}
    crop_pct = extra.get("crop_pct") or extra_meta.get("crop_pct")  # finetune: its backbone's
    interpolation = extra.get("interpolation") or extra_meta.get("interpolation")
    if trainer.resume_dir is not None:
        interpolation = _recorded_pipeline(trainer.resume_dir).get("interpolation")
    workers = cfg.workers
    if workers is None and trainer.dist.enabled:  # the ranks of one machine share its cores
        import os

        from cnncli.data.stream import usable_cores

        workers = max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    from cnncli.data.stream import interpolation_of

    trainer.data.configure(trainer.input_size, crop_pct=crop_pct, workers=workers,
                           pin_memory=trainer.device.type == "cuda", skip_bad=cfg.skip_bad_images,
                           interpolation=interpolation_of(interpolation))
    if mean is None and trainer.resume_dir is not None:  # the run's own, even if the files changed since
        mean, std = _recorded_stats(trainer.resume_dir)
    if mean is None and info is not None and info.source == "timm":
        mean, std = info.mean, info.std
    trainer.stream_record = {
        "kind": "stream", "workers": trainer.data.train.config.resolved_workers(),
        "crop_pct": trainer.data.train.config.crop_pct, "interpolation": trainer.data.train.config.interpolation,
        "stats": "given" if mean is not None else "measured on a sample of the training split"}
    return mean, std


def _recorded_pipeline(run_dir) -> dict:
    """The data pipeline a run recorded ({} when it has none)."""
    from cnncli.checkpoint import read_meta

    for name in ("train_state.safetensors", "model.safetensors"):
        path = run_dir / name
        if path.exists():
            return dict(read_meta(path).get("data_pipeline") or {})
    return {}


def _recorded_stats(run_dir):
    from cnncli.checkpoint import read_meta

    for name in ("train_state.safetensors", "model.safetensors"):
        path = run_dir / name
        if path.exists():
            doc = read_meta(path)
            if doc.get("mean") and doc.get("std"):
                return list(doc["mean"]), list(doc["std"])
    return None, None

