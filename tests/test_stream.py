"""Streaming datasets (data/stream.py, data/folders.py): real JPEG/PNG folders generated here.

- one interface: a folder loaded in memory and the same folder streamed have the same splits,
  labels and ids, and both train through the same commands;
- layouts: PATH/train|val|test with val/ as the validation split; csv:FILE trains;
- exact resume with 2 DataLoader workers: SIGTERM mid-run and SIGKILL, then --resume, end with
  the weights of the uninterrupted run; a batch does not depend on the number of workers;
- a file that fails to decode: exit 1, one line naming it, state saved; --skip-bad-images skips,
  counts, reports and records it;
- --max-samples decodes only what it uses; memory stays flat when the folder grows 10x;
- transforms keep the aspect ratio.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnncli.checkpoint import load_checkpoint, read_meta
from cnncli.data import load_dataset
from cnncli.data.stream import FileSource, PhotoTransform, StreamConfig, StreamSplit, sample_seed
from cnncli.track.base import Logger

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "CNNCLI_DEBUG": "", "OMP_NUM_THREADS": "1"}
TIMEOUT = 600


def make_photos(root: Path, per_class: dict[str, int], classes=("cat", "dog", "owl"), seed: int = 0,
                size=(30, 90)) -> list[Path]:
    """Colour photos of varied sizes and aspect ratios, JPEG and PNG alternating; the class is the
    dominant colour channel, so a network can learn it."""
    rng = np.random.default_rng(seed)
    made = []
    for split, n in per_class.items():
        for c, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                h, w = (int(v) for v in rng.integers(size[0], size[1], 2))
                a = (rng.random((h, w, 3)) * 120).astype("uint8")
                a[..., c % 3] += 120
                path = folder / (f"{k:03d}.jpg" if k % 2 else f"{k:03d}.png")
                Image.fromarray(a).save(path)
                made.append(path)
    return made


def weights_equal(a: Path, b: Path) -> bool:
    wa, _ = load_checkpoint(a)
    wb, _ = load_checkpoint(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


TRAIN = ["train", "lenet5", "--epochs", "3", "--batch-size", "2", "--img-size", "32", "--seed", "3",
         "--deterministic", "--augment", "flip,shift", "--threads", "1", "--quiet"]


# ---------------------------------------------------------------- one interface, two kinds
def test_a_folder_in_memory_and_streamed_has_the_same_splits(tmp_path):
    make_photos(tmp_path / "f", {"": 10})
    name = f"imagefolder:{tmp_path / 'f'}"
    mem = load_dataset(name, val_fraction=0.2, seed=4, stream=False)
    st = load_dataset(name, val_fraction=0.2, seed=4, stream=True)
    assert not getattr(mem, "streaming", False) and st.streaming
    for a, b in ((mem.train, st.train), (mem.val, st.val), (mem.test, st.test)):
        assert a.ids == b.ids and torch.equal(a.labels, b.labels) and a.class_names == b.class_names
    assert (len(st.train), len(st.val), len(st.test)) == (18, 6, 6)
    st.configure((3, 24, 24), workers=0)
    assert tuple(st.train.images[:3].shape) == (3, 3, 24, 24) and st.train.images.dtype == torch.uint8
    seen = torch.cat([p for p, _ in st.val.eval_batches(4)])
    assert seen.tolist() == list(range(len(st.val)))
    # measured on the training images (colour photos around 0.5), not a default
    assert len(st.mean) == 3 and all(0.3 < m < 0.7 for m in st.mean)


def test_small_folders_stay_in_memory_and_large_ones_stream(tmp_path, monkeypatch):
    from cnncli.data import folders

    make_photos(tmp_path / "f", {"": 4})
    name = f"imagefolder:{tmp_path / 'f'}"
    assert not getattr(load_dataset(name, val_fraction=0.0), "streaming", False)
    monkeypatch.setattr(folders, "MEMORY_BUDGET", 10_000)  # 12 photos of ~3600 px x 3 bytes are more
    assert load_dataset(name, val_fraction=0.0).streaming


def test_both_kinds_train_and_evaluate_through_the_same_commands(tmp_path, run_cli):
    make_photos(tmp_path / "f", {"": 8})
    data = f"imagefolder:{tmp_path / 'f'}"
    for kind in ("--stream", "--no-stream"):
        out = tmp_path / kind.strip("-")
        result = run_cli(*TRAIN[:2], "--data", data, kind, "--workers", "0", "--epochs", "1", "--batch-size", "4",
                         "--img-size", "32", "--out", out)
        assert result.exit_code == 0, result.stderr
        assert "15 train / 3 val / 6 test images, 3 classes" in result.stderr  # said at the start
        evaluated = run_cli("eval", out, "--data", data, "--split", "test", "--json")
        assert evaluated.exit_code == 0, evaluated.stderr
        assert json.loads(evaluated.stdout)["n"] == 6
    run = tmp_path / "stream"
    pipeline = read_meta(run / "model.safetensors")["data_pipeline"]
    assert pipeline["kind"] == "stream"
    assert pipeline["eval_batch_size"] == 4  # eval batches of photos: never more than a training step's
    every = run_cli("eval", run, "--data", data, "--split", "all", "--json")
    assert every.exit_code == 0, every.stderr
    assert json.loads(every.stdout)["n"] == 24
    photo = next((tmp_path / "f" / "owl").glob("*.jpg"))
    predicted = run_cli("predict", run, photo, "--json")
    assert predicted.exit_code == 0, predicted.stderr
    assert json.loads(predicted.stdout.splitlines()[0])["top"][0]["class"] in ("cat", "dog", "owl")


# ---------------------------------------------------------------- layouts
def test_val_folder_is_the_validation_split_and_test_is_held_out(tmp_path):
    make_photos(tmp_path / "f", {"train": 10, "val": 2})
    splits = load_dataset(f"imagefolder:{tmp_path / 'f'}", val_fraction=0.1, stream=True)
    assert len(splits.val) == 6 and all("/val/" in i for i in splits.val.ids)
    assert len(splits.test) == 6 and all("/train/" in i for i in splits.test.ids)  # 0.2 of train held out
    assert len(splits.train) == 24 and splits.info["val_split"] == "given"


def test_csv_trains_with_relative_absolute_paths_and_label_names(tmp_path, run_cli):
    files = make_photos(tmp_path / "imgs", {"": 6})
    rows = [("path", "label", "split")]
    for k, f in enumerate(files):
        path = str(f) if k % 3 == 0 else str(f.relative_to(tmp_path))
        rows.append((path, f.parent.name, "val" if k % 6 == 5 else ""))
    with open(tmp_path / "data.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    splits = load_dataset(f"csv:{tmp_path / 'data.csv'}", stream=True)
    assert splits.class_names == ["cat", "dog", "owl"] and len(splits.val) == 3
    out = tmp_path / "run"
    result = run_cli(*TRAIN[:2], "--data", f"csv:{tmp_path / 'data.csv'}", "--stream", "--workers", "0",
                     "--epochs", "1", "--batch-size", "4", "--img-size", "32", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert read_meta(out / "model.safetensors")["class_names"] == ["cat", "dog", "owl"]


# ---------------------------------------------------------------- exact order and resume
def _batches(split, order, start=0):
    return [(s, p.tolist(), x) for s, p, x, _ in split.epoch_batches(order, 4, 2, 7, start)]


def test_a_batch_depends_on_its_place_in_the_run_not_on_the_workers(tmp_path):
    make_photos(tmp_path / "f", {"": 5})
    index = load_dataset(f"imagefolder:{tmp_path / 'f'}", val_fraction=0.0, stream=True, hold_out_test=False)
    source = index.train.src
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(1))
    runs = {}
    for workers in (0, 2):
        split = StreamSplit(source, "x", "y", StreamConfig(size=24, train=True, workers=workers))
        runs[workers] = _batches(split, order)
        tail = _batches(split, order, start=2)  # a resumed epoch: the same batches from step 2 on
        assert [s for s, _, _ in tail] == [2, 3]
        assert all(a[1] == b[1] and torch.equal(a[2], b[2]) for a, b in zip(runs[workers][2:], tail))
    assert all(a[1] == b[1] and torch.equal(a[2], b[2]) for a, b in zip(runs[0], runs[2]))
    assert sample_seed(7, 2, 0, 0) != sample_seed(7, 2, 0, 1) != sample_seed(7, 3, 0, 1)
    first = runs[0][0][2]
    assert not torch.equal(first[0], first[1])


class _StopAt(Logger):
    """A training callback that sends this process SIGTERM at one step (mid-epoch, on purpose)."""

    wants_steps = True

    def __init__(self, step: int):
        self.at = step

    def on_step(self, step, scalars):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_mid_epoch_and_sigkill_then_resume_end_with_the_uninterrupted_weights(tmp_path, run_cli):
    """With 2 DataLoader workers: SIGTERM at step 11 (epoch 2 of 8-step epochs), resume in a
    process that is SIGKILLed once epoch 2 is written, resume to the end: the same weights."""
    from cnncli.engine.config import build_config
    from cnncli.engine.console import TrainingInterrupted
    from cnncli.engine.trainer import Trainer

    make_photos(tmp_path / "f", {"": 6})
    data = f"imagefolder:{tmp_path / 'f'}"
    straight = tmp_path / "straight"
    result = run_cli(*TRAIN, "--data", data, "--stream", "--workers", "2", "--out", straight)
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "stopped"
    cfg = build_config(None, {"model": "lenet5", "data": data, "epochs": 3, "batch_size": 2, "img_size": 32, "seed": 3,
                              "deterministic": True, "augment": ["flip", "shift"], "threads": 1, "stream": True,
                              "workers": 2, "out": str(out)})
    with pytest.raises(TrainingInterrupted):
        Trainer(cfg, quiet=True, callbacks=[_StopAt(11)]).fit()
    state = read_meta(out / "train_state.safetensors")["train_state"]
    assert state["epoch"] == 1 and 0 < state["step"] < 8  # stopped inside epoch 2 (of 8 steps)

    resume = [sys.executable, "-m", "cnncli", "train", "--resume", str(out), "--threads", "1", "--quiet"]
    proc = subprocess.Popen(resume, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + TIMEOUT
    while proc.poll() is None and len(metrics.read_text().splitlines()) < 2:
        assert time.time() < deadline
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=TIMEOUT)
    done = run_cli("train", "--resume", out, "--threads", "1", "--quiet")
    assert done.exit_code == 0, done.stderr
    assert weights_equal(out / "last.safetensors", straight / "last.safetensors")
    assert weights_equal(out / "model.safetensors", straight / "model.safetensors")


# ---------------------------------------------------------------- bad files
def test_a_file_that_fails_mid_epoch_stops_with_one_line_or_is_skipped(tmp_path, run_cli):
    files = make_photos(tmp_path / "f", {"": 8})
    bad = files[9]
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated file: its header reads, its data does not
    args = [*TRAIN[:2], "--data", f"imagefolder:{tmp_path / 'f'}", "--stream", "--workers", "2", "--epochs", "2",
            "--batch-size", "4", "--img-size", "32", "--val-fraction", "0"]
    result = run_cli(*args, "--out", tmp_path / "stops")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(bad) in lines[0] and "--skip-bad-images" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "stops" / "config.toml").exists()

    result = run_cli(*args, "--skip-bad-images", "--out", tmp_path / "skips")
    assert result.exit_code == 0, result.stderr
    assert "skipped" in result.stderr and str(bad) in result.stderr
    record = read_meta(tmp_path / "skips" / "model.safetensors")["skipped_images"]
    assert record["count"] >= 1 and str(bad) in record["first"][0]


def _png_declaring(path: Path, width: int, height: int) -> None:
    """A 100-byte PNG whose header declares width x height RGB pixels (its data is one row)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_huge_declared_image_is_refused_before_decoding(tmp_path, run_cli):
    make_photos(tmp_path / "f", {"": 4})
    _png_declaring(tmp_path / "f" / "cat" / "huge.png", 12000, 9000)  # 108 megapixels, 324 MB decoded
    result = run_cli(*TRAIN[:2], "--data", f"imagefolder:{tmp_path / 'f'}", "--stream", "--workers", "0",
                     "--epochs", "1", "--batch-size", "4", "--img-size", "32", "--skip-bad-images",
                     "--val-fraction", "0", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    record = read_meta(tmp_path / "run" / "model.safetensors")["skipped_images"]
    assert record["count"] == 1 and "huge.png" in record["first"][0] and "megapixels" in record["first"][0]


# ---------------------------------------------------------------- reading only what is used
def test_max_samples_decodes_only_the_images_it_uses(tmp_path, run_cli, monkeypatch):
    make_photos(tmp_path / "f", {"train": 20, "test": 2})
    decoded = []
    original = FileSource.load

    def counting(self, i, *args):
        decoded.append(self.ids[i])
        return original(self, i, *args)

    monkeypatch.setattr(FileSource, "load", counting)
    result = run_cli(*TRAIN[:2], "--data", f"imagefolder:{tmp_path / 'f'}", "--stream", "--workers", "0",
                     "--epochs", "1", "--batch-size", "4", "--img-size", "32", "--max-samples", "6",
                     "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    # 6 train + 3 val (the validation cap keeps one per class) + 6 given test images; of 66 files
    assert len(set(decoded)) == 15, sorted(set(decoded))
    assert sum("/test/" in d for d in set(decoded)) == 6


MEMORY_SCRIPT = """
import resource, sys, torch
from cnncli.data import load_dataset
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KB on Linux
for name in sys.argv[1:]:
    splits = load_dataset(name, val_fraction=0.0, hold_out_test=False, stream=True)
    splits.configure((3, 32, 32), workers=0)
    for _ in splits.train.epoch_batches(torch.randperm(len(splits.train)), 16, 0, 0): pass
    print(peak())
"""


def test_memory_stays_flat_when_the_folder_grows_tenfold(tmp_path):
    """400x400 photos of one colour: 2 KB as PNG, 480 KB decoded each. Holding 200 decoded would
    take 96 MB; a streamed pass over every one of them peaks where a pass over 20 did."""
    folders = []
    for n in (20, 200):
        root = tmp_path / str(n)
        for k in range(n):
            folder = root / ("a" if k % 2 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (400, 400), (k % 255, 80, 160)).save(folder / f"{k}.png")
        folders.append(f"imagefolder:{root}")
    run = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *folders], env=ENV, capture_output=True, text=True,
                         timeout=TIMEOUT, check=False)
    assert run.returncode == 0, run.stderr
    after_20, after_200 = (int(v) for v in run.stdout.split()[-2:])
    assert after_200 - after_20 < 24 * 2**20, (after_20, after_200)


