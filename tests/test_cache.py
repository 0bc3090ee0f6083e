"""`--cache ram|disk`: images decoded once into a uint8 store; a later run reads it without decoding,
a changed file rebuilds it, a killed writer leaves no half store, the memory budget holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnncli.data import cache
from cnncli.data.transforms import decode_image_file
from cnncli.errors import InputError


def write_jpegs(folder: Path, n: int = 6) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = (64, 40) if i % 2 else (30, 50)
        path = folder / f"{i:02d}.jpg"
        Image.new("RGB" if i != 3 else "L", (w, h), (30 * i, 90, 200 - 20 * i) if i != 3 else 128).save(path)
        paths.append(str(path))
    return paths


def no_decode(path):
    raise AssertionError(f"decoded {path}: the store should have been read")


def test_disk_store_holds_scaled_images_and_a_second_run_decodes_nothing(tmp_path):
    paths = write_jpegs(tmp_path / "img")
    store = cache.open_store(paths, side=20, mode="disk")
    assert not store.hit and len(store) == 6
    for i, path in enumerate(paths):
        image = store[i]
        original = decode_image_file(path)
        assert image.dtype == torch.uint8 and image.shape[0] == original.shape[0]
        assert min(image.shape[1:]) == 20  # shorter side at the training resolution
        ratio = original.shape[1] / original.shape[2]
        assert abs(image.shape[1] / image.shape[2] - ratio) < 0.05  # aspect ratio kept
    again = cache.open_store(paths, side=20, mode="disk", decode=no_decode)
    assert again.hit and all(torch.equal(again[i], store[i]) for i in range(6))
    assert store.path == again.path and str(store.path).startswith(str(cache.store_root()))


def test_a_changed_file_rebuilds_the_store_and_removes_the_old_one(tmp_path):
    paths = write_jpegs(tmp_path / "img")
    first = cache.open_store(paths, side=16, mode="disk")
    Image.new("RGB", (80, 80), (255, 0, 0)).save(paths[2])
    os.utime(paths[2], ns=(1, 1_000_000_000))  # a different mtime whatever the clock did
    second = cache.open_store(paths, side=16, mode="disk")
    assert not second.hit and second.path != first.path and not first.path.exists()
    assert tuple(second[2].shape) == (3, 16, 16) and int(second[2][0].float().mean()) > 240
    # a removed file changes the key too
    third = cache.open_store(paths[:-1], side=16, mode="disk")
    assert not third.hit and len(third) == 5


def test_images_smaller_than_the_side_stay_as_they_are_and_ram_matches_disk(tmp_path):
    paths = write_jpegs(tmp_path / "img", n=4)
    ram = cache.open_store(paths, side=1000, mode="ram", workers=2)
    disk = cache.open_store(paths, side=1000, mode="disk")
    for i, path in enumerate(paths):
        assert torch.equal(ram[i], decode_image_file(path)) and torch.equal(ram[i], disk[i])


def test_ram_store_over_the_memory_budget_is_refused_before_allocation(tmp_path, monkeypatch):
    paths = write_jpegs(tmp_path / "img", n=3)
    monkeypatch.setenv("CNNCLI_MEMORY_BUDGET", "2K")
    with pytest.raises(InputError, match="--cache ram: 3 images .* memory budget"):
        cache.open_store(paths, side=64, mode="ram", decode=no_decode)


KILLER = """
import os, signal, sys
from cnncli.data import cache
from cnncli.data.transforms import decode_image_file
calls = []
def decode(path):
    calls.append(path)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return decode_image_file(path)
cache.open_store(sys.argv[1:], side=16, mode="disk", decode=decode)
"""


def test_a_killed_writer_leaves_no_half_store(tmp_path):
    paths = write_jpegs(tmp_path / "img")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", KILLER, *paths], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-500:]
    root = cache.store_root()
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == []  # no store under its name
    assert any(p.name.endswith(".tmp") for p in root.iterdir())  # the killed writer's temporary
    store = cache.open_store(paths, side=16, mode="disk")
    assert not store.hit and len(store) == 6
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == [store.path.name]  # cleaned up
    assert cache.open_store(paths, side=16, mode="disk", decode=no_decode).hit


RACER = """
import hashlib, json, sys
from cnncli.data import cache
from cnncli.data.transforms import decode_image_file
decoded = []
def decode(path):
    decoded.append(path)
    return decode_image_file(path)
