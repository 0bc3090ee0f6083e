"""The learning-rate range test (Leslie Smith's, as fastai's `Learner.lr_find` runs it).

The network trains for `steps` optimizer steps at a learning rate that grows exponentially
from `start_lr` to `end_lr` (step i of n at start * (end / start) ** (i / (n - 1))), on the
run's own training batches, augmentation, precision and optimizer. The loss is smoothed by an
exponential moving average with debiasing (beta 0.98: avg = beta * avg + (1 - beta) * loss,
smoothed = avg / (1 - beta ** (i + 1))), and the sweep stops once the smoothed loss exceeds
4x the best smoothed loss so far, or a loss is not finite (the loss diverged). The weights,
batch-norm statistics and optimizer are thrown away afterwards: the network is restored to
what it was, and nothing is written unless the caller asks for the plot or the JSON.

The suggestions are fastai's, over the recorded points without the first tenth of `steps`
and the last five (where the loss is already diverging):
- valley: the longest run of decreasing loss; the point about 1/3 + 1/6 of the way into it;
- steep: the point where the loss falls fastest against log(lr);
- minimum: a tenth of the learning rate at the lowest loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnncli.errors import InputError, RuntimeFailure

SUGGESTIONS = ("valley", "steep", "minimum")
DEFAULT_SUGGESTION = "valley"
START_LR, END_LR, STEPS = 1e-7, 10.0, 100
MIN_STEPS, MAX_STEPS = 10, 10_000
BETA = 0.98  # the moving average's weight of the past (fastai's AvgSmoothLoss)
DIVERGE = 4.0  # stop once the smoothed loss exceeds this multiple of the best one


def check_sweep(start_lr: float, end_lr: float, steps: int) -> None:
    """The sweep's bounds: finite, positive, start below end, steps in range (InputError, exit 2)."""
    for name, value in (("--start-lr", start_lr), ("--end-lr", end_lr)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"{name} must be a finite number, got {value!r}")
        if value <= 0:
            raise InputError(f"{name} must be positive, got {value:g}")
    if start_lr >= end_lr:
        raise InputError(f"--start-lr ({start_lr:g}) must be below --end-lr ({end_lr:g})")
    if not isinstance(steps, int) or isinstance(steps, bool) or not MIN_STEPS <= steps <= MAX_STEPS:
        raise InputError(f"--steps must be in [{MIN_STEPS}, {MAX_STEPS}], got {steps}")


def check_suggestion(name: str) -> str:
    name = str(name).lower()
    if name not in SUGGESTIONS:
        raise InputError(f"unknown learning-rate suggestion '{name}'; choose one of {', '.join(SUGGESTIONS)}")
    return name


def sweep_lr(i: int, start_lr: float, end_lr: float, steps: int) -> float:
    """The learning rate of step i of the sweep: exponential from start_lr (i = 0) to end_lr."""
    return start_lr * (end_lr / start_lr) ** (i / max(1, steps - 1))


@dataclass
class LrFindResult:
    """The sweep: per step its lr, raw and smoothed loss; why it stopped; the suggestions."""

    lrs: list[float]
    losses: list[float]  # smoothed (what the plot shows and the suggestions use)
    raw_losses: list[float]
    start_lr: float
    end_lr: float
    steps: int
    stopped: str  # "end" (every step ran) or "diverged"
    suggestions: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {lr, at_lr, loss}

    def suggested(self, name: str = DEFAULT_SUGGESTION) -> float:
        return self.suggestions[check_suggestion(name)]["lr"]

    def to_dict(self) -> dict[str, Any]:
        return {"start_lr": self.start_lr, "end_lr": self.end_lr, "steps": self.steps,
                "steps_run": len(self.lrs), "stopped": self.stopped,
                "suggestions": {k: dict(v) for k, v in self.suggestions.items()},
                "points": [{"lr": lr, "loss": s, "raw_loss": r}
                           for lr, s, r in zip(self.lrs, self.losses, self.raw_losses)]}

    def record(self, chosen: str) -> dict[str, Any]:
        """What a training run records of the search that chose its lr (no per-step points)."""
        return {"suggestion": chosen, "lr": self.suggested(chosen), "start_lr": self.start_lr,
                "end_lr": self.end_lr, "steps": self.steps, "steps_run": len(self.lrs),
                "stopped": self.stopped, "suggestions": {k: v["lr"] for k, v in self.suggestions.items()}}


