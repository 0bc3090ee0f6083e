"""Frozen-base speed: head epochs on cached base features vs recomputing the base every epoch.

The same `cnncli finetune` head stage (base frozen, no augmentation, only
the new classifier trains) runs twice with the same seed and batches: with
`--cache-features` (the base's features computed once, in the first epoch) and with
`--no-cache-features` (the base runs on every batch of every epoch). One JSON line per run
with the seconds of each epoch, then a summary line with the speed-up per epoch and for the
whole stage. The heads the two runs end with agree (tests/test_finetune.py checks it).

    python bench/feature_cache.py [--model timm/tf_efficientnet_lite0] [--data fashion-mnist-mini]
                                  [--max-samples 1000] [--img-size 64] [--epochs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import emit, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="timm/tf_efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="pretrained weights file (default: the usual sources)")
    parser.add_argument("--data", default="fashion-mnist-mini")
    parser.add_argument("--max-samples", type=int, default=1000)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cnncli.finetune import FinetuneConfig, finetune

    machine("feature_cache")
    # one forward first, so that neither run pays for oneDNN's one-off kernel setup
    from cnncli.models.registry import create_model

    warm = create_model(args.model).eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        warm(torch.zeros(args.batch_size, 3, args.img_size, args.img_size))
    del warm
    runs = {}
    with tempfile.TemporaryDirectory(prefix="cnncli-bench-cache-") as tmp:
        for cache in (True, False):
            cfg = FinetuneConfig(model=args.model, weights=args.weights, data=args.data,
                                 max_samples=args.max_samples, val_fraction=0.0, img_size=args.img_size,
                                 head_epochs=args.epochs, unfreeze=0, cache_features=cache,
                                 batch_size=args.batch_size, threads=args.threads, seed=0,
                                 out=str(Path(tmp) / f"cache-{cache}"))
            result = finetune(cfg, quiet=True)
            seconds = [row["seconds"] for row in result.history]
            runs[cache] = seconds
            emit(bench="feature_cache", kind="result", cache=cache, model=args.model, data=args.data,
                 images=args.max_samples, img_size=args.img_size, epoch_seconds=seconds,
                 head_stage_seconds=round(sum(seconds), 2), test_top1=result.test.top1 if result.test else None)
    uncached = statistics.median(runs[False])
    cached_later = statistics.median(runs[True][1:]) if len(runs[True]) > 1 else None
    emit(bench="feature_cache", kind="summary", model=args.model, img_size=args.img_size, images=args.max_samples,
         uncached_epoch_s=round(uncached, 2), cached_first_epoch_s=round(runs[True][0], 2),
         cached_later_epoch_s=round(cached_later, 3) if cached_later is not None else None,
         speedup_per_later_epoch=round(uncached / cached_later, 1) if cached_later else None,
         speedup_head_stage=round(sum(runs[False]) / sum(runs[True]), 2))


if __name__ == "__main__":
    main()
