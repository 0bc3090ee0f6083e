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

Both sides train in the same precision (`--precision fp32|bf16|both`; by default both where the
CPU has AVX512-BF16/AMX, which cnncli's `--amp auto` picks there, else fp32): cnncli with
`--amp off` or `--amp bf16`, the plain loop in float32 or under the same
`torch.autocast("cpu", bfloat16)`. The cnncli process stops
after its last measured step, as the plain loop does (the same work: start-up and `--steps`
training steps; its validation and test passes are not part of the figures).

`--cache`: cnncli also trains two epochs of `--steps` steps with `--cache disk` in a fresh cache
folder: the first epoch's start includes building the store (`first_step_s`), the second
epoch reads it (`epoch2_images_per_s`, the goal's figure).

One JSON line per measurement, then a `summary` line per size with the medians, the ratios
(cnncli / baseline; above 1 is better for speed, below 1 for memory) and each goal of issue 12
with PASS or FAIL; with several sizes a last `summary` line checks that memory stays flat.

    python bench/photo_pipeline.py [--photos 3000 30000] [--model timm/resnet18] [--img-size 224]
                                   [--batch-size 32] [--workers N] [--steps 20] [--repeats 2] [--cache]
                                   [--precision auto|fp32|bf16|both]
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
            # two reads back to back, the smaller kept: a read that straddles a fork counts the
            # parent's pages whole in the parent (read before) and again in half in the child
            # (read after); measured on a 1 GiB process forking 2 children: single reads peaked
            # at 1,206 MB, this at 1,047 MB (the true figure)
            peak = max(peak, min(tree_rss(proc.pid), tree_rss(proc.pid)))
            done.wait(0.25)  # two reads every 0.1 s took ~0.7 of a core, every 0.25 s ~0.3

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
class _Measured(BaseException):
    """Raised from the step hook once the measured steps ran: the cnncli run stops there."""


def _steps_timer(steps: int, batch: int, t0: float, epochs: int = 1):
    marks: list[float] = []

    def mark():
        marks.append(time.time())
        if len(marks) >= steps * epochs:
            raise _Measured

    def rate(ms: list[float]):
        return round((len(ms) - 1) * batch / (ms[-1] - ms[0]), 1) if len(ms) > 1 else None

    def result() -> dict:
        if not marks:
            return {"error": "no training step ran"}
        out = {"first_step_s": round(marks[0] - t0, 2), "steps": len(marks), "train_images_per_s": rate(marks[:steps])}
        if epochs > 1:  # the second epoch's steps alone (between the epochs: validation, checkpoints)
            out["epoch2_images_per_s"] = rate(marks[steps:2 * steps])
        return out

    return mark, result


def child_cnncli_train(a, t0: float) -> dict:
    """`cnncli train` itself (the CLI), with a hook that times each training step."""
    from cnncli.engine import step as step_module

    epochs = 2 if a.cache else 1
    mark, result = _steps_timer(a.steps, a.batch_size, t0, epochs)
    original = step_module.TrainStep.__call__

    def timed(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        mark()
        return out

    step_module.TrainStep.__call__ = timed
    from cnncli.cli import app

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", a.model, "--data", f"imagefolder:{a.folder}", "--stream", "--img-size", str(a.img_size),
                "--epochs", str(epochs), "--max-samples", str(a.steps * a.batch_size), "--val-fraction", "0.01",
                "--batch-size", str(a.batch_size), "--workers", str(a.workers), "--threads", str(a.threads),
                "--amp", "bf16" if a.precision == "bf16" else "off", "--out", str(Path(tmp) / "run"), "--quiet"]
        if a.cache:  # a fresh cache folder: the first epoch builds the store, the second reads it
            os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
            argv += ["--cache", "disk"]
        try:
            app(argv, standalone_mode=False)
        except _Measured:
            pass
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
    bf16 = a.precision == "bf16"
    try:
        for x, y in _baseline_loader(a):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mark()
    except _Measured:
        pass
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


def child_cnncli_loader_cache(a, t0: float) -> dict:
    """The same split read from a `--cache disk` store (built first in a fresh cache folder, not
    timed): the loader's images/s from the second epoch on, where the loader is what waits."""
    import torch

    from cnncli.data.cache import request_cache
    from cnncli.data.registry import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        data = load_dataset(f"imagefolder:{a.folder}", stream=True, val_fraction=0.01,
                            max_samples=a.steps * a.batch_size)
        request_cache(data, "disk")
        started = time.time()
        data.configure((3, a.img_size, a.img_size), workers=a.workers)
        built = time.time() - started
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
        marks = [time.time() for _ in data.train.epoch_batches(order, a.batch_size, 1, 0)]
        return {**_loader_result(marks, a.batch_size), "store_build_s": round(built, 2)}


def child_baseline_loader(a, t0: float) -> dict:
    marks = [time.time() for _ in _baseline_loader(a)]
    return _loader_result(marks, a.batch_size)


def _loader_result(marks: list[float], batch: int) -> dict:
    if len(marks) < 2:
        return {"error": "fewer than two batches"}
    return {"loader_images_per_s": round((len(marks) - 1) * batch / (marks[-1] - marks[0]), 1)}


CHILDREN = {"cnncli-train": child_cnncli_train, "baseline-train": child_baseline_train,
            "cnncli-loader": child_cnncli_loader, "baseline-loader": child_baseline_loader,
            "cnncli-loader-cache": child_cnncli_loader_cache}


# ------------------------------------------------------------------------------ the bench
GOALS = "issue 12: speed >= 1.0x the baseline (training, loader), >= 1.5x from the second epoch with --cache disk; " \
    "peak memory <= 1.2x the baseline and within 10% when the folder grows; first step within 5 s"


def _sides(a) -> list[tuple[str, str, list[str]]]:
    """(name, child, extra arguments) of every measurement of one folder size."""
    out = []
    for p in a.precisions:
        out += [(f"cnncli-train-{p}", "cnncli-train", ["--precision", p]),
                (f"baseline-train-{p}", "baseline-train", ["--precision", p])]
        if a.cache:
            out.append((f"cnncli-train-cache-{p}", "cnncli-train", ["--precision", p, "--cache"]))
    out += [("cnncli-loader", "cnncli-loader", []), ("baseline-loader", "baseline-loader", [])]
    return out + ([("cnncli-loader-cache", "cnncli-loader-cache", [])] if a.cache else [])


def _ratio(o, t):
    return round(o / t, 2) if o and t else None


def _goal(value, limit: float, above: bool) -> dict:
    ok = value is not None and (value >= limit if above else value <= limit)
    return {"value": value, "goal": f"{'>=' if above else '<='} {limit:g}", "result": "PASS" if ok else "FAIL"}


def _goals(summary: dict, a) -> dict:
    """Each goal of issue 12 that one folder size measures, with PASS or FAIL."""
    goals = {"loader_speed": _goal(_ratio(summary["cnncli-loader"]["loader_images_per_s"],
                                          summary["baseline-loader"]["loader_images_per_s"]), 1.0, True)}
    for p in a.precisions:
        ours, theirs = summary[f"cnncli-train-{p}"], summary[f"baseline-train-{p}"]
        goals[f"train_speed_{p}"] = _goal(_ratio(ours["train_images_per_s"], theirs["train_images_per_s"]), 1.0, True)
        goals[f"memory_{p}"] = _goal(_ratio(ours["peak_rss_mb"], theirs["peak_rss_mb"]), 1.2, False)
        goals[f"first_step_s_{p}"] = _goal(ours["first_step_s"], 5.0, False)
        # what the plain loop needs to its first step on the same machine (imports + one step)
        goals[f"first_step_s_{p}"]["baseline"] = theirs["first_step_s"]
        if a.cache:
            cached = summary[f"cnncli-train-cache-{p}"]
            goals[f"cache_epoch2_speed_{p}"] = _goal(_ratio(cached["epoch2_images_per_s"],
                                                            theirs["train_images_per_s"]), 1.5, True)
    if a.cache:  # the store read by the loader alone, against the baseline's loader (decoding JPEGs)
        goals["cache_loader_speed"] = _goal(_ratio(summary["cnncli-loader-cache"]["loader_images_per_s"],
                                                   summary["baseline-loader"]["loader_images_per_s"]), 1.5, True)
    return goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, nargs="+", default=[3000, 30000], help="folder sizes to measure")
    parser.add_argument("--model", default="timm/resnet18")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: usable cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    parser.add_argument("--steps", type=int, default=20, help="training steps (and loader batches) measured")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", action="store_true", help="also measure cnncli with --cache disk (two epochs)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "both"), default="auto",
                        help="what both sides train in (both: each side twice; auto: both where the CPU has "
                             "native bf16, else fp32)")
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
    if a.precision == "auto":
        a.precision = "both" if {"avx512_bf16", "amx_bf16"} & set(cpu_flags()) else "fp32"
    a.precisions = ["fp32", "bf16"] if a.precision == "both" else [a.precision]

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
    peaks: dict[int, dict[str, float | None]] = {}
    for n in a.photos:
        started = time.time()
        folder = photo_folder(n, a.folder_root)
        emit(bench="photo_pipeline", kind="folder", photos=n, path=str(folder),
             bytes=sum(p.stat().st_size for p in folder.rglob("*.jpg")), made_s=round(time.time() - started, 1))
        sides = _sides(a)
        results: dict[str, list[dict]] = {name: [] for name, _, _ in sides}
        for r in range(a.repeats):
            for name, child, extra in (sides if r % 2 == 0 else list(reversed(sides))):  # alternate the order
                res = run_child(["--child", child, "--folder", str(folder), *common, *extra], a.timeout)
                results[name].append(res)
                emit(bench="photo_pipeline", kind="run", photos=n, side=name, repeat=r, **res)
        keys = ("first_step_s", "train_images_per_s", "epoch2_images_per_s", "loader_images_per_s", "store_build_s",
                "peak_rss_mb")
        summary = {name: {k: _median([x.get(k) for x in runs]) for k in keys if any(k in x for x in runs)}
                   for name, runs in results.items()}
        for name in summary:
            summary[name].setdefault("peak_rss_mb", None)
        peaks[n] = {p: summary[f"cnncli-train-{p}"]["peak_rss_mb"] for p in a.precisions}
        emit(bench="photo_pipeline", kind="summary", photos=n, model=a.model, img_size=a.img_size,
             batch_size=a.batch_size, workers=a.workers, steps=a.steps, repeats=a.repeats,
             precisions=a.precisions, medians=summary, goals=_goals(summary, a), goals_from=GOALS,
             load_average=[round(v, 2) for v in os.getloadavg()])
    if len(peaks) > 1:  # memory flat in the folder's size: the largest folder's peak over the smallest's
        small, large = min(peaks), max(peaks)
        emit(bench="photo_pipeline", kind="summary", photos=[small, large],
             goals={f"memory_flat_{p}": _goal(_ratio(peaks[large][p], peaks[small][p]), 1.1, False)
                    for p in a.precisions})


def _median(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(values), 2) if values else None


if __name__ == "__main__":
    main()
