"""One training step, the same for every way a batch reaches the network.

`train` feeds whole images (sliced, augmented, resized/normalized); finetune's head stage may
feed the frozen base's cached features to the head alone. Either way a step is: learning rate
for the step, forward under autocast, cross-entropy, a finite-loss check (agreed by all ranks,
together with a stop request), backward, gradient clipping, the optimizer's step, and the
epoch's running metrics. `TrainStep` is that step; `Feed` says how a batch is made and which
forward runs; `EpochMeter` sums the metrics (and carries them across an interrupted epoch).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cnncli.engine import distributed
from cnncli.engine.optim import lr_factor, set_lr


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of one step's random draws (dropout, augmentation); -1 is the epoch's shuffle."""
    return (seed * 1_000_003 + epoch * 100_003 + step * 7 + 17) % (2**63)


class LossNotFinite(Exception):
    """The loss of a step was NaN or infinite (on some rank); the caller says where."""

    def __init__(self, value: float):
        super().__init__(value)
        self.value = value


@dataclass(frozen=True)
class Feed:
    """How a phase's batches reach the network: indices to the network's input, and its forward."""

    inputs: Callable[[torch.Tensor, int, int], torch.Tensor]  # (indices, epoch, step) -> input on the device
    forward: Callable[[torch.Tensor], torch.Tensor]
    # a streaming feed (engine/stream_feed.py) is told the epoch's order once, before its first
    # step; its `inputs` then return (input, the indices of the samples in it: bad files skipped)
    start_epoch: Callable[[torch.Tensor, int, int], None] | None = None


def image_feed(images: torch.Tensor, augment, prepare, seed: int, forward) -> Feed:
    """The training images: slice, augment the uint8 batch (its own seeded generator), prepare."""

    def inputs(idx: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        x = images[idx]
        if augment is not None:
            x = augment(x, generator=torch.Generator().manual_seed(step_seed(seed, epoch, step) + 1))
        return prepare(x)

    return Feed(inputs, forward)


@dataclass(frozen=True)
class Schedule:
    """The learning-rate factor at each step of a phase (optim.lr_factor with the phase's lengths)."""

    name: str
    total_steps: int
    warmup_steps: int
    steps_per_epoch: int
    step_epochs: int = 10
    step_gamma: float = 0.1
    plateau: Any = None  # optim.Plateau for the `plateau` schedule: its level multiplies the factor

    def factor(self, step: int) -> float:
        factor = lr_factor(self.name, step, self.total_steps, self.warmup_steps, self.steps_per_epoch,
                           self.step_epochs, self.step_gamma)
        return factor * self.plateau.level() if self.plateau is not None else factor


class EpochMeter:
    """Loss and correct predictions summed over an epoch's steps (float64 / int64, on the CPU)."""

    def __init__(self, partial: dict[str, Any] | None = None):
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.correct = torch.zeros((), dtype=torch.int64)
        self.seen = 0
        if partial:  # the first steps of an epoch an interrupted run already took
            self.loss_sum += partial["loss_sum"]
            self.correct += partial["correct"]
            self.seen = int(partial["seen"])

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss.detach().double().cpu() * len(y)
        target = y.argmax(1) if y.dim() == 2 else y  # soft targets (mixup): the dominant class
        self.correct += (logits.detach().argmax(1) == target).sum().cpu()
        self.seen += len(y)

    @property
    def accuracy(self) -> float:
        return float(self.correct) / max(1, self.seen)

    def partial(self) -> dict[str, Any]:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "seen": self.seen}

    def totals(self) -> dict[str, Any]:
        """{"loss", "top1"} over all ranks, and this rank's "images"."""
        totals = torch.tensor([float(self.loss_sum), float(self.correct), float(self.seen)], dtype=torch.float64)
        distributed.all_reduce_sum(totals)
        n = max(1.0, float(totals[2]))
        return {"loss": float(totals[0]) / n, "top1": float(totals[1]) / n, "images": self.seen}


class TrainStep:
    """One optimizer step on one batch (see the module doc); `model` is what clipping sees."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, *,
                 device: torch.device, amp: bool = False, label_smoothing: float = 0.0,
                 clip_grad: float | None = None, dist=None, precision=None, accum_steps: int = 1,
                 after_update: Callable[[int], None] | None = None, class_weights=None):
        """`precision` (engine/amp.Precision) wins over `amp` (True: bf16 autocast); fp16 brings a
        GradScaler. With `accum_steps` k the gradients of k batches are summed (each loss / k)
        before one optimizer step; `after_update(step)` runs after each optimizer step (EMA).
        `class_weights` (one per class, data/balance.py) weigh the cross-entropy's terms."""
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.device, self.amp = device, amp
        self.label_smoothing, self.clip_grad = label_smoothing, clip_grad
        self.dist = dist
        if precision is None:
            from cnncli.engine.amp import Precision

            precision = Precision("bf16" if amp else "fp32", device.type)
        self.precision = precision
        self.scaler = precision.make_scaler()
        self.accum_steps = max(1, int(accum_steps))
        self.after_update = after_update
        self.pending = 0  # batches whose gradients wait for the optimizer step (accumulation)
        self.class_weights = None if class_weights is None else \
            torch.as_tensor(class_weights, dtype=torch.float32, device=device)

    def __call__(self, forward, x: torch.Tensor, y: torch.Tensor, step: int, meter: EpochMeter,
                 signals=None, last: bool = False) -> torch.Tensor:
        """Train on (x, y) at the phase's `step`; returns the loss. Raises LossNotFinite.

        With several processes the ranks agree, in one all-reduce, on whether every loss was
        finite and whether any rank was asked to stop (then `signals.signum` is set here too).
        `y` is class indices, or soft targets (N, classes) from mixup/cutmix. `last`: the
        epoch's last batch, which always ends an accumulation.
        """
        set_lr(self.optimizer, self.schedule.factor(step))
        with self.precision.autocast():
            logits = forward(x)
            loss = F.cross_entropy(logits.float(), y, weight=self.class_weights,
                                   label_smoothing=self.label_smoothing)
        finite = bool(torch.isfinite(loss.detach()))
        if self.dist is not None and self.dist.enabled:
            flag = torch.tensor([0.0 if finite else 1.0, float(signals.signum if signals else 0)], device=self.device)
            distributed.all_reduce_sum(flag)
            finite = flag[0].item() == 0
            if flag[1].item() and signals is not None and not signals.signum:
                signals.signum = signal.SIGTERM
        if not finite:
            raise LossNotFinite(loss.item())
        k = self.accum_steps
        if not self.pending:
            self.optimizer.zero_grad(set_to_none=True)
        scaled = loss / k if k > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        self.pending += 1
        if last or self.pending >= k:
            self.pending = 0
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if self.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.after_update is not None:
                self.after_update(step)
        meter.add(loss, logits, y)
        return loss
