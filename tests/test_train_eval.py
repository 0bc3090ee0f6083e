"""`cnncli train` and `cnncli eval` end to end on small generated data, through the real CLI."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from cnncli.checkpoint import load_model, read_meta

DATA = "synthetic:n=800,n_test=200,classes=4,size=28"


@pytest.fixture(scope="module")
def trained_run(run_cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lenet"
    result = run_cli("train", "lenet5", "--data", DATA, "--epochs", 3, "--out", out, "--seed", 3,
                     "--threads", 1, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    return out, json.loads(result.stdout)


def test_train_json_contract_and_run_directory(trained_run):
    out, doc = trained_run
    assert set(doc) >= {"run_dir", "checkpoint", "epochs", "best_val_top1", "test_top1", "test_top5",
                        "seconds", "images_per_second"}
    assert doc["epochs"] == 3 and doc["images_per_second"] > 0
    assert doc["test_top1"] > 0.5  # 4 classes: chance is 0.25
    for name in ("model.safetensors", "last.safetensors", "train_state.safetensors", "config.toml",
                 "metrics.jsonl", "curves.png"):
        assert (out / name).exists(), name
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert not list(out.glob("*.tmp")), "temporary files left behind"


def test_checkpoint_describes_itself(trained_run):
    out, doc = trained_run
    meta = read_meta(out / "model.safetensors")
    assert meta["model"]["name"] == "lenet5"
    assert meta["num_classes"] == 4 and len(meta["class_names"]) == 4
    assert meta["input_size"] == [1, 32, 32]
    assert len(meta["mean"]) == 1 and 0 < meta["std"][0] < 1
    assert meta["dataset"] == DATA
    assert meta["metrics"]["test_top1"] == pytest.approx(doc["test_top1"])
    assert meta["recipe"]["epochs"] == 3 and meta["seed"] == 3
    assert {"torch", "cnncli", "python"} <= set(meta["versions"])
    # the network comes back from the file alone and predicts the same as the evaluated one
    model, _ = load_model(out)
    assert sum(p.numel() for p in model.parameters()) == 61_706 - 84 * 10 - 10 + 84 * 4 + 4


def test_eval_rebuilds_from_the_checkpoint_and_matches_train(run_cli, trained_run):
    out, doc = trained_run
    result = run_cli("eval", out, "--json")
    assert result.exit_code == 0, result.stderr
    ev = json.loads(result.stdout)
    assert ev["top1"] == pytest.approx(doc["test_top1"])
    assert ev["n"] == 200 and len(ev["confusion"]) == 4 and sum(map(sum, ev["confusion"])) == 200
    assert [p["class"] for p in ev["per_class"]] == read_meta(out / "model.safetensors")["class_names"]
    assert set(ev["per_class"][0]) >= {"class", "precision", "recall", "f1"}


def test_eval_table_and_plot(run_cli, trained_run, tmp_path):
    out, _ = trained_run
    plot = tmp_path / "confusion.png"
    result = run_cli("eval", out, "--plot", plot)
    assert result.exit_code == 0, result.stderr
    assert "top-1" in result.stdout and "precision" in result.stdout
    assert plot.stat().st_size > 1000


def test_eval_refuses_a_dataset_with_other_classes(run_cli, trained_run):
    out, _ = trained_run
    result = run_cli("eval", out, "--data", "synthetic:n=100,classes=6")
    assert result.exit_code == 2
    assert "classes" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_recipe_and_flag_override(run_cli, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "lenet5"\ndata = "{DATA}"\nepochs = 5\nbatch_size = 64\n')
    result = run_cli("train", "--recipe", recipe, "--epochs", 1, "--out", tmp_path / "run", "--json", "--quiet",
                     "--threads", 1)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["epochs"] == 1
    config = (tmp_path / "run" / "config.toml").read_text()
    assert "epochs = 1" in config and "batch_size = 64" in config


def test_bad_recipe_key_is_one_line_exit_2(run_cli, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "lenet5"\nlearning_rate = 0.1\n')
    result = run_cli("train", "--recipe", recipe)
    assert result.exit_code == 2
    assert "learning_rate" in result.stderr and str(recipe) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def scripted_val(monkeypatch):
    """Validation top-1 of 0.5, 0.9, 0.6 for epochs 1-3 (the run's real figures otherwise): the
    best epoch is the second, not the last."""
    import dataclasses

    from cnncli.engine.trainer import Trainer

    real, figures = Trainer._validate, iter([0.5, 0.9, 0.6])

    def validate(self, model=None):
        result = real(self, model)
        return result if result is None else dataclasses.replace(result, top1=next(figures))

    monkeypatch.setattr(Trainer, "_validate", validate)


@pytest.mark.parametrize("keep", ["best", "last"])
def test_keep_best_is_the_best_validation_epoch_and_keep_last_the_final_one(run_cli, tmp_path, scripted_val, keep):
    out = tmp_path / keep
    args = ["--keep", "last"] if keep == "last" else []  # best: the default
    result = run_cli("train", "lenet5", "--data", DATA, "--epochs", 3, "--out", out, "--seed", 3,
                     "--threads", 1, "--json", "--quiet", *args)
    assert result.exit_code == 0, result.stderr
    doc, meta = json.loads(result.stdout), read_meta(out / "model.safetensors")
    kept, final = _weights(out / "model.safetensors"), _weights(out / "last.safetensors")
    same = all(torch.equal(kept[k], final[k]) for k in kept)  # no --ema: last.safetensors is epoch 3
    assert (meta["epoch"], meta["metrics"]["val_top1"], same) == ((2, 0.9, False) if keep == "best" else (3, 0.6, True))
    assert meta["recipe"]["keep"] == keep and doc["best_val_top1"] == 0.9  # the best figure either way
    # the run's test figure is the kept weights', as `cnncli eval` scores them
    evaluated = run_cli("eval", out, "--json", "--threads", 1)
    assert json.loads(evaluated.stdout)["top1"] == pytest.approx(doc["test_top1"])


@pytest.mark.parametrize("args", [["--keep", "worst"], ["--recipe", "r.toml"]])
def test_a_bad_keep_is_one_line_exit_2(run_cli, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.toml").write_text(f'model = "lenet5"\ndata = "{DATA}"\nkeep = "first"\n')
    result = run_cli("train", *(["lenet5"] if args[0] == "--keep" else []), *args, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "keep" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


# fewer images than DATA: the signal lands while epoch 1 is plotted or early in epoch 2 either way
RESUMED_ARGS = ["lenet5", "--data", "synthetic:n=320,n_test=32,classes=4,size=28", "--epochs", "3", "--seed", "5",
                "--threads", "1", "--quiet", "--augment", "shift,flip", "--batch-size", "32"]


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_with_the_same_weights(stop_and_resume):
    # SIGINT mid-training: the current step finishes, a resumable state is written, exit 130
    run = stop_and_resume(RESUMED_ARGS, signal.SIGINT)
    if run.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert run.returncode == 130, run.stderr
    assert "--resume" in run.stderr
    a, b = _weights(run.straight / "last.safetensors"), _weights(run.out / "last.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((run.out / "metrics.jsonl").read_text().splitlines()) == 3