# ---------------------------------------------------------------------------- the sweep itself

def range_test(train_step: Callable[[float], float], start_lr: float = START_LR, end_lr: float = END_LR,
               steps: int = STEPS, beta: float = BETA, diverge: float = DIVERGE) -> LrFindResult:
    """Run `train_step(lr) -> loss` at each lr of the sweep, smoothing and watching for divergence.

    A `train_step` that returns a non-finite loss (or raises FloatingPointError) ends the sweep
    as diverged; that point is not recorded."""
    check_sweep(start_lr, end_lr, steps)
    lrs, smoothed, raw = [], [], []
    avg, best, stopped = 0.0, math.inf, "end"
    for i in range(steps):
        lr = sweep_lr(i, start_lr, end_lr, steps)
        try:
            loss = float(train_step(lr))
        except FloatingPointError:
            loss = math.nan
        if not math.isfinite(loss):
            stopped = "diverged"
            break
        avg = beta * avg + (1 - beta) * loss
        smooth = avg / (1 - beta ** (i + 1))
        lrs.append(lr)
        raw.append(loss)
        smoothed.append(smooth)
        best = min(best, smooth)
        if smooth > diverge * best:
            stopped = "diverged"
            break
    result = LrFindResult(lrs, smoothed, raw, float(start_lr), float(end_lr), int(steps), stopped)
    result.suggestions = suggest(lrs, smoothed, steps)
    return result


def suggest(lrs: list[float], losses: list[float], steps: int) -> dict[str, dict[str, float]]:
    """fastai's three suggestions over the points without the first steps // 10 and the last 5.

    Each is {"lr": the suggested rate, "at_lr": where on the curve it was read, "loss": the loss
    there} (they differ for `minimum`, a tenth of the rate at the lowest loss)."""
    lo = steps // 10
    xs, ys = lrs[lo:len(lrs) - 5], losses[lo:len(losses) - 5]
    if len(xs) < 3:
        raise RuntimeFailure(
            f"the loss diverged after {len(lrs)} of {steps} steps (at lr {lrs[-1] if lrs else 0:.3g}), "
            "too early to suggest a learning rate; lower --start-lr or raise --steps")
    out = {}
    for name, fn in (("valley", valley), ("steep", steep), ("minimum", minimum)):
        lr, (at, loss) = fn(xs, ys)
        out[name] = {"lr": float(lr), "at_lr": float(at), "loss": float(loss)}
    return out


def valley(lrs: list[float], losses: list[float]) -> tuple[float, tuple[float, float]]:
    """The longest valley (longest run of points each lower than an earlier one, as a longest
    decreasing subsequence) and the point 1/3 + 1/6 of the way into it (fastai's `valley`)."""
    import torch

    y = torch.tensor(losses, dtype=torch.float64)
    n = len(y)
    lds = torch.ones(n, dtype=torch.int64)
    max_start = max_end = 0
    for i in range(1, n):
        earlier_higher = y[:i] > y[i]
        if bool(earlier_higher.any()):
            lds[i] = int(lds[:i][earlier_higher].max()) + 1
        if lds[max_end] < lds[i]:
            max_end = i
            max_start = max_end - int(lds[max_end])
    sections = (max_end - max_start) / 3
    idx = max(0, min(n - 1, max_start + int(sections) + int(sections / 2)))
    return lrs[idx], (lrs[idx], losses[idx])


