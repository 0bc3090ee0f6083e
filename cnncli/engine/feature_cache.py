"""Finetune's head stage on cached features: the frozen base runs once, the head trains on its output.

While the base is frozen (in inference mode) and no augmentation or mixing changes the images, the
base's output does not change between epochs; `FeatureCache` computes it once for the
training split and feeds each batch's rows to the head (a `Feed` of the trainer, so the
batches, seeds, learning rates and loss are the trainer's own). `cache_decision` says whether
that is valid for a run, and why not.
"""

from __future__ import annotations

import math
import os

import torch

from cnncli import output
from cnncli.engine.step import Feed
from cnncli.errors import InputError


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux
        return 4 << 30


def feature_shape(model: torch.nn.Module, input_size, device) -> tuple[int, ...]:
    """The shape of forward_features' output for one image (computed in eval mode: no BN update)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.forward_features(torch.zeros((1, *input_size), device=device))
    finally:
        model.train(was_training)
    return tuple(out.shape[1:])


class FeatureCache:
    """Stage 1's feed: the frozen base's features computed once, the head trained on them.

    The uncached step computes model(x) = forward_head(forward_features(x)); with the base
    frozen and in eval mode, forward_features(x) is a fixed function of the image, so it is
    computed once for the whole training split and each step runs forward_head on the cached
    rows of its batch. Everything else is the trainer's own epoch and step (engine/step.py):
    the batches, their order, the per-step seeds (dropout in the head), the learning rates,
    the loss, so the head ends the same.
    """

    def __init__(self, keep_on_device: bool = True):
        self.features: torch.Tensor | None = None
        self.seconds = 0.0
        self.keep_on_device = keep_on_device

    def compute(self, trainer) -> torch.Tensor:
        import time

        t0 = time.perf_counter()
        model, images = trainer.model, trainer.data.train.images
        step = max(1, trainer.cfg.batch_size)  # training-sized chunks: faster than big ones on a CPU
        chunks = []
        from cnncli.engine.console import announced

        with announced(f"caching the frozen base's features of {len(images):,} images"), torch.no_grad():
            for start in range(0, len(images), step):
                x = trainer.prepare(images[start:start + step])
                with trainer.precision.autocast():
                    f = model.forward_features(x)
                chunks.append(f if self.keep_on_device else f.cpu())
        self.seconds = time.perf_counter() - t0
        output.note(f"cached the frozen base's features of {len(images)} images in {self.seconds:.1f}s")
        return torch.cat(chunks)

    def __call__(self, trainer) -> Feed:
        """The head stage's feed: the cached rows of each batch, through forward_head."""

        def inputs(idx: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
            if self.features is None:  # now: the base is in the stage's (inference) modes
                rng = torch.get_rng_state()  # the step's seed is set: leave its draws to the head
                self.features = self.compute(trainer)
                torch.set_rng_state(rng)
            return self.features[idx.to(self.features.device)].to(trainer.device, non_blocking=True)

        return Feed(inputs, trainer.model.forward_head)


def _base_is_deterministic(trainer) -> bool:
    """Does forward_features give the same output twice with stage 1's modes and other seeds?

    With the base frozen its modules with parameters are in eval mode; a parameter-free
    dropout layer among the feature layers would still draw random numbers, and then the
    features cannot be cached. Checked on two images, restoring the RNG and the modes after.
    """
    model = trainer.model
    stage1 = trainer.phases[0] if trainer.phases and trainer.phases[0].name == "head" else None
    if stage1 is None:
        return False
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    rng = torch.get_rng_state()
    try:
        model.train()
        stage1.prepare_model(model)
        x = trainer.prepare(trainer.data.train.images[:2])
        with torch.no_grad():
            torch.manual_seed(1)
            a = model.forward_features(x)
            torch.manual_seed(2)
            b = model.forward_features(x)
        return torch.equal(a, b)
    finally:
        torch.set_rng_state(rng)
        for m, mode in modes.items():
            m.training = mode
        for p, g in grads.items():
            p.requires_grad_(g)


def mixes_head_stage(cfg) -> bool:
    """Do --mixup/--cutmix mix any batch of the head stage (its epochs are the run's first)?

    Mixing happens on images, before the base. The features of a mixed image are not the mix of
    the two images' features (the base is not linear), and a cutmix box of the image is no box
    of the feature map (receptive fields overlap it), so mixing the cached features would train
    the head on other inputs than the uncached stage: with mixing the cache is not used."""
    if cfg.mixup is None and cfg.cutmix is None or not cfg.head_epochs:
        return False
    return cfg.mixup_off_epoch is None or cfg.mixup_off_epoch > 0


MIXING_REASON = "mixup/cutmix mix the images, and a mixed image's features are not the mix of their features"


def cache_decision(cfg, trainer) -> tuple[bool, str]:
    """(use the cache, why not): valid only with a frozen base, fixed images, one process."""
    if cfg.cache_features is False:
        return False, "--no-cache-features"
    if cfg.head_epochs == 0:
        return False, "no head stage"
    reasons = []
    if cfg.augment:
        reasons.append(f"augmentation ({','.join(cfg.augment)}) changes the images every epoch")
    if mixes_head_stage(cfg):
        reasons.append(MIXING_REASON)
    if getattr(trainer, "streaming", False):
        reasons.append("a streaming dataset's random crops and flips change the images every epoch")
    if trainer.dist.enabled:
        reasons.append("the head would train outside DistributedDataParallel")
    model = trainer.model
    if not (callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))):
        reasons.append("the network has no forward_features/forward_head split")
    if not reasons and not _base_is_deterministic(trainer):
        reasons.append("the base is random in training mode (dropout or drop-path before forward_features ends)")
    if not reasons:
        shape = feature_shape(model, trainer.input_size, trainer.device)
        size = len(trainer.data.train.labels) * math.prod(shape) * 4
        limit = _available_memory() // 2
        if size > limit:
            reasons.append(f"the features would take {size / 2**30:.1f} GiB (limit {limit / 2**30:.1f} GiB; "
                           "a smaller --img-size or --max-samples fits)")
    if reasons:
        if cfg.cache_features:
            raise InputError("--cache-features is not possible here: " + "; ".join(reasons))
        return False, "; ".join(reasons)
    return True, ""


def fits_on_device(trainer) -> bool:
    if trainer.device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(trainer.device)
    shape = feature_shape(trainer.model, trainer.input_size, trainer.device)
    return len(trainer.data.train.labels) * math.prod(shape) * 4 < free // 4