# ---------------------------------------------------------------- transforms
def test_eval_transform_keeps_the_aspect_ratio(tmp_path):
    image = torch.zeros((3, 100, 200), dtype=torch.uint8)
    image[:, 25:75, 75:125] = 255  # a centred 50 x 50 white square in a 2:1 picture
    out = PhotoTransform(StreamConfig(size=32, crop_pct=0.875)).apply(image, 0)
    assert tuple(out.shape) == (3, 32, 32)
    rows, cols = (out[0] > 127).nonzero(as_tuple=True)
    height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    # shorter side to 36 (32 / 0.875): the square becomes 18 x 18, centred; squashing to 32 x 32
    # would have made it 16 tall and 8 wide
    assert abs(height - width) <= 1 and 17 <= height <= 19, (height, width)


def test_train_transform_crops_to_the_size_and_repeats_by_seed():
    image = torch.randint(0, 256, (1, 60, 90), dtype=torch.uint8)  # gray: repeated to colour
    t = PhotoTransform(StreamConfig(size=24, train=True))
    a, b, c = t.apply(image, 5), t.apply(image, 5), t.apply(image, 6)
    assert tuple(a.shape) == (3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)


def test_finetune_streams_a_folder_and_does_not_cache_random_crops(tmp_path, run_cli, tiny_run):
    make_photos(tmp_path / "f", {"": 6})
    out = tmp_path / "ft"
    # in this process (workers 0): forking DataLoader workers from the test process late in the
    # suite cost 90 s once; the workers themselves are tested above
    result = run_cli("finetune", tiny_run, "--data", f"imagefolder:{tmp_path / 'f'}", "--stream", "--workers", "0",
                     "--head-epochs", 1, "--epochs", 1, "--unfreeze", 1, "--batch-size", 4, "--out", out,
                     "--threads", 1)
    assert result.exit_code == 0, result.stderr
    assert "not caching the base's features: a streaming dataset's random crops" in result.stderr
    meta = read_meta(out / "model.safetensors")
    assert meta["data_pipeline"]["kind"] == "stream" and meta["input_size"] == [1, 32, 32]
    assert meta["mean"] == read_meta(tiny_run / "model.safetensors")["mean"]  # the backbone's, not measured
    assert meta["data_pipeline"]["interpolation"] == "bilinear"  # a hand-built backbone has no config


