"""Evaluation and prediction throughput (images/s): cnncli versus a plain `torch.inference_mode` loop.

Evaluation, on `--eval-images` of Fashion-MNIST's test images (2,000 by default, to keep
the run short; 10000 for all), batches of 512:
- baseline: torchvision's `FashionMNIST` (the same files), `ToTensor` + `Normalize` (and
  `Resize(32)` for LeNet-5), a `DataLoader` (`num_workers=0`, then each of `--workers`),
  `model.eval()` and `torch.inference_mode()`, counting correct predictions;
- cnncli: `evaluate_checkpoint`, what `cnncli eval CHECKPOINT` runs (top-1, top-5, loss and
  the confusion matrix, on uint8 images held in memory).
Two figures each: the loop alone (`loop_images_per_second`; cnncli's is the one it reports)
and the whole call, loading the data and the network included (`end_to_end_images_per_second`).

Prediction, on `--predict-images` PNG files written from the test set, batches of 32:
- baseline: PIL opens each file, the same transforms, `torch.stack`, `inference_mode`,
  softmax and top-5;
- cnncli: `predict_files(open_predictor(checkpoint))`, what `cnncli predict` runs.

Both sides use the same network with the same (untrained: speed does not depend on the
values) weights, saved as a cnncli checkpoint. Rounds alternate the two sides; each
variant's best round is kept.

    python bench/eval_throughput.py            # lenet5 and typical_cnn, 1-2 minutes quiet
    python bench/eval_throughput.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import emit, machine, torchvision_root

TARGET = 1.0


def make_checkpoint(name: str, folder: Path) -> Path:
    """A cnncli checkpoint of `name` for fashion-mnist, with the metadata a trained run writes."""
    from cnncli import output
    from cnncli.checkpoint import save_checkpoint
    from cnncli.engine.config import build_config
    from cnncli.engine.trainer import Trainer

    output.set_quiet(True)
    trainer = Trainer(build_config(None, {"model": name, "data": "fashion-mnist", "out": str(folder / "run"),
                                          "max_samples": 100}), quiet=True)
    path = folder / f"{name}.safetensors"
    save_checkpoint(path, trainer.model.state_dict(), trainer.checkpoint_meta(0, {}))
    return path


def baseline_transform(meta: dict):
    from torchvision import transforms

    size = meta["input_size"][-1]
    resize = [transforms.Resize(size)] if size != 28 else []
    return transforms.Compose(resize + [transforms.ToTensor(), transforms.Normalize(meta["mean"], meta["std"])])


def baseline_eval(checkpoint: Path, root: str, workers: int, batch_size: int, limit: int | None) -> dict:
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets

    from cnncli.checkpoint import load_model

    start = time.perf_counter()
    model, meta = load_model(checkpoint)  # the same network and weights (a user's own class, in effect)
    model.eval()
    dataset = datasets.FashionMNIST(root, train=False, download=False, transform=baseline_transform(meta))
    if limit:
        dataset = Subset(dataset, range(limit))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    loop_start = time.perf_counter()
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    end = time.perf_counter()
    return {"images": total, "top1": correct / total, "loop_seconds": end - loop_start,
            "end_to_end_seconds": end - start}


def cnncli_eval(checkpoint: Path, batch_size: int, limit: int | None) -> dict:
    from cnncli.engine.eval_run import evaluate_checkpoint

    start = time.perf_counter()
    doc = evaluate_checkpoint(str(checkpoint), split="test", batch_size=batch_size, device="cpu",
                              max_samples=limit)
    end = time.perf_counter()
    return {"images": doc["n"], "top1": doc["top1"], "loop_seconds": doc["seconds"], "end_to_end_seconds": end - start}


def write_pngs(root: str, folder: Path, count: int) -> list[str]:
    from torchvision import datasets

    dataset = datasets.FashionMNIST(root, train=False, download=False)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image, label = dataset[i]
        path = folder / f"{i:05d}_{label}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def baseline_predict(checkpoint: Path, paths: list[str], batch_size: int) -> dict:
    import torch
    from PIL import Image

    from cnncli.checkpoint import load_model

    start = time.perf_counter()
    model, meta = load_model(checkpoint)
    model.eval()
    transform = baseline_transform(meta)
    loop_start = time.perf_counter()
    results = []
    with torch.inference_mode():
        for lo in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("L")) for p in paths[lo:lo + batch_size]])
            probs, classes = torch.softmax(model(batch), dim=1).topk(5, dim=1)
            results += list(zip(probs.tolist(), classes.tolist()))
    end = time.perf_counter()
    return {"images": len(results), "loop_seconds": end - loop_start, "end_to_end_seconds": end - start}


def cnncli_predict(checkpoint: Path, paths: list[str], batch_size: int) -> dict:
    from cnncli.predict import open_predictor, predict_files

    start = time.perf_counter()
    predictor = open_predictor(str(checkpoint), device="cpu")
    loop_start = time.perf_counter()
    results = list(predict_files(predictor, paths, top_k=5, batch_size=batch_size))
    end = time.perf_counter()
    assert not any(r.error for r in results)
    return {"images": len(results), "loop_seconds": end - loop_start, "end_to_end_seconds": end - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,typical_cnn")
    parser.add_argument("--batch-size", type=int, default=512, help="evaluation batch size")
    parser.add_argument("--predict-batch-size", type=int, default=32)
    parser.add_argument("--eval-images", type=int, default=2000,
                        help="test images to evaluate (a multiple of 10; 10000 is the whole test set)")
    parser.add_argument("--predict-images", type=int, default=500)
    parser.add_argument("--workers", default="2", help="DataLoader num_workers to try besides 0 (comma-separated)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="500 test images, 64 files, one round")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    machine("eval_throughput")
    workers = [0] + [int(w) for w in args.workers.split(",") if w and int(w) > 0]
    rounds = 1 if args.quick else args.rounds
    # cnncli's max_samples takes the first images of each class, the baseline the first images
    limit = 500 if args.quick else (args.eval_images if args.eval_images < 10000 else None)
    n_files = 64 if args.quick else args.predict_images
    root = torchvision_root()
    try:
        with tempfile.TemporaryDirectory(prefix="cnncli-bench-eval-") as tmp:
            tmp = Path(tmp)
            paths = write_pngs(root.name, tmp / "png", n_files)
            for name in [m for m in args.models.split(",") if m]:
                checkpoint = make_checkpoint(name, tmp)
                ck = checkpoint
                tasks = {f"baseline_workers{w}": ("eval", lambda w=w, ck=ck: baseline_eval(ck, root.name, w, args.batch_size, limit))
                         for w in workers}
                tasks["cnncli"] = ("eval", lambda ck=ck: cnncli_eval(ck, args.batch_size, limit))
                tasks["baseline_predict"] = ("predict", lambda ck=ck: baseline_predict(ck, paths, args.predict_batch_size))
                tasks["cnncli_predict"] = ("predict", lambda ck=ck: cnncli_predict(ck, paths, args.predict_batch_size))
                best: dict[str, dict] = {}
                every: dict[str, list[float]] = {}
                for round_index in range(rounds):
                    order = list(tasks) if round_index % 2 == 0 else list(reversed(tasks))
                    for variant in order:
                        task, run = tasks[variant]
                        figure = run()
                        figure["loop_images_per_second"] = figure["images"] / figure["loop_seconds"]
                        figure["end_to_end_images_per_second"] = figure["images"] / figure["end_to_end_seconds"]
                        emit(bench="eval_throughput", kind="measurement", task=task, model=name, variant=variant,
                             round=round_index + 1, **{k: round(v, 4) if isinstance(v, float) else v
                                                       for k, v in figure.items()})
                        every.setdefault(variant, []).append(figure["loop_images_per_second"])
                        if variant not in best or figure["loop_images_per_second"] > best[variant]["loop_images_per_second"]:
                            best[variant] = figure
                evals = [v for v in best if tasks[v][0] == "eval" and v != "cnncli"]
                best_base = max(evals, key=lambda v: best[v]["loop_images_per_second"])
                for task, ours, theirs in (("eval", "cnncli", best_base), ("predict", "cnncli_predict", "baseline_predict")):
                    loop = best[ours]["loop_images_per_second"] / best[theirs]["loop_images_per_second"]
                    whole = best[ours]["end_to_end_images_per_second"] / best[theirs]["end_to_end_images_per_second"]
                    emit(bench="eval_throughput", kind="summary", task=task, model=name, baseline=theirs,
                         cnncli_loop_images_per_second=round(best[ours]["loop_images_per_second"], 1),
                         baseline_loop_images_per_second=round(best[theirs]["loop_images_per_second"], 1),
                         speedup_loop=round(loop, 3), speedup_end_to_end=round(whole, 3),
                         speedup_loop_of_medians=round(statistics.median(every[ours]) / statistics.median(every[theirs]), 3),
                         target=TARGET, target_met=loop >= TARGET, quick=args.quick)
    finally:
        root.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
