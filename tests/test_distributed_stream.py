"""The streaming photo pipeline under torchrun: 2 CPU ranks (gloo), a generated JPEG folder, --stream.

One launch (a module fixture) trains LeNet-5 at 32 px (--cache disk) on a folder of 36 training JPEGs with one
DataLoader worker per rank, while this process trains the same run in one process (workers 0:
a sample's crop is seeded by where it is in the run, not by the worker that makes it). Every
training batch each rank draws is recorded (which files, a digest of each cropped image).

- the ranks' samples of an epoch are disjoint and together the epoch, in the library's order:
  rank r takes every 2nd sample of the one-process epoch, so step s of both ranks is the
  one-process run's step s, with the same crops; each rank's batch is half of --batch-size;
- the ranks end with identical weights, and with the one-process run's (DDP averages the two
  half-batch gradients into the full-batch one; no dropout, no batch augment);
- --cache disk: the 3 processes (started together) build each split's store once and read it;
- a file that does not decode in the val split and one in the test split (--skip-bad-images)
  land on one rank each: the count is summed over the ranks (2 validations + 1 test = 3), the
  same on both ranks and in the one-process run, and recorded in the run's checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

OPTIONS = {"model": "lenet5", "epochs": 2, "batch_size": 8, "img_size": 32, "seed": 3, "lr": 0.01,
           "amp": "off", "threads": 1, "stream": True, "skip_bad_images": True, "cache": "disk"}  # float32
CLASSES, TRAIN_PER_CLASS = ("cat", "dog", "owl"), 12
TIMEOUT = 300

WORKER = textwrap.dedent('''
    """Run under torchrun: one streaming training run, recording each rank's batches."""
    import json, sys
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[3])
    import test_distributed_stream as t
    from test_distributed import watch_drift
    from cnncli.data.stream import StreamSplit
    from cnncli.engine import distributed
    from cnncli.engine.config import build_config
    from cnncli.engine import trainer as trainer_module

    out_file, options = sys.argv[1], json.loads(sys.argv[2])
    log, drift = [], []  # drift: max |rank r - rank 0| over the parameters, at each validation
    watch_drift(trainer_module, drift)
    StreamSplit.epoch_batches = t.recording(StreamSplit.epoch_batches, log, options.pop("root"))
    trainer = trainer_module.Trainer(build_config(None, options), quiet=True)
    result = trainer.fit()
    rank = dist.get_rank()
    with open(f"{out_file}.{rank}", "w") as f:
        json.dump({"rank": rank, "world_size": dist.get_world_size(), "batches": log, "drift": drift,
                   "result": result.to_dict(), "cache": trainer.data.info.get("cache")}, f)
    distributed.shutdown()