def steep(lrs: list[float], losses: list[float]) -> tuple[float, tuple[float, float]]:
    """Where the loss falls fastest per unit of log(lr) (fastai's `steep`)."""
    grads = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)]
    idx = min(range(len(grads)), key=grads.__getitem__)
    return lrs[idx], (lrs[idx], losses[idx])


def minimum(lrs: list[float], losses: list[float]) -> tuple[float, tuple[float, float]]:
    """A tenth of the learning rate at the lowest loss (fastai's `minimum`)."""
    idx = min(range(len(losses)), key=losses.__getitem__)
    return lrs[idx] / 10, (lrs[idx], losses[idx])


# ---------------------------------------------------------------------------- on a Trainer

def find_lr(trainer, start_lr: float = START_LR, end_lr: float = END_LR, steps: int = STEPS,
            phase_index: int | None = None) -> LrFindResult:
    """The range test on a `cnncli.engine.trainer.Trainer`'s network, data, augmentation,
    precision and optimizer settings (the parameter groups of phase `phase_index`, by default
    the first phase that has epochs); the network is restored afterwards (weights and buffers),
    so a run trained after it starts the same."""
    import torch

    from cnncli.engine.optim import build_optimizer
    from cnncli.engine.step import EpochMeter, LossNotFinite, TrainStep, image_feed, step_seed

    check_sweep(start_lr, end_lr, steps)
    cfg, model = trainer.cfg, trainer.model
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    if phase_index is None:
        phase_index = next((i for i, p in enumerate(trainer.phases) if p.epochs > 0), 0)
    phase = trainer.phases[phase_index]
    groups = phase.param_groups(model) if phase.param_groups else [
        {"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]
    # base lr 1: the sweep sets each group's rate to lr * its scale (optim.set_lr)
    optimizer = build_optimizer(groups, cfg.optimizer, 1.0, cfg.resolved_weight_decay(),
                                cfg.momentum, cfg.nesterov)
    sweep = _SweepSchedule()
    step = TrainStep(model, optimizer, sweep, device=trainer.device, precision=trainer.precision,
                     label_smoothing=cfg.label_smoothing, clip_grad=cfg.clip_grad, accum_steps=1)
    labels = trainer.data.train.labels
    if getattr(trainer.data.train, "streaming", False):  # decoded per batch in DataLoader workers
        from cnncli.engine.stream_feed import StreamFeed

        feed = StreamFeed(trainer.data.train, max(1, min(cfg.batch_size, len(labels))), cfg.seed,
                          trainer.augment, trainer.prepare, model).feed
    else:
        feed = image_feed(trainer.data.train.images, trainer.augment, trainer.prepare, cfg.seed, model)
    n = len(labels)
    batch = max(1, min(cfg.batch_size, n))
    per_epoch = max(1, n // batch)  # full batches only: the loss of every step is comparable
    accum = max(1, int(cfg.accum_steps))
    state = {"batch": 0, "order": None, "epoch": -1}

    def next_batch():
        b = state["batch"]
        state["batch"] += 1
        epoch, s = divmod(b, per_epoch)
        if epoch != state["epoch"]:
            state["epoch"] = epoch
            state["order"] = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(cfg.seed, epoch, -1)))
            if feed.start_epoch is not None:  # a streaming feed: the epoch's full batches, in order
                feed.start_epoch(state["order"][:per_epoch * batch], epoch, 0)
        torch.manual_seed(step_seed(cfg.seed, epoch, s))
        idx = state["order"][s * batch:(s + 1) * batch]
        x = feed.inputs(idx, epoch, s)
        if feed.start_epoch is not None:
            x, idx = x  # the samples that decoded (--skip-bad-images)
            if x is None:
                return next_batch()
        y = labels[idx].to(trainer.device, non_blocking=True)
        if trainer.mixer is not None and trainer.mixer.active(epoch):
            x, y = trainer.mixer(x, y)
        return x, y

    def train_step(lr: float) -> float:
        sweep.lr = lr
        total = 0.0
        for k in range(accum):  # one optimizer step over accum batches, as the run takes it
            x, y = next_batch()
            try:
                loss = step(model, x, y, 0, EpochMeter(), last=k + 1 == accum)
            except LossNotFinite:
                return math.nan
            total += float(loss.detach())
        return total / accum

    model.train()
    if phase.prepare_model:
        phase.prepare_model(model)
    try:
        return range_test(train_step, start_lr, end_lr, steps)
    finally:
        model.load_state_dict(saved)
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)


