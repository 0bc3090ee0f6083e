"""Optimizers and learning-rate schedules (per step, with linear warm-up).

Schedules are plain functions of the global step, so the whole schedule state is one integer
that the train state records; resuming rebuilds the same learning rate exactly. `plateau`
also depends on the validation figures so far: it is a pure function of the run's history
(which the train state records too), so it resumes exactly as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def build_optimizer(param_groups, optimizer: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, nesterov: bool = True) -> torch.optim.Optimizer:
    """`param_groups`: parameters, or a list of dicts with a `lr_scale` each (finetune).

    The optimizer comes from timm's factory (`timm.optim.create_optimizer_v2`) under the name
    given (engine/config.OPTIMIZERS lists the ones offered); momentum goes to those that have
    one, Nesterov to SGD. Weight decay is not applied to biases and normalization weights
    (1-d tensors): timm's `filter_bias_and_bn`, done here because the groups (finetune's lr
    scales) are ours. sgd and adamw are torch's own classes, as before, so older runs resume.
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
    extra = {"nesterov": nesterov and momentum > 0} if optimizer == "sgd" else {}
    return _fastest(optimizer, groups, lr=lr, weight_decay=weight_decay, momentum=momentum, **extra)


def _fastest(name: str, groups, **kwargs) -> torch.optim.Optimizer:
    """timm's optimizer `name`, in the fused implementation (one kernel over all parameters)
    where torch has one for the parameters' device, else foreach, else the plain loop. On the
    2-core CPU the AdamW step of typical_cnn took 2.0 ms fused, 13.6 ms foreach, 17.6 ms with
    the default loop (bench/README.md)."""
    from timm.optim import create_optimizer_v2

    for speed in ({"fused": True}, {"foreach": True}, {}):
        try:
            return create_optimizer_v2(groups, opt=name, filter_bias_and_bn=False, **kwargs, **speed)
        except (RuntimeError, ValueError, TypeError):  # no such implementation for this device or dtype
            if not speed:
                raise
    raise AssertionError("unreachable")


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
    if schedule in ("constant", "plateau"):  # plateau: times Plateau.level(), which the step asks
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


@dataclass(frozen=True, eq=False)
class Plateau:
    """`--schedule plateau`: the lr times `factor` each time `patience` epochs of the phase
    passed without a better validation top-1 (the EMA's where there is one, as for the best
    checkpoint); the count starts again after each reduction (torch's ReduceLROnPlateau in
    mode max, without cooldown or threshold). Read from `history`, the run's epoch rows."""

    history: list
    phase: str
    patience: int = 2
    factor: float = 0.1

    def level(self) -> float:
        return plateau_level([_val_top1(r) for r in self.history if r.get("phase") == self.phase],
                             self.patience, self.factor)


def _val_top1(row: dict) -> float | None:
    value = row.get("ema_val_top1")
    return row.get("val_top1") if value is None else value


def plateau_level(values: list[float | None], patience: int, factor: float) -> float:
    """The lr multiplier after the epochs whose validation figures are `values` (None: not validated)."""
    level, best, bad = 1.0, -math.inf, 0
    for value in values:
        if value is None:
            continue
        if value > best:
            best, bad = value, 0
            continue
        bad += 1
        if bad >= patience:
            level, bad = level * factor, 0
    return level


def describe_optimizer(optimizer: torch.optim.Optimizer, name: str) -> dict:
    """What a run records of its optimizer: the name asked for, the class timm made, how decay is applied."""
    return {"name": name, "class": f"{type(optimizer).__module__}.{type(optimizer).__name__}",
            "weight_decay": max((g.get("weight_decay", 0.0) for g in optimizer.param_groups), default=0.0),
            "no_weight_decay": "biases and normalization weights (1-d parameters)"}
