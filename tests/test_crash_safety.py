"""A failure during training loses nothing.

- a diverging loss stops with one clear line (exit 1) and keeps the last good checkpoint;
- SIGTERM finishes the step, writes a resumable state and exits 143; --resume continues;
- SIGKILL at random moments (several times, seeded), including while checkpoints are being
  written: every file in the run directory is always a complete version, and resuming each
  time ends with exactly the weights of an uninterrupted run (CPU, fixed seed);
- a full disk while saving: one clear line (exit 1), the previous checkpoint intact.

The real `python -m cnncli train` runs in subprocesses here; the uninterrupted reference run is
started once, in the background, when the module's first test needs it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

from cnncli.checkpoint import load_checkpoint, save_checkpoint
from cnncli.cli import app
from cnncli.engine.state import load_train_state
from cnncli.fileio import atomic_write_bytes

DATA = "synthetic:n=192,n_test=32,classes=4,size=28"
EPOCHS = 5
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "CNNCLI_DEBUG": ""}
TIMEOUT = 600  # the machine may be shared: generous


def train_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "cnncli", "train", "lenet5", "--data", DATA, "--epochs", str(EPOCHS),
            "--batch-size", "16", "--seed", "11", "--threads", "1", "--augment", "shift,flip",
            "--quiet", "--out", str(out)]


def resume_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "cnncli", "train", "--resume", str(out), "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference run, in the background while the other tests go on."""
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = subprocess.Popen(train_cmd(out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def finished() -> Path:
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err.decode()
        return out

    yield finished
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def weights(path: Path) -> dict[str, torch.Tensor]:
    state, _ = load_checkpoint(path)
    return state


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"


def epochs_done(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def check_every_file_is_complete(out: Path) -> None:
    """After a kill: each file of the run is a complete version (or absent); only hidden temporary
    files of the atomic writer may be incomplete, and they are never read."""
    for path in out.iterdir():
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue
        if path.name == ".cnncli-run":  # the run's marker (cnncli.outputs), written whole at creation
            assert json.loads(path.read_text())["cnncli"] == "run"
        elif path.name == "train_state.safetensors":
            load_train_state(path)
        elif path.suffix == ".safetensors":
            state, meta = load_checkpoint(path)
            assert meta["epoch"] >= 1 and all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
        elif path.name == "metrics.jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
        elif path.name == "results.csv":  # --log csv (the default): whole rows, epochs in order
            import csv

            rows = list(csv.DictReader(path.open()))
            assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
        elif path.name == ".cnncli-run":  # the run's marker and lock (cnncli.outputs), whole from the start
            assert json.loads(path.read_text())["command"] == "train"
        elif path.suffix == ".toml":
            tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                image.load()
        else:
            pytest.fail(f"unexpected file in the run directory: {path.name}")


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = TIMEOUT) -> bool:
    """Poll until `condition()`; False when the process ended first."""
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            return False
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return True


# ------------------------------------------------------------------------------ SIGKILL, SIGTERM
def interrupt(proc: subprocess.Popen, signum: int, out: Path) -> None:
    if signum == signal.SIGKILL:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        return
    # SIGTERM: the current step finishes, a resumable state is written, exit 143, one error line
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    err = stderr.decode()
    if proc.returncode == 0:
        return  # it had just finished
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("error: interrupted by SIGTERM") and f"--resume {out}" in last, err
    _, _, doc = load_train_state(out / "train_state.safetensors")
    assert doc["train_state"]["epoch"] >= 1


@pytest.mark.slow
def test_killed_at_random_moments_then_resumed_ends_with_the_uninterrupted_weights(straight, run_cli, tmp_path):
    """SIGKILL inside the first epoch (no checkpoint yet), then SIGKILL, SIGTERM, SIGKILL each at a
    random moment after one more epoch: a training step, the evaluation or a checkpoint write."""
    out = tmp_path / "killed"
    rng = random.Random(20240607)
    interrupted, leftovers = [], 0
    proc = subprocess.Popen(train_cmd(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if wait_for(lambda: (out / "config.toml").exists(), proc, "the run to start"):
        time.sleep(rng.uniform(0.0, 0.3))
        interrupt(proc, signal.SIGKILL, out)
        interrupted.append("KILL")
        check_every_file_is_complete(out)
    for signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
        before = epochs_done(out)
        proc = subprocess.Popen(resume_cmd(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait_for(lambda before=before: epochs_done(out) > before, proc, "an epoch to finish"):
            break  # the run finished: nothing left to interrupt
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:
            break
        interrupt(proc, signum, out)
        interrupted.append(signal.Signals(signum).name)
        check_every_file_is_complete(out)
        leftovers += len(list(out.glob(".*.tmp")))
    proc.wait(timeout=TIMEOUT)
    done = run_cli("train", "--resume", out, "--threads", "1", "--quiet")  # the last one, to the end, here
    assert done.exit_code == 0, done.output
    assert len(interrupted) >= 3, f"the run finished after only {interrupted}"
    check_every_file_is_complete(out)
    assert not list(out.glob(".*.tmp")), "resuming did not clear what the killed writes left"
    assert epochs_done(out) == EPOCHS
    reference = straight()
    assert_same_weights(out / "last.safetensors", reference / "last.safetensors")
    assert_same_weights(out / "model.safetensors", reference / "model.safetensors")
    print(f"interrupted by {interrupted}; {leftovers} temporary files left by killed writes")


def _rewriter(target: Path, versions: list[bytes]) -> int:
    """Fork a process that atomically rewrites `target` with each version in turn until killed."""
    pid = os.fork()
    if pid == 0:  # no torch in the child: only the writer runs here
        try:
            i = 0
            while True:
                i += 1
                atomic_write_bytes(target, versions[i % 2])
        finally:
            os._exit(0)
    return pid


def test_sigkill_while_writing_leaves_the_old_or_the_new_file(tmp_path):
    """The atomic writer itself, killed at random moments while it rewrites a checkpoint in a loop."""
    from safetensors.torch import save

    target = tmp_path / "model.safetensors"
    versions = [save({"w": torch.full((1 << 20,), float(i))}, metadata={"cnncli": json.dumps({"v": i})})
                for i in range(2)]  # 4 MB each: writing takes a while
    target.write_bytes(versions[0])
    rng = random.Random(7)
    for _ in range(15):
        pid = _rewriter(target, versions)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert target.read_bytes() in versions  # complete, old or new, never torn
        for leftover in tmp_path.glob(".*.tmp"):
            leftover.unlink()  # what a killed writer leaves is a hidden temporary file, never the target


def _two_versions() -> list[bytes]:
    """Checkpoints whose headers differ in length, so a header paired with the other version's
    bytes would point every tensor at the wrong offset."""
    from safetensors.torch import save

    return [save({f"layer{k}.weight": torch.full((64, 64), float(i)) for k in range(8)},
                 metadata={"cnncli": json.dumps({"model": {"name": "x"}, "v": i, "note": "x" * 40 * i})})
            for i in range(2)]


def test_loading_while_another_process_replaces_the_file_gives_one_whole_version(tmp_path):
    # rank 0 rewrites model.safetensors after the test split while other ranks (or `cnncli eval`
    # in a second terminal) load it; safetensors' load_file maps the file by name a second time
    # and read a mix of the two versions about once in thirty loads here
    target = tmp_path / "model.safetensors"
    versions = _two_versions()
    target.write_bytes(versions[0])
    pid = _rewriter(target, versions)
    try:
        for _ in range(300):
            state, meta = load_checkpoint(target)
            values = {float(t.unique().item()) if t.unique().numel() == 1 else None for t in state.values()}
            assert values == {float(meta["v"])}, f"header of version {meta['v']}, tensors hold {values}"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_replacement_after_the_header_is_read_does_not_reach_the_reader(tmp_path, monkeypatch):
    """The deterministic form of the race above: the name points at a new file between reading
    the header and reading the tensors; the reader keeps the file it opened."""
    import cnncli.checkpoint as checkpoint

    target = tmp_path / "model.safetensors"
    versions = _two_versions()
    target.write_bytes(versions[0])
    read_header = checkpoint._read_valid_header

    def header_then_replace(path, f):
        header = read_header(path, f)
        atomic_write_bytes(target, versions[1])
        return header

    monkeypatch.setattr(checkpoint, "_read_valid_header", header_then_replace)
    state, meta = load_checkpoint(target)
    assert meta["v"] == 0 and all(bool((t == 0).all()) for t in state.values())
    assert target.read_bytes() == versions[1]


# ------------------------------------------------------------------------------ in-process failures
# (conftest's autouse isolation shows notes again after another test's --quiet)

def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_nan_loss_stops_with_one_clear_line_and_keeps_the_last_good_checkpoint(runner, tmp_path):
    # the learning rate is multiplied by 1e30 after the first epoch: the second one diverges
    recipe = tmp_path / "diverge.toml"
    recipe.write_text(f'model = "lenet5"\ndata = "{DATA}"\noptimizer = "sgd"\nlr = 0.01\nschedule = "step"\n'
                      'step_epochs = 1\nstep_gamma = 1e30\nepochs = 3\nbatch_size = 16\nthreads = 1\n')
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--recipe", str(recipe), "--out", str(out), "--quiet"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: the loss became nan at epoch 2"), result.stderr
    assert "last good checkpoint" in lines[0] and str(out) in lines[0] and "--lr" in lines[0]
    assert result.stdout == "" and "Traceback" not in result.stderr
    check_every_file_is_complete(out)
    for name in ("model.safetensors", "last.safetensors"):
        state, meta = load_checkpoint(out / name)
        assert meta["epoch"] == 1
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    _, _, doc = load_train_state(out / "train_state.safetensors")
    assert doc["train_state"]["epoch"] == 1 and doc["train_state"]["step"] == 0


def test_disk_full_while_saving_keeps_the_previous_checkpoint(runner, tmp_path, monkeypatch):
    """ENOSPC from the file system in the middle of the second epoch's checkpoint writes."""
    out = tmp_path / "run"
    real_fsync = os.fsync
    snapshot: dict[str, str] = {}

    def fsync(fd):
        if (out / "metrics.jsonl").exists():  # the first epoch is completely on disk
            if not snapshot:
                snapshot.update(hashes(out))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = runner.invoke(app, ["train", "lenet5", "--data", DATA, "--epochs", 3, "--out", str(out),
                                 "--threads", 1, "--quiet"])
    monkeypatch.setattr(os, "fsync", real_fsync)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, result.stderr
    assert len(lines) == 1 and "no space left on device" in lines[0] and "intact" in lines[0], result.stderr
    assert snapshot, "the disk never filled up"
    assert hashes(out) == snapshot, "a file written before the disk filled up changed"
    assert not list(out.glob(".*.tmp")), "the failed write left its temporary file"
    check_every_file_is_complete(out)
    assert load_checkpoint(out / "model.safetensors")[1]["epoch"] == 1
    # room again: the run resumes from that state and finishes
    done = runner.invoke(app, ["train", "--resume", str(out), "--threads", 1, "--quiet"])
    assert done.exit_code == 0, done.stderr
    assert epochs_done(out) == 3


@pytest.fixture
def tiny_disk(tmp_path, tmpfs):
    """A real 1 MiB file system (tmpfs), when this process may mount one (root)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    return tmpfs(folder, "size=1m")


def test_a_really_full_disk(runner, tiny_disk):
    # one epoch of lenet5 writes ~0.8 MB (three checkpoints, the curves); the second epoch's first
    # checkpoint does not fit next to them
    out = tiny_disk / "run"
    result = runner.invoke(app, ["train", "lenet5", "--data", DATA, "--epochs", 3, "--out", str(out),
                                 "--threads", 1, "--quiet"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, result.stderr
    assert len(lines) == 1 and "no space left on device" in lines[0], result.stderr
    assert not list(out.glob(".*.tmp"))
    check_every_file_is_complete(out)
    assert load_checkpoint(out / "model.safetensors")[1]["epoch"] >= 1


def test_a_failed_checkpoint_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"kind": "model", "model": {"name": "x"}, "epoch": 1})
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    from cnncli.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="no space left on device"):
        save_checkpoint(path, {"w": torch.zeros(3)}, {"kind": "model", "model": {"name": "x"}, "epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
