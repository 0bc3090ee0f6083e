"""`--seed N --deterministic` gives bit-identical weights, run twice on the
same CPU (once here, once in a fresh process), and the run records the seed and the versions.

A different seed must give different weights, or the comparison would prove nothing.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import cnncli
from cnncli import output
from cnncli.checkpoint import load_checkpoint, read_meta
from cnncli.cli import app
from cnncli.engine.state import load_train_state

DATA = "synthetic:n=160,n_test=32,classes=4,size=28"


def args(out: Path, seed: int) -> list[str]:
    # augmentation and dropout-free lenet5: every random draw (init, shuffle, shift, flip, erase)
    # comes from the seed
    return ["train", "lenet5", "--data", DATA, "--epochs", "2", "--batch-size", "16", "--seed", str(seed),
            "--deterministic", "--threads", "1", "--augment", "shift,flip,erase", "--quiet", "--out", str(out)]


@pytest.fixture(scope="module")
def runs(runner, tmp_path_factory):
    """The same command twice (here and in a fresh process) and once with another seed."""
    root = tmp_path_factory.mktemp("determinism")
    fresh = subprocess.Popen([sys.executable, "-m", "cnncli", *args(root / "fresh", 5)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "CNNCLI_DEBUG": ""})
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        for name, seed in (("here", 5), ("other_seed", 6)):
            result = runner.invoke(app, args(root / name, seed))
            assert result.exit_code == 0, result.stderr
            # --deterministic is torch-global: the trainer gives the caller's setting back
            assert torch.are_deterministic_algorithms_enabled() == was_deterministic
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        output.set_quiet(False)
    _, err = fresh.communicate(timeout=600)
    assert fresh.returncode == 0, err.decode()
    return root


def tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.name == "train_state.safetensors":
        model, optim, _ = load_train_state(path)
        return {**{f"model.{k}": v for k, v in model.items()},
                **{f"optim.{i}.{k}": v for i, s in optim["state"].items() for k, v in s.items() if torch.is_tensor(v)}}
    return load_checkpoint(path)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model.safetensors", "last.safetensors", "train_state.safetensors"])
def test_same_seed_twice_gives_bit_identical_weights(runs, name):
    a, b = tensors(runs / "here" / name), tensors(runs / "fresh" / name)
    assert a.keys() == b.keys() and len(a) > 0
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[0]}"


@pytest.mark.slow
def test_another_seed_gives_other_weights(runs):
    a, c = tensors(runs / "here" / "last.safetensors"), tensors(runs / "other_seed" / "last.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_the_run_records_its_seed_and_versions(runs):
    import torchvision

    for name in ("model.safetensors", "last.safetensors"):
        meta = read_meta(runs / "here" / name)
        assert meta["seed"] == 5
        assert meta["recipe"]["seed"] == 5 and meta["recipe"]["deterministic"] is True
        assert meta["versions"]["cnncli"] == cnncli.__version__
        assert meta["versions"]["torch"] == torch.__version__
        assert meta["versions"]["torchvision"] == torchvision.__version__
        assert meta["versions"]["python"] == platform.python_version()
    config = tomllib.loads((runs / "here" / "config.toml").read_text())
    assert config["seed"] == 5 and config["deterministic"] is True
    assert config["augment"] == ["shift", "flip", "erase"]
    # config.toml is a recipe that reproduces the run
    assert read_meta(runs / "other_seed" / "model.safetensors")["seed"] == 6