print("ready", flush=True)
sys.stdin.readline()  # the start gate: both processes are past their imports when it opens
waited = []
def waiting(lock):
    waited.append(lock)
    print("waiting", flush=True)  # told before it blocks on the lock
store = cache.open_store(sys.argv[1:], side=16, mode="disk", decode=decode, waiting=waiting)
digest = hashlib.sha256(b"".join(store[i].numpy().tobytes() for i in range(len(store)))).hexdigest()
print(json.dumps({"hit": store.hit, "decoded": len(decoded), "waited": len(waited), "path": str(store.path),
                  "digest": digest}))
"""


def test_two_processes_racing_for_one_store_build_it_once(tmp_path):
    """As the ranks of a torchrun job (or two runs, or two machines on a shared cache folder):
    one takes the lock and builds, the other waits on it and opens the finished store."""
    import json

    paths = write_jpegs(tmp_path / "img", n=8)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, *paths], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
    for proc in procs:  # open both gates at once
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    builders = [r for r in results if not r["hit"]]
    assert len(builders) == 1, results  # one build ...
    assert builders[0]["decoded"] == 8 and sum(r["decoded"] for r in results) == 8  # ... the files decoded once
    assert results[0]["path"] == results[1]["path"] and results[0]["digest"] == results[1]["digest"]
    root = cache.store_root()
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == [Path(results[0]["path"]).name]
    again = cache.open_store(paths, side=16, mode="disk", decode=no_decode)
    digest = __import__("hashlib").sha256(b"".join(again[i].numpy().tobytes() for i in range(8))).hexdigest()
    assert again.hit and digest == results[0]["digest"]


def test_a_process_waits_on_the_lock_then_opens_the_store_its_holder_built(tmp_path):
    """The waiting side, deterministically: this process holds the place's lock, a second one
    is told so (`waiting`) and blocks; the store this one builds meanwhile is what it opens."""
    import json

    from cnncli.data.store_lock import build_lock

    paths = write_jpegs(tmp_path / "img", n=4)
    where, _ = cache.cache_key(paths, 16)
    root = cache.store_root()
    root.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    with build_lock(root, where):
        proc = subprocess.Popen([sys.executable, "-c", RACER, *paths], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "waiting", proc.stderr.read()[-2000:]
        built = cache._build_disk(cache._PathSource(paths, None), paths, 16, None, where,
                                  cache.cache_key(paths, 16)[1], 0, None, None)
        assert proc.poll() is None  # blocked on the lock this process holds
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["waited"] == 1 and result["hit"] and result["decoded"] == 0
    assert result["path"] == str(built.path)


def test_a_damaged_store_is_rebuilt(tmp_path):
    paths = write_jpegs(tmp_path / "img", n=3)
    store = cache.open_store(paths, side=16, mode="disk")
    with open(store.path / "data.u8", "r+b") as f:
        f.truncate(10)
    again = cache.open_store(paths, side=16, mode="disk")
    assert not again.hit and (again.path / "data.u8").stat().st_size == again.nbytes


def test_workers_read_the_disk_store_through_their_own_map(tmp_path):
    from torch.utils.data import DataLoader

    paths = write_jpegs(tmp_path / "img", n=4)
    store = cache.open_store(paths, side=20, mode="disk", channels=3)
    assert store[3].shape[0] == 3 and torch.equal(store[3][0], store[3][2])  # the gray file, as colour
    data = cache.CachedImages(store, [0, 1, 0, 1], transform=lambda x: x[:, :20, :20].float())
    batches = list(DataLoader(data, batch_size=2, num_workers=2))
    assert [b[1].tolist() for b in batches] == [[0, 1], [0, 1]]
    assert torch.equal(batches[1][0][0], store[2][:, :20, :20].float())


def test_train_with_cache_disk_reads_the_store_on_the_second_run_and_rebuilds_after_a_change(run_cli, tmp_path):
    folder = tmp_path / "photos"
    for c, name in enumerate(("cat", "dog", "owl")):
        write_jpegs(folder / name, n=5)
        for i, path in enumerate(sorted((folder / name).iterdir())):  # each class its own colour
            Image.new("RGB", (60, 40) if i % 2 else (36, 70), (80 * c, 40, 200 - 60 * c)).save(path)
    args = ["train", "lenet5", "--data", f"imagefolder:{folder}", "--epochs", "1", "--threads", "1",
            "--workers", "0", "--img-size", "32", "--batch-size", "4", "--cache", "disk"]
    first = run_cli(*args, "--out", tmp_path / "a")
    assert first.exit_code == 0, first.output
    assert "decoding 9 train images once" in first.stderr
    stores = sorted(p.name for p in cache.store_root().iterdir() if not p.name.endswith(".lock"))
    assert len(stores) == 3  # train, val, test (and each one's build lock)
    second = run_cli(*args, "--out", tmp_path / "b")
    assert second.exit_code == 0 and "decoding" not in second.stderr
    assert "9 train images read from" in second.stderr
    assert sorted(p.name for p in cache.store_root().iterdir() if not p.name.endswith(".lock")) == stores
    from cnncli.checkpoint import read_meta

    record = read_meta(tmp_path / "b" / "model.safetensors")["data_source"]["cache"]
    assert record["mode"] == "disk" and record["side"] == 36 and record["splits"]["train"]["hit"] is True
    changed = sorted((folder / "cat").iterdir())[-1]
    Image.new("RGB", (50, 50), (1, 2, 3)).save(changed, format="PNG" if changed.suffix == ".png" else "JPEG")
    os.utime(changed, ns=(2, 2_000_000_000))
    third = run_cli(*args, "--out", tmp_path / "c")
    assert third.exit_code == 0 and "decoding" in third.stderr
    assert len([p for p in cache.store_root().iterdir() if not p.name.endswith(".lock")]) == 3  # replaced


def test_the_first_step_waits_for_the_training_store_only(run_cli, tmp_path, monkeypatch):
    """val's and test's stores are built when their first pass starts, not before the first
    training step; the run's record names each one once it is built."""
    from cnncli.engine import step as step_module

    folder = tmp_path / "photos"
    for name in ("cat", "dog"):
        write_jpegs(folder / name, n=10)
    seen = []
    original = step_module.TrainStep.__call__

    def counting(self, *args, **kwargs):
        if not seen:
            seen.append(sorted(p.name.split("-")[0] for p in cache.store_root().iterdir()
                               if not p.name.startswith(".")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(step_module.TrainStep, "__call__", counting)
    result = run_cli("train", "lenet5", "--data", f"imagefolder:{folder}", "--epochs", "1", "--threads", "1",
                     "--workers", "0", "--img-size", "32", "--batch-size", "4", "--cache", "disk",
                     "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert len(seen[0]) == 1  # the train store alone
    assert "decoding 2 val images once" in result.stderr and "decoding 4 test images once" in result.stderr
    assert len([p for p in cache.store_root().iterdir() if not p.name.startswith(".")]) == 3
    from cnncli.checkpoint import read_meta

    record = read_meta(tmp_path / "run" / "model.safetensors")["data_source"]["cache"]["splits"]
    assert record["train"]["images"] == 14 and record["val"]["hit"] is False and record["val"]["images"] == 2


def test_stores_built_by_workers_hold_the_same_pixels_as_one_built_in_process(tmp_path):
    """The build's workers write their images into the store themselves (a file for disk, shared
    memory for ram): both hold, pixel for pixel, what a build without workers holds."""
    paths = write_jpegs(tmp_path / "photos", n=8)
    alone = cache.open_store(paths, side=24, mode="ram", workers=0)
    ram = cache.open_store(paths, side=24, mode="ram", workers=2)
    disk = cache.open_store(paths, side=24, mode="disk", workers=2)
    assert all(torch.equal(alone[i], ram[i]) and torch.equal(alone[i], disk[i]) for i in range(8))
    assert min(alone[i].shape[1:].numel() for i in range(8)) > 0 and alone[0].float().mean() > 0


def test_val_and_test_stores_that_would_not_fit_are_refused_before_training(run_cli, tmp_path, monkeypatch):
    """Their build waits for their first pass, but whether they fit is said up front (exit 2,
    one line), before any store is built or any step is trained."""
    import collections

    folder = tmp_path / "photos"
    for name in ("cat", "dog"):
        write_jpegs(folder / name, n=10)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 100 << 20))
    result = run_cli("train", "lenet5", "--data", f"imagefolder:{folder}", "--epochs", "1", "--threads", "1",
                     "--workers", "0", "--img-size", "32", "--cache", "disk", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "--cache disk: the val and test images need about" in result.stderr and "Traceback" not in result.stderr
    assert not cache.store_root().exists() or not any(p.is_dir() for p in cache.store_root().iterdir())
    assert not (tmp_path / "run").exists()


def test_a_store_size_estimate_from_a_sample_of_headers_is_close(tmp_path):
    paths = write_jpegs(tmp_path / "photos", n=12)
    source = cache._PathSource(paths, None)
    exact = cache.open_store(paths, side=24, mode="ram").nbytes
    assert cache.estimated_store_bytes(source, 24) == pytest.approx(exact, rel=0.01)
    assert 0.5 * exact < cache.estimated_store_bytes(source, 24, sample=3) < 2 * exact


def test_a_store_resizes_as_the_run_does_and_keys_its_interpolation(tmp_path):
    """A bicubic run (most timm weights) caches bicubic images under a key of its own; bilinear
    stores keep the key they had before the resize was a choice."""
    import numpy as np
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.default_rng(2)
    paths = []
    for i, (h, w) in enumerate([(50, 80), (90, 60)]):  # sharp noise: the two resizes differ
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    assert cache.cache_key(paths, 20) == cache.cache_key(paths, 20, interpolation="bilinear")
    assert cache.cache_key(paths, 20, interpolation="bicubic") != cache.cache_key(paths, 20)
    stores = {m: cache.open_store(paths, side=20, mode="ram", interpolation=m) for m in ("bilinear", "bicubic")}
    for i, path in enumerate(paths):
        image = decode_image_file(path)
        h, w = image.shape[1:]
        size = [20, round(20 * w / h)] if h <= w else [round(20 * h / w), 20]
        for mode, store in stores.items():
            want = resize(image, size, interpolation=InterpolationMode(mode), antialias=True)
            assert torch.equal(store[i], want), (mode, path)
    assert not torch.equal(stores["bilinear"][0], stores["bicubic"][0])


def test_a_file_that_fails_while_cached_is_reported_with_its_reason_on_every_later_run(tmp_path):
    import numpy as np

    from cnncli.data.photo_decode import BadImage

    paths = write_jpegs(tmp_path / "img", n=4)
    noisy = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(paths[2], quality=90)
    data = Path(paths[2]).read_bytes()
    Path(paths[2]).write_bytes(data[: len(data) * 3 // 5])  # its header reads, its pixels do not
    for mode in ("ram", "disk", "disk"):  # the second disk store is read back, not built
        store = cache.open_store(paths, side=16, mode=mode)
        assert set(store.failed) == {2} and store.failed[2], (mode, store.failed)
        inner = type("Files", (), {"ids": paths, "class_names": ["a"], "labels": [0] * len(paths)})()
        with pytest.raises(BadImage) as info:
            cache.CachedSource(inner, store).load(2)
        assert info.value.reason == f"{store.failed[2]} (found when it was cached)"
        assert "truncated" in store.failed[2]  # the decoder's own words, not a bare "cannot decode"
    assert store.hit
