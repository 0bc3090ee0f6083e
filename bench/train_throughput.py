"""Training throughput (images/s): cnncli's loop versus the plain PyTorch loop a user writes.

The baseline is the twenty lines of the PyTorch tutorials: torchvision's `FashionMNIST`
dataset (reading the same files cnncli reads), `ToTensor` + `Normalize` (and `Resize(32)` for
LeNet-5, whose input is 32x32: cnncli resizes the batch the same way), a shuffled
`DataLoader`, the same network from cnncli's registry, `torch.optim.AdamW` with the same
learning rate and weight decay, and `zero_grad / forward / backward / step`. It runs with
`num_workers=0` (the default) and with each of `--workers` (what a user tunes); the best of
those is the figure to beat.

cnncli runs through its library exactly as `cnncli train` does (`Trainer.fit`): two epochs of
`--steps` steps each on a stratified subset of the training set; the first epoch is the
warm-up and the second is timed (the trainer times its epochs itself). The baseline takes
`--warmup` steps, then `--steps` timed steps. Rounds alternate baseline and cnncli, so a
machine whose load changes hurts both alike; each variant's best round is reported (the
least disturbed one) along with every round, and the ratio of the medians.

    python bench/train_throughput.py                 # lenet5 and typical_cnn, ~2-3 minutes
    python bench/train_throughput.py --quick         # a smoke test of the script, seconds
    python bench/train_throughput.py --models lenet5 --rounds 3

Output: one JSON line per measurement (`kind: measurement`) and one per model with the
speed-ups and the target (`kind: summary`), after a `kind: machine` line.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import emit, machine, torchvision_root

TARGETS = {"lenet5": 2.0, "typical_cnn": 1.25}  # the project's targets on a 2-core CPU
DEFAULT_STEPS = {"lenet5": 100, "typical_cnn": 10}  # timed steps per round
LR, WEIGHT_DECAY = 1e-3, 0.05  # cnncli's AdamW defaults, given to the baseline too


def baseline_images_per_second(name: str, root: str, batch_size: int, workers: int, warmup: int,
                               steps: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from cnncli.models.registry import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    built = build_model(name, num_classes=10)
    model = built.module
    size = built.info.input_size[-1]
    steps_needed = [transforms.Resize(size)] if size != 28 else []
    # Fashion-MNIST's own mean and std, as cnncli computes them on its training split
    transform = transforms.Compose(steps_needed + [transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
    dataset = datasets.FashionMNIST(root, train=True, download=False, transform=transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    model.train()
    batches = iter(loader)

    def step() -> None:
        x, y = next(batches)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {"images": steps * batch_size, "seconds": seconds, "images_per_second": steps * batch_size / seconds}


def cnncli_images_per_second(name: str, batch_size: int, steps: int, threads: int, extra: dict) -> dict:
    import torch

    from cnncli import output
    from cnncli.engine.config import build_config
    from cnncli.engine.trainer import Trainer

    torch.set_num_threads(threads)
    output.set_quiet(True)
    with tempfile.TemporaryDirectory(prefix="cnncli-bench-run-") as out:
        cfg = build_config(None, {"model": name, "data": "fashion-mnist", "epochs": 2, "batch_size": batch_size,
                                  "max_samples": steps * batch_size, "val_fraction": 0.0, "out": out,
                                  "lr": LR, "weight_decay": WEIGHT_DECAY, **extra})
        trainer = Trainer(cfg, quiet=True)
        trainer.data.test = None  # the throughput of training only: no test-set evaluation at the end
        result = trainer.fit()
    timed = result.history[-1]  # the second epoch; the first was the warm-up
    images = len(trainer.data.train.labels)
    return {"images": images, "seconds": timed["seconds"], "images_per_second": timed["images_per_second"],
            "steps": math.ceil(images / batch_size)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,typical_cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default: per model)")
    parser.add_argument("--warmup", type=int, default=5, help="baseline steps before timing")
    parser.add_argument("--workers", default="2",
                        help="DataLoader num_workers to try besides 0, comma-separated (2 = the cores here)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    parser.add_argument("--amp", action="store_true", help="cnncli with --amp bf16 (bf16 autocast)")
    parser.add_argument("--compile", action="store_true", help="cnncli with --compile")
    parser.add_argument("--quick", action="store_true", help="a few steps, one round: checks the script runs")
    args = parser.parse_args(argv)

    import torch

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    machine("train_throughput")
    models = [m for m in args.models.split(",") if m]
    workers = [0] + [int(w) for w in args.workers.split(",") if w and int(w) > 0]
    extra = {k: v for k, v in (("amp", "bf16"), ("compile", True)) if getattr(args, k)}
    rounds = 1 if args.quick else args.rounds
    root = torchvision_root()
    try:
        for name in models:
            steps = args.steps or (3 if args.quick else DEFAULT_STEPS.get(name, 20))
            warmup = 2 if args.quick else args.warmup
            best: dict[str, dict] = {}
            every: dict[str, list[float]] = {}
            for round_index in range(rounds):
                runs = [(f"baseline_workers{w}", lambda w=w, name=name, warmup=warmup, steps=steps:
                         baseline_images_per_second(name, root.name, args.batch_size, w, warmup, steps, threads))
                        for w in workers]
                runs.append(("cnncli", lambda name=name, steps=steps:
                             cnncli_images_per_second(name, args.batch_size, steps, threads, extra)))
                if round_index % 2:
                    runs.reverse()  # neither side always runs first
                for variant, run in runs:
                    figure = run()
                    emit(bench="train_throughput", kind="measurement", model=name, variant=variant,
                         round=round_index + 1, batch_size=args.batch_size, threads=threads,
                         steps=figure.get("steps", steps), **{k: round(v, 3) if isinstance(v, float) else v
                                                               for k, v in figure.items() if k != "steps"},
                         **({"cnncli_options": extra} if variant == "cnncli" and extra else {}))
                    every.setdefault(variant, []).append(figure["images_per_second"])
                    if variant not in best or figure["images_per_second"] > best[variant]["images_per_second"]:
                        best[variant] = figure
            ours = best["cnncli"]["images_per_second"]
            base0 = best["baseline_workers0"]["images_per_second"]
            base_variant = max((v for v in best if v != "cnncli"), key=lambda v: best[v]["images_per_second"])
            base_best = best[base_variant]["images_per_second"]
            target = TARGETS.get(name)
            # medians too: on a loaded machine one lucky round can make a side's best
            med = {v: statistics.median(xs) for v, xs in every.items()}
            med_base = max(v for k, v in med.items() if k != "cnncli")
            emit(bench="train_throughput", kind="summary", model=name, batch_size=args.batch_size, threads=threads,
                 cnncli_images_per_second=round(ours, 1), baseline_workers0_images_per_second=round(base0, 1),
                 best_baseline=base_variant, best_baseline_images_per_second=round(base_best, 1),
                 speedup_vs_workers0=round(ours / base0, 3), speedup_vs_best_baseline=round(ours / base_best, 3),
                 speedup_of_medians=round(med["cnncli"] / med_base, 3), rounds=rounds,
                 target=target, target_met=(ours / base_best >= target) if target else None,
                 quick=args.quick)
    finally:
        root.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
