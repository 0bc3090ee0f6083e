"""The resume policy: `--resume RUN` continues what the run recorded. A flag or recipe key that
differs is refused in one line naming it (nothing in the run changed); a longer --epochs,
--device, --threads, --workers are applied and recorded; a hand-edited config.toml is refused;
the run records the lr, weight decay and device it resolved."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import pytest

from cnncli.checkpoint import read_meta


def _digests(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir()) if p.is_file()}


def _refused(result, *words):
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_the_run_records_the_resolved_lr_weight_decay_and_device(tiny_run):
    config = tomllib.loads((tiny_run / "config.toml").read_text())
    assert (config["lr"], config["weight_decay"]) == (0.001, 0.05)  # adamw's defaults, not left out
    meta = read_meta(tiny_run / "model.safetensors")
    assert meta["recipe"]["lr"] == 0.001 and meta["recipe"]["weight_decay"] == 0.05
    assert meta["device"] == "cpu" and meta["recipe"]["device"] == "auto"


@pytest.mark.parametrize("flags, named", [
    (["--lr", "0.01"], "--lr 0.01"),
    (["--data", "synthetic"], "--data synthetic"),
    (["--optimizer", "sgd"], "--optimizer sgd"),
    (["--batch-size", "32"], "--batch-size 32"),
    (["--augment", "flip"], "--augment flip"),
    (["--seed", "3", "--epochs", "2"], "--seed 3"),
])
def test_a_flag_that_differs_from_the_run_is_refused_naming_it(run_cli, tiny_run_copy, flags, named):
    before = _digests(tiny_run_copy)
    line = _refused(run_cli("train", "--resume", tiny_run_copy, *flags, "--quiet"), named, "differs from the run's")
    assert "--epochs" in line  # it says what may change
    assert _digests(tiny_run_copy) == before


def test_a_recipe_key_that_differs_is_refused_and_an_equal_value_is_not_a_change(run_cli, tiny_run_copy, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("label_smoothing = 0.2\n")
    _refused(run_cli("train", "--resume", tiny_run_copy, "--recipe", recipe), "label_smoothing = 0.2")
    # the values the run already has (the lr it resolved, its data) are not changes
    same = run_cli("train", "--resume", tiny_run_copy, "--lr", "0.001", "--data",
                   "synthetic:n=64,n_test=16,classes=2,size=28", "--quiet")
    assert same.exit_code == 0, same.stderr


def test_an_edited_config_toml_is_refused_in_one_line(run_cli, tiny_run_copy):
    config = tiny_run_copy / "config.toml"
    config.write_text(config.read_text().replace("batch_size = 128", "batch_size = 16"))
    before = _digests(tiny_run_copy)
    _refused(run_cli("train", "--resume", tiny_run_copy, "--quiet"), "config.toml was edited",
             "batch_size = 16", "recorded 128")
    assert _digests(tiny_run_copy) == before


def test_a_longer_epochs_reopens_a_finished_run_and_is_recorded(run_cli, tiny_run_copy):
    result = run_cli("train", "--resume", tiny_run_copy, "--epochs", "2", "--threads", "1", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["epochs"] == 2
    rows = [json.loads(line) for line in (tiny_run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert tomllib.loads((tiny_run_copy / "config.toml").read_text())["epochs"] == 2
    state = read_meta(tiny_run_copy / "train_state.safetensors")
    assert state["recipe"]["epochs"] == 2
    (entry,) = state["resumes"]
    assert entry["after_epoch"] == 1 and entry["device"] == "cpu" and entry["changed"] == {"epochs": [1, 2]}
    assert state["train_state"]["optimizer_kept"] is True  # a third sitting continues the same optimizer
    # the record now says 2 epochs: fewer is refused, and the run is consistent for the next resume
    _refused(run_cli("train", "--resume", tiny_run_copy, "--epochs", "1"), "--epochs 1 is shorter", "2 epochs")


_NET = """[model]
name = "tiny_file_net"
description = "{description}"
input = [1, 28, 28]
num_classes = 2

[[layers]]
name = "conv"
type = "conv"
filters = 4
kernel = 3

[[layers]]
name = "pool"
type = "global_avgpool"

[[layers]]
name = "drop"
type = "dropout"
rate = {rate}

[[layers]]
name = "fc"
type = "dense"
units = "num_classes"
"""


def test_a_model_file_edited_since_the_run_started_is_refused_on_resume(run_cli, tmp_path):
    net, run = tmp_path / "net.toml", tmp_path / "run"
    net.write_text(_NET.format(description="first", rate=0.3))
    made = run_cli("train", net, "--data", "synthetic:n=64,n_test=16,classes=2,size=28", "--epochs", "1", "--threads", "1", "--out", run, "--quiet")
    assert made.exit_code == 0, made.stderr
    # the same shapes, another dropout: the weights would load, the run would train another network
    net.write_text(_NET.format(description="first", rate=0.1))
    before = _digests(run)
    _refused(run_cli("train", "--resume", run, "--epochs", "2", "--quiet"),
             str(net), "changed since the run started", "layer 'drop' differs", "start a new run")
    assert _digests(run) == before
    # put back (a new description is no change): it resumes and trains on
    net.write_text(_NET.format(description="second", rate=0.3))
    resumed = run_cli("train", "--resume", run, "--epochs", "2", "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