''')


def recording(epoch_batches, log: list, root: str):
    """`StreamSplit.epoch_batches` that appends each batch it yields to `log`: the epoch, step,
    the batch size asked for, the files (relative to `root`) and a digest of each crop."""
    def recorded(self, order, batch_size, epoch, seed, *args, **kwargs):
        ids = self.ids
        for item in epoch_batches(self, order, batch_size, epoch, seed, *args, **kwargs):
            step, positions, x, _ = item
            log.append({"epoch": epoch, "step": step, "batch_size": batch_size,
                        "files": [os.path.relpath(ids[p], root) for p in positions.tolist()],
                        "crops": [hashlib.sha1(x[k].numpy().tobytes()).hexdigest()[:16] for k in range(len(x))]})
            yield item
    return recorded


def make_folder(root: Path) -> None:
    """train/val/test class folders of JPEGs of varied sizes (class = dominant colour), and one
    truncated JPEG in val and in test (their headers read, their data does not)."""
    rng = np.random.default_rng(0)
    for split, n in {"train": TRAIN_PER_CLASS, "val": 2, "test": 2}.items():
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(n):
                h, w = (int(v) for v in rng.integers(30, 70, 2))
                a = (rng.random((h, w, 3)) * 120).astype("uint8")
                a[..., c] += 120
                Image.fromarray(a).save(folder / f"{k:02d}.jpg", quality=90)
    for split in ("val", "test"):
        good = (root / split / "cat" / "00.jpg").read_bytes()
        (root / split / "cat" / "broken.jpg").write_bytes(good[:200])


def child_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CNNCLI_DEBUG": ""}
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-rank launch (in the background) and the one-process run (here, meanwhile)."""
    root = tmp_path_factory.mktemp("ddp_stream")
    photos = root / "photos"
    make_folder(photos)
    data = f"imagefolder:{photos}"
    worker = root / "worker.py"
    worker.write_text(WORKER)
    options = {**OPTIONS, "data": data, "workers": 1, "out": str(root / "ddp"), "root": str(photos)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker),
           str(root / "rank.json"), json.dumps(options), str(Path(__file__).parent)]
    proc = subprocess.Popen(cmd, cwd=root, env={**child_env(), "XDG_CACHE_HOME": str(root / "cache")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(root / "cache"))  # the ranks' cache folder: 3 processes, one store
    try:
        from cnncli.data.stream import StreamSplit
        from cnncli.engine.config import build_config
        from cnncli.engine.trainer import Trainer

        log: list = []
        original = StreamSplit.epoch_batches
        StreamSplit.epoch_batches = recording(original, log, str(photos))
        try:
            trainer = Trainer(build_config(None, {**OPTIONS, "data": data, "workers": 0, "out": str(root / "one")}),
                              quiet=True)
            single = trainer.fit().to_dict()
        finally:
            StreamSplit.epoch_batches = original
            patch.undo()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{err[-4000:]}"
    ranks = [json.loads((root / f"rank.json.{r}").read_text()) for r in range(2)]
    return {"root": root, "ranks": ranks, "single": single, "single_batches": log,
            "single_cache": trainer.data.info.get("cache")}


def _by_step(batches: list[dict]) -> dict[tuple[int, int], dict]:
    return {(b["epoch"], b["step"]): b for b in batches}


def test_ranks_take_disjoint_halves_of_each_global_batch_in_the_library_order(runs):
    r0, r1 = (_by_step(r["batches"]) for r in runs["ranks"])
    single = _by_step(runs["single_batches"])
    train_files = {f for b in runs["single_batches"] if b["epoch"] == 0 for f in b["files"]}
    assert len(train_files) == len(CLASSES) * TRAIN_PER_CLASS == 36
    assert r0.keys() == r1.keys() == single.keys() == {(e, s) for e in range(2) for s in range(5)}
    for epoch in range(2):
        seen = [[f for (e, _), b in sorted(r.items()) if e == epoch for f in b["files"]] for r in (r0, r1)]
        assert not set(seen[0]) & set(seen[1]) and len(set(seen[0])) == len(seen[0]) == 18
        assert set(seen[0]) | set(seen[1]) == train_files  # the union is the epoch
    for key, whole in single.items():
        a, b = r0[key], r1[key]
        assert a["batch_size"] == b["batch_size"] == OPTIONS["batch_size"] // 2 and whole["batch_size"] == 8
        assert len(a["files"]) + len(b["files"]) == len(whole["files"])  # the global batch: 8 (4 at the end)
        assert a["files"] == whole["files"][0::2] and b["files"] == whole["files"][1::2]  # rank r: every 2nd
        assert a["crops"] == whole["crops"][0::2] and b["crops"] == whole["crops"][1::2]  # the same crops
    assert [len(single[(0, s)]["files"]) for s in range(5)] == [8, 8, 8, 8, 4]
    assert runs["single_batches"][0]["files"] != sorted(runs["single_batches"][0]["files"])  # shuffled


def test_ranks_end_with_identical_weights_equal_to_the_one_process_run(runs):
    from cnncli.checkpoint import load_checkpoint

    ddp, _ = load_checkpoint(runs["root"] / "ddp" / "last.safetensors")
    one, _ = load_checkpoint(runs["root"] / "one" / "last.safetensors")
    assert ddp.keys() == one.keys()
    diff = max(float((ddp[k].float() - one[k].float()).abs().max()) for k in ddp)
    assert diff < 1e-4, diff
    assert any(float((ddp[k].float() - v.float()).abs().max()) > 0 for k, v in _initial_weights(ddp).items())
    for r in runs["ranks"]:  # at each epoch's validation and at the test, all ranks held rank 0's weights
        assert r["drift"] == [0.0] * (OPTIONS["epochs"] + 1), r["drift"]
    # every rank's copy is rank 0's: both scored the same test figures from the same weights
    results = [r["result"] for r in runs["ranks"]]
    assert results[0]["test_top1"] == results[1]["test_top1"] == pytest.approx(runs["single"]["test_top1"])


def _initial_weights(like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from cnncli.models.registry import build_model

    torch.manual_seed(OPTIONS["seed"])
    state = build_model("lenet5", num_classes=len(CLASSES)).module.state_dict()
    return {k: state[k] for k in like}


def test_skipped_images_are_summed_over_the_ranks_and_recorded(runs):
    from cnncli.checkpoint import read_meta

    for r in runs["ranks"]:
        assert r["result"]["skipped_images"] == 3  # val's broken file at 2 validations, test's once
    assert runs["single"]["skipped_images"] == 3
    ddp = read_meta(runs["root"] / "ddp" / "model.safetensors")["skipped_images"]
    one = read_meta(runs["root"] / "one" / "model.safetensors")["skipped_images"]
    assert ddp["count"] == one["count"] == 3 and ddp["by_split"] == {"train": 0, "val": 2, "test": 1}
    assert sorted(ddp["first"]) == sorted(one["first"]) and len(ddp["first"]) == 2
    assert all("broken.jpg" in m for m in ddp["first"])
    last = read_meta(runs["root"] / "ddp" / "last.safetensors")["skipped_images"]
    assert last["by_split"] == {"train": 0, "val": 2, "test": 0}  # written before the test split ran


def test_cache_disk_is_built_once_by_the_three_processes_and_read_by_all(runs):
    """--cache disk: the 2 ranks and the one-process run (started together, one cache folder)
    each open the stores of train, val and test; one process built each, the others waited on its
    lock (or found it done) and read it."""
    records = [r["cache"] for r in runs["ranks"]] + [runs["single_cache"]]
    assert all(r and r["mode"] == "disk" for r in records)
    for split in ("train", "val", "test"):
        opened = [r["splits"][split] for r in records]
        assert len({o["path"] for o in opened}) == 1 and len({o["images"] for o in opened}) == 1
        assert sum(not o["hit"] for o in opened) == 1, (split, opened)  # built once
    stores = [p for p in (runs["root"] / "cache" / "cnncli" / "images").iterdir() if not p.name.startswith(".")]
    assert len(stores) == 3