def test_a_timm_backbone_streams_with_its_weights_interpolation_and_a_resume_keeps_the_recorded_one(
        tmp_path, run_cli):
    """timm's test_efficientnet weights say bicubic: the run resizes so and records it; a run that
    recorded another (or none, before this was recorded) resumes with that one."""
    import timm
    from safetensors.torch import save_file

    from cnncli.data.stream import StreamSplit

    make_photos(tmp_path / "f", {"": 4})
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_efficientnet").state_dict(), str(weights))
    seen = []
    original = StreamSplit.configure
    StreamSplit.configure = lambda self, cfg: (seen.append(cfg.interpolation), original(self, cfg))[1]
    try:
        args = ["finetune", "timm/test_efficientnet", "--weights", weights, "--data", tmp_path / "f", "--stream",
                "--workers", "0", "--img-size", 32, "--head-epochs", 1, "--epochs", 0, "--batch-size", 4,
                "--threads", 1, "--out", tmp_path / "ft"]
        result = run_cli(*args)
        assert result.exit_code == 0, result.stderr
        assert read_meta(tmp_path / "ft" / "model.safetensors")["data_pipeline"]["interpolation"] == "bicubic"
        assert set(seen) == {"bicubic"}
        from cnncli.engine import stream_feed

        seen.clear()
        recorded = stream_feed._recorded_pipeline
        stream_feed._recorded_pipeline = lambda run_dir: {"kind": "stream"}  # a run from before: none recorded
        try:
            resumed = run_cli("finetune", "--resume", tmp_path / "ft", "--epochs", 1, "--threads", 1)
        finally:
            stream_feed._recorded_pipeline = recorded
        assert resumed.exit_code == 0, resumed.stderr
        assert "resuming" in resumed.stderr and set(seen) == {"bilinear"}  # as that run was trained
    finally:
        StreamSplit.configure = original


