"""Photo folders: cnncli's streaming pipeline against torchvision ImageFolder + DataLoader, side by side.

A generated folder of N JPEG photos (300-900 px a side, 10 classes; kept in the cache folder and
reused) is trained on by `cnncli train --stream` and by a plain loop (torchvision
`ImageFolder`, `RandomResizedCrop` + flip, `DataLoader` with the same workers and batch size,
the same timm network and optimizer). For each side, in alternation, `--repeats` times, each in
its own process:

- `first_step_s`: from the command's start to the end of its first training step;
- `train_images_per_s`: training steps after the first, images / second;
- `loader_images_per_s`: the loader alone (decode + transforms + batching, no network);
- `peak_rss_mb`: the peak memory of the process and its workers together (the sum of their
  proportional set sizes, sampled from /proc every 0.1 s).

One JSON line per measurement, then a `summary` line per size with the medians and the ratios
(cnncli / baseline; above 1 is better for speed, below 1 for memory). With `--cache disk`
cnncli also runs with its store (the first run builds it; later ones read it).

    python bench/photo_pipeline.py [--photos 3000 30000] [--model timm/resnet18] [--img-size 224]
                                   [--batch-size 32] [--workers N] [--steps 20] [--repeats 2] [--cache]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import cpu_flags, emit, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


# ------------------------------------------------------------------------------ the photos
def photo_folder(n: int, root: Path | None = None) -> Path:
    """N generated JPEG photos in CLASSES class folders (cached: made once per N)."""
    import numpy as np
    from PIL import Image

    if root is None:
        from cnncli.data.registry import cache_dir

        root = cache_dir() / "bench"
    folder = root / f"photos-{n}"
    if (folder / ".complete").is_file():
        return folder
    rng = np.random.default_rng(n)
    tmp = root / f".photos-{n}.{os.getpid()}.tmp"
    for i in range(n):
        label = i % CLASSES
        w, h = (int(v) for v in rng.integers(300, 901, size=2))
        # a smooth colour field of the class's hue plus noise: JPEG sizes like real photos
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([np.sin(x / (20 + 7 * label)) + np.cos(y / (31 + 3 * c)) for c in range(3)], -1)
        noise = rng.normal(0, 0.35, size=(h // 4 + 1, w // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
        pixels = np.clip((base + noise) * 60 + 40 + 15 * label, 0, 255).astype(np.uint8)
        (tmp / f"class_{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp / f"class_{label}" / f"{i:06d}.jpg", quality=90)
    (tmp / ".complete").write_text(str(n))
    if folder.exists():  # an incomplete earlier copy
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


# ------------------------------------------------------------------------------ measuring a process
def _pss(pid: int) -> int | None:
    """Proportional set size: pages shared by forked workers counted once in all, not once each."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def tree_rss(pid: int) -> int:
    """Bytes resident in `pid` and all its descendants (Linux /proc): the sum of their PSS where
    the kernel gives it (a sum of RSS would count the parent's pages once per forked worker)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * page
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        pss = _pss(p)
        total += pss if pss is not None else rss.get(p, 0)
        stack += children.get(p, [])
    return total


def run_child(args: list[str], timeout: float) -> dict:
    """Run this script in child mode; its JSON result plus the peak RSS of its process tree."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    start = time.time()
    proc = subprocess.Popen([sys.executable, __file__, "--child-out", out, "--t0", repr(start), *args],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        code = proc.wait(timeout=timeout)
    finally:
        done.set()
        sampler.join()
        if proc.poll() is None:
            proc.kill()
    result = json.loads(Path(out).read_text() or "{}") if code == 0 else {"error": f"exit {code}"}
    os.unlink(out)
    result["peak_rss_mb"] = round(peak / 2**20, 1)
    result["wall_s"] = round(time.time() - start, 2)
    return result


# ------------------------------------------------------------------------------ the two sides (child mode)
def _steps_timer(steps: int, batch: int, t0: float):
    marks: list[float] = []

    def mark():
        marks.append(time.time())

    def result() -> dict:
        if not marks:
            return {"error": "no training step ran"}
        rate = (len(marks) - 1) * batch / (marks[-1] - marks[0]) if len(marks) > 1 else None
        return {"first_step_s": round(marks[0] - t0, 2), "steps": len(marks),
                "train_images_per_s": round(rate, 1) if rate else None}

    return mark, result


def child_cnncli_train(a, t0: float) -> dict:
    """`cnncli train` itself (the CLI), with a hook that times each training step."""
    from cnncli.engine import step as step_module

    mark, result = _steps_timer(a.steps, a.batch_size, t0)
    original = step_module.TrainStep.__call__

    def timed(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        mark()
        return out

    step_module.TrainStep.__call__ = timed
    from cnncli.cli import app

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", a.model, "--data", f"imagefolder:{a.folder}", "--stream", "--img-size", str(a.img_size),
                "--epochs", "1", "--max-samples", str(a.steps * a.batch_size), "--val-fraction", "0.01",
                "--batch-size", str(a.batch_size), "--workers", str(a.workers), "--threads", str(a.threads),
                "--out", str(Path(tmp) / "run"), "--quiet"]
        if a.cache:
            argv += ["--cache", "disk"]
        try:
            app(argv, standalone_mode=False)
        except SystemExit as e:  # pragma: no cover
            if e.code:
                raise
    return result()


def _baseline_loader(a, train: bool = True):
    import torch
    from torchvision import datasets
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(a.img_size, antialias=True),
                            v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    data = datasets.ImageFolder(str(a.folder), transform=transform)
    sampler = torch.utils.data.RandomSampler(data, num_samples=a.steps * a.batch_size,
                                             generator=torch.Generator().manual_seed(0))
    kwargs = {"persistent_workers": True} if a.workers > 0 else {}
    return torch.utils.data.DataLoader(data, batch_size=a.batch_size, sampler=sampler,
                                       num_workers=a.workers, drop_last=True, **kwargs)


def child_baseline_train(a, t0: float) -> dict:
    """The plain loop: ImageFolder + the same transforms + DataLoader, the same network and optimizer."""
    import torch

    torch.set_num_threads(a.threads)
    from cnncli.models.registry import create_model

    model = create_model(a.model, num_classes=CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mark, result = _steps_timer(a.steps, a.batch_size, t0)
    model.train()
    for x, y in _baseline_loader(a):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        mark()
    return result()


def child_cnncli_loader(a, t0: float) -> dict:
    """cnncli's streaming split alone: epoch batches from its workers, no network."""
    import torch

    from cnncli.data.registry import load_dataset

    data = load_dataset(f"imagefolder:{a.folder}", stream=True, val_fraction=0.01,
                        max_samples=a.steps * a.batch_size)
    data.configure((3, a.img_size, a.img_size), workers=a.workers)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    marks = [time.time() for _ in data.train.epoch_batches(order, a.batch_size, 0, 0)]
    return _loader_result(marks, a.batch_size)


def child_baseline_loader(a, t0: float) -> dict:
    marks = [time.time() for _ in _baseline_loader(a)]
    return _loader_result(marks, a.batch_size)


def _loader_result(marks: list[float], batch: int) -> dict:
    if len(marks) < 2:
        return {"error": "fewer than two batches"}
    return {"loader_images_per_s": round((len(marks) - 1) * batch / (marks[-1] - marks[0]), 1)}


CHILDREN = {"cnncli-train": child_cnncli_train, "baseline-train": child_baseline_train,
            "cnncli-loader": child_cnncli_loader, "baseline-loader": child_baseline_loader}


# ------------------------------------------------------------------------------ the bench
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, nargs="+", default=[3000], help="folder sizes to measure")
    parser.add_argument("--model", default="timm/resnet18")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: usable cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    parser.add_argument("--steps", type=int, default=20, help="training steps (and loader batches) measured")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", action="store_true", help="also measure cnncli with --cache disk")
    parser.add_argument("--folder-root", type=Path, default=None, help="where the generated photos are kept")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    a = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    a.workers = cores if a.workers is None else a.workers
    a.threads = cores if a.threads is None else a.threads

    if a.child:
        result = CHILDREN[a.child](a, a.t0)
        Path(a.child_out).write_text(json.dumps(result))
        return

    info = machine("photo_pipeline")
    flags = cpu_flags()
    emit(bench="photo_pipeline", kind="cpu_flags",
         flags=sorted(f for f in flags if f.startswith(("avx", "amx", "sse4", "fma", "vnni", "f16c")))
         or sorted(flags)[:40], cores=info["cores"], usable_cores=cores)
    common = ["--model", a.model, "--img-size", str(a.img_size), "--batch-size", str(a.batch_size),
              "--workers", str(a.workers), "--threads", str(a.threads), "--steps", str(a.steps)]
    for n in a.photos:
        started = time.time()
        folder = photo_folder(n, a.folder_root)
        emit(bench="photo_pipeline", kind="folder", photos=n, path=str(folder),
             bytes=sum(p.stat().st_size for p in folder.rglob("*.jpg")), made_s=round(time.time() - started, 1))
        sides = ["cnncli-train", "baseline-train", "cnncli-loader", "baseline-loader"]
        if a.cache:
            sides.insert(1, "cnncli-train-cache")
        results: dict[str, list[dict]] = {s: [] for s in sides}
        for r in range(a.repeats):
            for side in (sides if r % 2 == 0 else list(reversed(sides))):  # alternate which goes first
                child = side.removesuffix("-cache")
                extra = ["--cache"] if side.endswith("-cache") else []
                res = run_child(["--child", child, "--folder", str(folder), *common, *extra], a.timeout)
                results[side].append(res)
                emit(bench="photo_pipeline", kind="run", photos=n, side=side, repeat=r, **res)
        summary = {side: {k: _median([x.get(k) for x in runs])
                          for k in ("first_step_s", "train_images_per_s", "loader_images_per_s", "peak_rss_mb")}
                   for side, runs in results.items()}
        ratios = {}
        for metric, ours, theirs in (("train_images_per_s", "cnncli-train", "baseline-train"),
                                     ("peak_rss_mb", "cnncli-train", "baseline-train"),
                                     ("first_step_s", "cnncli-train", "baseline-train"),
                                     ("loader_images_per_s", "cnncli-loader", "baseline-loader")):
            o, t = summary[ours][metric], summary[theirs][metric]
            ratios[metric] = round(o / t, 2) if o and t else None
        emit(bench="photo_pipeline", kind="summary", photos=n, model=a.model, img_size=a.img_size,
             batch_size=a.batch_size, workers=a.workers, steps=a.steps, repeats=a.repeats,
             medians=summary, cnncli_over_baseline=ratios, load_average=[round(v, 2) for v in os.getloadavg()])


def _median(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(values), 2) if values else None


if __name__ == "__main__":
    main()