class _SweepSchedule:
    """TrainStep's schedule during the sweep: the factor is the sweep's lr (the base lr is 1)."""

    lr = 0.0

    def factor(self, step: int) -> float:
        return self.lr


def parse_auto(value) -> bool:
    """Whether a `--lr` value asks for the finder."""
    return isinstance(value, str) and value.strip().lower() == "auto"


# ---------------------------------------------------------------------------- train --lr auto

def resolve_auto_lr(trainer) -> LrFindResult | None:
    """`--lr auto`: set the trainer's `cfg.lr` to the finder's suggestion (`cfg.lr_suggestion`,
    valley by default) before the run starts, and record the search in the run's document.

    A resumed run never searches again: it takes the lr its config.toml recorded. Under
    torchrun rank 0 searches (on its own, without the other ranks) and every rank takes its
    answer. Returns the search (rank 0 of a new run), else None."""
    from cnncli import output
    from cnncli.engine import distributed

    cfg = trainer.cfg
    if not parse_auto(cfg.lr):
        return None
    chosen = check_suggestion(cfg.lr_suggestion or DEFAULT_SUGGESTION)
    if trainer.resume_dir is not None:
        cfg.lr = recorded_lr(trainer.resume_dir)
        if trainer.dist.is_main:
            output.note(f"--lr auto: reusing the learning rate {cfg.lr:.3g} this run recorded (no new search)")
        return None
    result = None
    if trainer.dist.is_main:
        output.note(f"--lr auto: learning-rate range test, {STEPS} steps from {START_LR:g} to {END_LR:g} ...")
        result = find_lr(trainer)
        record = result.record(chosen)
    else:
        record = None
    record = distributed.broadcast_object(record)
    trainer.lr_search = result  # the run's folder gets its lr_find.json / .png (trainer._open_run)
    cfg.lr, cfg.lr_suggestion = float(record["lr"]), chosen
    trainer.extra_meta["lr_find"] = record
    if trainer.dist.is_main:
        others = ", ".join(f"{k} {v:.3g}" for k, v in record["suggestions"].items() if k != chosen)
        output.note(f"--lr auto: lr {cfg.lr:.3g} ({chosen}; {others})")
    return result


def recorded_lr(run_dir) -> float:
    """The learning rate a run's config.toml recorded (a number, as --lr auto resolves it)."""
    from pathlib import Path

    from cnncli.engine.config import read_recipe

    config = Path(run_dir) / "config.toml"
    lr = read_recipe(config).get("lr") if config.is_file() else None
    if not isinstance(lr, (int, float)) or isinstance(lr, bool):
        raise InputError(f"{run_dir} records no learning rate to resume --lr auto with; pass --lr VALUE")
    return float(lr)


def write_lr_find(result: LrFindResult, folder, title: str | None = None) -> dict[str, str]:
    """lr_find.json and lr_find.png in `folder` (the plot only where matplotlib is installed)."""
    from pathlib import Path

    from cnncli.fileio import atomic_write_text
    from cnncli.output import to_json

    folder = Path(folder)
    doc = result.to_dict()
    written = {"json": str(atomic_write_text(folder / "lr_find.json", to_json(doc)))}
    try:
        from cnncli.plots import plot_lr_find

        written["plot"] = str(plot_lr_find(doc, folder / "lr_find.png", title=title))
    except ImportError:
        pass
    return written