# ---------------------------------------------------------------- what the pipeline costs
def _counting_opens(monkeypatch) -> list[str]:
    import builtins
    import io

    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def counting_os_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(os, "open", counting_os_open)
    return opened


def test_indexing_a_folder_opens_none_of_its_files(tmp_path, monkeypatch):
    """A streamed folder is a directory scan: no file is opened before training asks for it;
    when the kind is chosen by size, only the priced sample of headers is read."""
    from cnncli.data import folders

    for k in range(300):
        folder = tmp_path / "f" / f"c{k % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k:04d}.jpg").write_bytes(b"")  # never read, so never decoded
    name = f"imagefolder:{tmp_path / 'f'}"
    opened = _counting_opens(monkeypatch)
    splits = load_dataset(name, val_fraction=0.1, stream=True)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 300
    assert [p for p in opened if str(tmp_path) in p] == []
    monkeypatch.setattr(folders, "MEMORY_BUDGET", -1)  # priced (a sample of headers), then streamed
    assert load_dataset(name, val_fraction=0.1, stream=None).streaming
    assert 0 < len([p for p in opened if str(tmp_path) in p]) <= folders.HEADER_SAMPLE


def test_one_splits_workers_run_at_a_time_and_batches_do_not_change(tmp_path):
    """A val or test pass shuts the idle training workers down (and the other way round), so
    the process tree holds `workers` workers at most; a training pass after them, in new
    workers, gives the batches it gave before."""
    import multiprocessing

    earlier = set(multiprocessing.active_children())  # workers of runs earlier in this process

    def ours() -> int:
        return len(set(multiprocessing.active_children()) - earlier)

    make_photos(tmp_path / "f", {"": 8})
    splits = load_dataset(f"imagefolder:{tmp_path / 'f'}", val_fraction=0.2, stream=True)
    splits.configure((3, 32, 32), workers=1)
    order = torch.arange(len(splits.train))
    first = _batches(splits.train, order)
    assert ours() == 1
    for split in (splits.val, splits.test, splits.val.subset(torch.tensor([0, 1]))):
        assert sum(len(p) for p, _ in split.eval_batches(4)) == len(split)
        assert ours() == 1
    again = _batches(splits.train, order)
    assert ours() == 1
    assert len(first) == len(again) and all(a[:2] == b[:2] and torch.equal(a[2], b[2]) for a, b in zip(first, again))
    splits.train.close()
    assert ours() == 0


def _reachable_objects(root) -> int:
    """Python objects reachable from `root` (classes, modules and functions not followed)."""
    import gc
    import types

    seen, stack = set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return len(seen)


def test_the_source_a_worker_reads_holds_no_object_per_file():
    """Forked workers write the reference count of every object they read, which copies its
    page into the worker: a split's paths live in one packed buffer, so what a worker holds
    does not grow with the number of files."""
    from cnncli.data.stream import SubsetSource

    counts = []
    for n in (100, 10_000):
        paths = [f"/photos/class_{k % 10}/{k:06d}.jpg" for k in range(n)]
        source = SubsetSource(FileSource(paths, [k % 10 for k in range(n)], [str(c) for c in range(10)]),
                              torch.arange(0, n, 2))
        assert source.ids[1] == paths[2] and len(source.ids) == n // 2 and list(source.ids)[-1] == paths[-2]
        counts.append(_reachable_objects(source))
    assert counts[0] == counts[1], counts
