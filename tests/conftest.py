"""Fixtures shared by the whole suite.

- Every test is isolated from the machine's datasets (autouse): `$CNNCLI_DATA` unset, an empty
  cache folder under the test's tmp_path, no `/usr/share/datasets`, notes on stderr shown.
- `run_cli`: the real command line in-process (typer's CliRunner), arguments passed through str().
- `tmpfs`: mount a real small file system (full disk, read-only folder), root only.
- `tiny_run`: ONE small real training run per session (lenet5, 1 epoch on 64 generated images
  of 2 classes, TINY_RUN_DATA). Tests read it and must not change it; a test that changes a
  run takes `tiny_run_copy`, its own copy.
- `stop_and_resume`: the exact-resume scaffolding (a reference run, a real `python -m cnncli`
  process stopped by a signal after its first epoch, then `--resume`) that the resume tests share.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# 2 classes of generated 28x28 images: test_errors_cli relies on the run's 2 classes and data
TINY_RUN_DATA = "synthetic:n=64,n_test=16,classes=2,size=28"
TINY_RUN_ARGS = ["train", "lenet5", "--data", TINY_RUN_DATA, "--epochs", "1", "--threads", "1", "--quiet"]


@pytest.fixture(autouse=True)
def isolated_data(tmp_path, monkeypatch):
    """No test sees the machine's datasets: no $CNNCLI_DATA, an empty cache, no system folders."""
    from cnncli import output
    from cnncli.data import registry

    monkeypatch.setattr(registry, "SYSTEM_DIRS", [tmp_path / "system"])
    monkeypatch.setattr(registry, "_warned_fallback", False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNCLI_DATA", raising=False)
    monkeypatch.delenv("CNNCLI_DEBUG", raising=False)
    output.set_quiet(False)  # another test's --quiet must not hide a note here
    yield
    output.set_quiet(False)


@pytest.fixture(scope="session")
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture(scope="session")
def run_cli(runner):
    """`run_cli("train", "lenet5", "--out", path)`: the CLI's Result (exit_code, stdout, stderr)."""
    from cnncli.cli import app

    def invoke(*args, input=None):
        return runner.invoke(app, [str(a) for a in args], input=input)

    return invoke


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, run_cli) -> Path:
    """A finished run directory (model.safetensors, train_state, metrics, curves.png, eval.json).
    Shared read-only by every test that needs "a run"."""
    from cnncli import output

    out = tmp_path_factory.mktemp("tiny_run") / "lenet5"
    result = run_cli(*TINY_RUN_ARGS, "--out", out)
    output.set_quiet(False)
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    """A copy of `tiny_run` that the test may change."""
    return Path(shutil.copytree(tiny_run, tmp_path / tiny_run.name))


@dataclass
class Stopped:
    """What `stop_and_resume` leaves: the reference run, the stopped-then-resumed run, and how the
    stopped process ended (its exit code and stderr)."""

    straight: Path
    out: Path
    returncode: int
    stderr: str


@pytest.fixture
def stop_and_resume(run_cli, tmp_path):
    """`stop_and_resume(train_args, signum)`: `train_args` (a `train` command line without --out)
    1. runs uninterrupted in this process (tmp_path/"straight"): the reference;
    2. runs in a real `python -m cnncli` process (tmp_path/"interrupted") that gets `signum` as
       soon as its first epoch is on disk (metrics.jsonl written: it then plots, and stops after
       a step of epoch 2 - a mid-epoch state);
    3. that folder is `train --resume`d in this process, to the end.
    The test compares straight and out (bit for bit) and checks the stopped process's exit."""
    from cnncli import output

    def go(train_args: list, signum: int = signal.SIGTERM) -> Stopped:
        import torch

        was_deterministic = torch.are_deterministic_algorithms_enabled()
        # as in the fresh process: an earlier in-process --deterministic run leaves it on
        torch.use_deterministic_algorithms(False)
        try:
            return stop_and_resume_runs([str(a) for a in train_args], signum)
        finally:
            torch.use_deterministic_algorithms(was_deterministic)

    def stop_and_resume_runs(args: list[str], signum: int) -> Stopped:
        straight, out = tmp_path / "straight", tmp_path / "interrupted"
        result = run_cli("train", *args, "--out", straight)
        output.set_quiet(False)
        assert result.exit_code == 0, result.output
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "cnncli", "train", *args, "--out", str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            metrics, deadline = out / "metrics.jsonl", time.monotonic() + 600
            while not (metrics.exists() and metrics.read_text().strip()) and proc.poll() is None:
                assert time.monotonic() < deadline, "no epoch finished in 600 s"
                time.sleep(0.02)
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        resumed = run_cli("train", "--resume", out, "--threads", "1", "--quiet")
        output.set_quiet(False)
        assert resumed.exit_code == 0, resumed.output
        return Stopped(straight, out, proc.returncode, err.decode())

    return go


@pytest.fixture
def tmpfs():
    """`tmpfs(folder, "size=1m")`: a real tmpfs mounted on folder for this test (unmounted after
    it). It needs root; where it cannot be mounted, the test is skipped."""
    mounted = []

    def mount(folder: Path, options: str) -> Path:
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                               capture_output=True, check=False).returncode != 0:
            pytest.skip(f"cannot mount a tmpfs ({options}) here")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", str(folder)], check=False)
