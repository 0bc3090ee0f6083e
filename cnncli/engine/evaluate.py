"""Evaluation: top-1, top-5, loss and the confusion matrix over in-memory uint8 images."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from cnncli.engine import distributed
from cnncli.engine.metrics import confusion_update, per_class_report


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    n: int
    confusion: list[list[int]]
    per_class: list[dict[str, Any]] = field(default_factory=list)
    images_per_second: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "n": self.n,
                "per_class": self.per_class, "confusion": self.confusion,
                "images_per_second": self.images_per_second, "seconds": self.seconds}


def _batches(images, n_total: int, index: torch.Tensor | None, batch_size: int):
    """(selection, uint8 batch): slices of in-memory images, or a streaming split's batches
    (data/stream.py: decoded in DataLoader workers; files skipped by --skip-bad-images left out)."""
    split = getattr(images, "split", None)
    if split is not None and hasattr(split, "eval_batches"):
        yield from split.eval_batches(batch_size, index)
        return
    count = n_total if index is None else len(index)
    for lo in range(0, count, batch_size):
        sel = slice(lo, lo + batch_size) if index is None else index[lo:lo + batch_size]
        yield sel, images[sel]


def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    class_names: list[str] | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    amp: bool | torch.dtype = False,
    shard: bool = True,
    on_batch: Callable[[Any, torch.Tensor, torch.Tensor], None] | None = None,
) -> EvalResult:
    """`prepare` turns a uint8 batch into the network's normalized float input on `device`.

    `on_batch(index, logits, targets)`, when given, sees every batch (`index`: a slice or the
    indices of the batch's images), for per-image records such as `eval --predictions`.

    Under torchrun each rank evaluates its own shard and the counts are summed. `amp`: True
    (bf16) or the autocast dtype (a run's resolved precision), False for float32.
    """
    amp_dtype = amp if isinstance(amp, torch.dtype) else torch.bfloat16
    device = torch.device(device)
    ctx = distributed.context()
    n_total = len(labels)
    if shard and ctx.enabled:
        index = torch.arange(ctx.rank, n_total, ctx.world_size)
    else:
        index = None
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum = torch.zeros((), dtype=torch.float64)
    top5_hits = torch.zeros((), dtype=torch.int64)
    k = min(5, num_classes)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=bool(amp)):
        for sel, batch in _batches(images, n_total, index, batch_size):
            x = prepare(batch)
            y = labels[sel].to(device, non_blocking=True)
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double().cpu()
            top5_hits += (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum().cpu()
            confusion_update(confusion, y.cpu(), logits.argmax(dim=1).cpu(), num_classes)
            if on_batch is not None:
                on_batch(sel, logits, y)
    seconds = time.perf_counter() - start
    if ctx.enabled and shard:
        stats = torch.cat([confusion.flatten().double(), loss_sum.view(1), top5_hits.double().view(1)])
        distributed.all_reduce_sum(stats)
        confusion = stats[: num_classes * num_classes].round().long().view(num_classes, num_classes)
        loss_sum, top5_hits = stats[-2], stats[-1]
    model.train(was_training)
    n = int(confusion.sum())
    matrix = confusion.tolist()
    names = class_names or [str(i) for i in range(num_classes)]
    return EvalResult(
        top1=float(confusion.diagonal().sum()) / max(1, n),
        top5=float(top5_hits) / max(1, n),
        loss=float(loss_sum) / max(1, n),
        n=n,
        confusion=matrix,
        per_class=per_class_report(matrix, names),
        images_per_second=n / seconds if seconds > 0 else 0.0,
        seconds=seconds,
    )
