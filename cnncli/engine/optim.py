"""Optimizers and learning-rate schedules (per step, with linear warm-up).

Schedules are plain functions of the global step, so the whole schedule state is one integer
that the train state records; resuming rebuilds the same learning rate exactly.
"""

from __future__ import annotations

import math

import torch


def build_optimizer(param_groups, optimizer: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, nesterov: bool = True) -> torch.optim.Optimizer:
    """`param_groups`: parameters, or a list of dicts with a `lr_scale` each (finetune).

    Weight decay is not applied to biases and normalization weights (1-d tensors), as in
    timm's and Keras' good practice.
    """
    groups = []
    raw = list(param_groups)
    if raw and not isinstance(raw[0], dict):
        raw = [{"params": raw, "lr_scale": 1.0}]
    for g in raw:
        params = [p for p in g["params"] if p.requires_grad]
        scale = g.get("lr_scale", 1.0)
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for ps, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "weight_decay": wd, "lr": lr * scale,
                               "initial_lr": lr * scale, "lr_scale": scale})
    if not groups:
        raise ValueError("no trainable parameters")
    if optimizer == "sgd":
        return _fastest(torch.optim.SGD, groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    return _fastest(torch.optim.AdamW, groups, lr=lr)


def _fastest(cls, groups, **kwargs) -> torch.optim.Optimizer:
    """The fused implementation (one kernel over all parameters) where torch has one for the
    parameters' device, else foreach. On the 2-core CPU the AdamW step of typical_cnn took
    2.0 ms fused, 13.6 ms foreach, 17.6 ms with the default loop (bench/README.md)."""
    try:
        return cls(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device or dtype
        return cls(groups, foreach=True, **kwargs)


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int,
              steps_per_epoch: int, step_epochs: int = 10, step_gamma: float = 0.1) -> float:
    """The multiplier of the base learning rate at a global step."""
    if schedule == "onecycle":
        # torch's OneCycleLR shape: 30% cosine warm-up from lr/25, then cosine down to lr/1e4
        up = max(1, int(0.3 * total_steps))
        if step < up:
            return _cos_between(1 / 25, 1.0, step / up)
        return _cos_between(1.0, 1 / 1e4, (step - up) / max(1, total_steps - up))
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return step_gamma ** ((step // max(1, steps_per_epoch)) // step_epochs)
    # cosine from the end of warm-up to zero at the last step
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _cos_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, t))))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded optimizer buffer its parameter's memory format (channels-last).

    The state file holds contiguous tensors; the fused kernels then take another path than
    an uninterrupted run, whose buffers were made like their channels-last parameters, and
    the last bits differ. Same layout, same arithmetic: a resumed run ends bit for bit equal.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
