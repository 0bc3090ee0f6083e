"""Data augmentation on whole batches, as tensor operations (the seed's AlexNet recipe and more).

The seed augments by "randomly shifting the training images by various offsets, randomly
flipping them horizontally, randomly changing the lighting conditions"; `erase` (random
erasing, Zhong et al. 2017) is added. Each operation draws per-sample parameters as small
tensors from one torch.Generator (on the CPU, so a seed gives the same augmentation on any
device) and applies them to the whole batch at once: no Python loop over samples.

Augment before normalization: batches are uint8 (0..255) or float in [0, 1], and zero means
black (the fill of shifts and erasing). The result has the input's shape, dtype and device.

Spec strings: "shift,flip,lighting,erase", each optionally with a strength: "shift=2"
(pixels), "lighting=0.3" (relative jitter), "erase=0.25" (probability), "flip=0.5"
(probability). "none" or "" is no augmentation. The policies of data/policies.py
(randaugment=M:N, trivialaugment, autoaugment, augmix=S) join the same list; they run per
sample, after the geometry and before lighting and erasing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cnncli.data.policies import POLICIES, Policy, PolicyAugment, parse_policy
from cnncli.errors import InputError


def _uniform(n: int, low: float, high: float, gen: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _as_float(batch: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The batch as float and the value of white (255 for uint8, 1 for floats)."""
    if batch.dtype == torch.uint8:
        return batch.float(), 255.0
    return batch, 1.0


def _back(x: torch.Tensor, like: torch.Tensor, white: float) -> torch.Tensor:
    x = x.clamp(0.0, white)
    return x.round().to(torch.uint8) if like.dtype == torch.uint8 else x.to(like.dtype)


def shift(batch: torch.Tensor, max_shift: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by its own integer offset in [-max_shift, max_shift] on both axes.

    Pad-and-crop, done as one gather: pad by max_shift with zeros, then crop each image's
    window at its offset with advanced indexing. Default max_shift: an eighth of the smaller
    side (3 px on 28x28, 4 px on 32x32, as in the usual CIFAR recipe).
    """
    n, _, h, w = batch.shape
    s = max(1, min(h, w) // 8) if max_shift is None else int(max_shift)
    if s <= 0 or n == 0:
        return batch
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(batch.device)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(batch.device)
    padded = torch.nn.functional.pad(batch, (s, s, s, s))  # zero fill
    rows = (dy.view(n, 1) + torch.arange(h, device=batch.device)).view(n, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=batch.device)).view(n, 1, w)
    samples = torch.arange(n, device=batch.device).view(n, 1, 1)
    # padded[n, :, rows, cols] puts the indexed dims first: (N, H, W, C); move C back
    return padded.permute(0, 2, 3, 1)[samples, rows, cols].permute(0, 3, 1, 2).contiguous()


def flip(batch: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    n = batch.shape[0]
    chosen = (torch.rand(n, generator=generator) < p).to(batch.device).view(n, 1, 1, 1)
    return torch.where(chosen, batch.flip(-1), batch)


def lighting(batch: torch.Tensor, strength: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness and contrast jitter: factors drawn in [1 - strength, 1 + strength] per image.

    Contrast scales each image around its own mean; brightness then scales the whole image.
    """
    n = batch.shape[0]
    if n == 0 or strength <= 0:
        return batch
    contrast = _uniform(n, 1 - strength, 1 + strength, generator).to(batch.device).view(n, 1, 1, 1)
    brightness = _uniform(n, 1 - strength, 1 + strength, generator).to(batch.device).view(n, 1, 1, 1)
    x, white = _as_float(batch)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return _back(((x - mean) * contrast + mean) * brightness, batch, white)


def erase(
    batch: torch.Tensor,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.25),
    ratio: tuple[float, float] = (0.3, 3.3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random erasing: with probability p, set a random rectangle of each image to zero.

    The rectangle covers a fraction of the image drawn in `area`, with an aspect ratio drawn
    log-uniformly in `ratio`, as torchvision's RandomErasing, but for the whole batch at once.
    """
    n, _, h, w = batch.shape
    if n == 0:
        return batch
    chosen = torch.rand(n, generator=generator) < p
    frac = _uniform(n, area[0], area[1], generator)
    log_ratio = _uniform(n, float(torch.log(torch.tensor(ratio[0]))), float(torch.log(torch.tensor(ratio[1]))), generator)
    aspect = log_ratio.exp()
    eh = (frac * h * w * aspect).sqrt().round().clamp(1, h).long()
    ew = (frac * h * w / aspect).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
    # the per-sample numbers are drawn on the CPU; the (N, H, W) mask is built on the batch's device
    dev = batch.device
    top, left, eh, ew, chosen = (t.to(dev).view(n, 1, 1) for t in (top, left, eh, ew, chosen))
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    inside = (ys >= top) & (ys < top + eh) & (xs >= left) & (xs < left + ew) & chosen
    return batch.masked_fill(inside.unsqueeze(1), 0)


@dataclass(frozen=True)
class AugmentOp:
    """One named operation with its strength (None: the operation's default)."""

    name: str
    value: float | None = None
    policy: Policy | None = None  # randaugment, trivialaugment, ... (data/policies.py)

    def __str__(self) -> str:
        if self.policy is not None:
            return str(self.policy)
        return self.name if self.value is None else f"{self.name}={self.value:g}"


def _apply_shift(b, v, g):
    return shift(b, None if v is None else int(v), g)


def _apply_flip(b, v, g):
    return flip(b, 0.5 if v is None else v, g)


def _apply_lighting(b, v, g):
    return lighting(b, 0.2 if v is None else v, g)


def _apply_erase(b, v, g):
    return erase(b, 0.5 if v is None else v, generator=g)


# name -> (apply, what the value means, allowed range); applied in this order
OPERATIONS: dict[str, tuple[Callable, str, tuple[float, float]]] = {
    "shift": (_apply_shift, "pixels", (0, 512)),
    "flip": (_apply_flip, "probability", (0, 1)),
    "lighting": (_apply_lighting, "relative jitter", (0, 1)),
    "erase": (_apply_erase, "probability", (0, 1)),
}
# the order operations run in: geometry, then a policy (per sample), then lighting and erasing
ORDER = ("shift", "flip", *POLICIES, "lighting", "erase")


class BatchAugment:
    """A callable that augments a batch (N, C, H, W), uint8 or [0, 1] float, in the same shape and dtype.

    Operations run in a fixed order (shift, flip, lighting, erase) whatever order they were
    named in, so that a spec means one thing; erasing comes last so its zeros stay zeros.
    Random draws come from `generator` (a CPU torch.Generator), or the one given per call.
    """

    def __init__(
        self, ops: list[AugmentOp] | BatchAugment | str | None = None, generator: torch.Generator | None = None
    ):
        if isinstance(ops, str):  # a spec string: BatchAugment("shift,flip") == parse_augment("shift,flip")
            ops = parse_augment(ops)
        if isinstance(ops, BatchAugment):  # a copy, possibly with another generator
            generator = generator if generator is not None else ops.generator
            ops = ops.ops
        ops = list(ops or [])
        self.ops = sorted(ops, key=lambda op: ORDER.index(op.name))
        self.generator = generator
        self._policies = {op.name: PolicyAugment(op.policy) for op in self.ops if op.policy is not None}

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if batch.dim() != 4:
            raise InputError(f"augmentation expects a batch (N, C, H, W), got shape {tuple(batch.shape)}")
        gen = generator if generator is not None else self.generator
        for op in self.ops:
            if op.policy is not None:
                batch = self._policies[op.name](batch, gen)
            else:
                batch = OPERATIONS[op.name][0](batch, op.value, gen)
        return batch

    def __len__(self) -> int:
        return len(self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    @property
    def names(self) -> list[str]:
        return [op.name for op in self.ops]

    @property
    def spec(self) -> str:
        """The canonical spec string (what a run records; parse_augment(spec) rebuilds it)."""
        return ",".join(str(op) for op in self.ops) or "none"

    def __repr__(self) -> str:
        return f"BatchAugment({self.spec!r})"


def parse_augment(spec: str | list[str] | None, generator: torch.Generator | None = None) -> BatchAugment:
    """'shift,flip,lighting' or 'shift=2,erase=0.25' (or a list of such names) -> BatchAugment.

    An unknown name or a bad value is an InputError that lists the valid names.
    """
    if spec is None:
        return BatchAugment([], generator)
    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    valid = ", ".join([*OPERATIONS, *POLICIES])
    ops: dict[str, AugmentOp] = {}
    for item in items:
        item = str(item).strip().lower()
        if not item or item == "none":
            continue
        name, _, raw = item.partition("=")
        name = name.strip()
        if name in POLICIES:
            ops[name] = AugmentOp(name, None, parse_policy(name, raw))
            continue
        if name not in OPERATIONS:
            raise InputError(f"unknown augmentation '{name}'; valid: {valid} (comma-separated, e.g. shift,flip,lighting)")
        value = None
        if raw.strip():
            _, meaning, (low, high) = OPERATIONS[name]
            try:
                value = float(raw)
            except ValueError:
                raise InputError(f"augmentation {name}: '{raw}' is not a number ({meaning})") from None
            if not low <= value <= high:
                raise InputError(f"augmentation {name}={raw}: the {meaning} must be in [{low:g}, {high:g}]")
        ops[name] = AugmentOp(name, value)
    return BatchAugment(list(ops.values()), generator)


def valid_names() -> list[str]:
    return [*OPERATIONS, *POLICIES]
