"""Tracking (results.csv, TensorBoard, MLflow) and `cnncli tune` on real runs and real stores."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = "synthetic:n=64,n_test=16,classes=2,size=28"
TRAIN = ["train", "lenet5", "--data", DATA, "--epochs", "2", "--threads", "1", "--quiet"]
TUNE = ["tune", "lenet5", "--data", "fashion-mnist-mini", "--max-samples", "200", "--epochs", "2",
        "--threads", "1", "--quiet"]


def test_results_csv_has_one_row_per_epoch_in_ultralytics_columns(run_cli, tmp_path):
    result = run_cli(*TRAIN, "--out", tmp_path / "r")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "r" / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["metrics/accuracy_top1"]) >= 0 and float(rows[0]["lr/pg0"]) > 0
    assert float(rows[1]["time"]) >= float(rows[0]["time"])


def test_tensorboard_event_files_read_back(run_cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_cli(*TRAIN, "--out", tmp_path / "r", "--log", "csv,tensorboard")
    assert result.exit_code == 0, result.stderr
    acc = EventAccumulator(str(tmp_path / "r"))
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "val/top1", "lr", "step/loss"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("val/top1")] == [1, 2]
    assert "curves" in tags["images"]


def test_mlflow_runs_read_back_from_sqlite(run_cli, tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    result = run_cli(*TRAIN, "--out", tmp_path / "r", "--log", "mlflow", "--mlflow-uri", f"sqlite:///{db}",
                     "--experiment", "exp1")
    assert result.exit_code == 0, result.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("exp1").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.tags["model"] == "lenet5"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")] == [1, 2]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.safetensors", "config.toml", "eval.json"} <= names


def test_an_unreachable_tracking_server_does_not_fail_training(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    result = run_cli(*TRAIN, "--out", tmp_path / "r", "--log", "mlflow", "--mlflow-uri", "http://127.0.0.1:9")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("warning: mlflow") == 1
    assert (tmp_path / "r" / "model.safetensors").exists()


def test_a_missing_logger_name_is_a_usage_error(run_cli, tmp_path):
    result = run_cli(*TRAIN, "--out", tmp_path / "r", "--log", "csv,wandb")
    assert result.exit_code == 2 and "unknown logger 'wandb'" in result.stderr


def test_two_tune_processes_share_one_sqlite_study(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    # a trial of 1 epoch on 100 images (TUNE: 2 on 200): what is shared is the study, not the training
    assert TUNE[4:8] == ["--max-samples", "200", "--epochs", "2"]
    tune = [*TUNE[:4], "--max-samples", "100", "--epochs", "1", *TUNE[8:]]
    args = [sys.executable, "-m", "cnncli", *tune, "--trials", "4", "--out", str(tmp_path / "s"),
            "--study", "shared", "--log", "none", "--pruner", "none"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    import optuna

    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert (tmp_path / "s" / "best.toml").exists()


def test_pruning_stops_a_clearly_worse_trial(run_cli, tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'p.db'}"
    study = optuna.create_study(study_name="p", storage=url, direction="maximize")
    for lr in (0.01, 0.01, 1e-7):
        study.enqueue_trial({"lr": lr})
    space = tmp_path / "space.toml"
    space.write_text("lr = {low = 1e-8, high = 0.1, log = true}\n")
    result = run_cli(*TUNE, "--epochs", "3", "--trials", "3", "--space", space, "--storage", url, "--study", "p",
                     "--out", tmp_path / "s", "--log", "none", "--json")
    assert result.exit_code == 0, result.stderr
    states = [t.state.name for t in optuna.load_study(study_name="p", storage=url).get_trials()]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]


@pytest.mark.parametrize("space,message", [
    ("lrr = {low = 1e-4, high = 1e-1}\n", "did you mean 'lr'"),
    ("lr = {low = 1e-1, high = 1e-4}\n", "inverted"),
    ("lr = {low = 1e-4, hihg = 1e-1}\n", "unknown 'hihg'"),
])
def test_a_bad_space_is_one_line_exit_2(run_cli, tmp_path, space, message):
    path = tmp_path / "space.toml"
    path.write_text(space)
    result = run_cli(*TUNE, "--trials", "1", "--space", path, "--out", tmp_path / "s")
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "s" / "study.db").exists()


def test_an_unknown_metric_is_exit_2(run_cli, tmp_path):
    result = run_cli(*TUNE, "--trials", "1", "--metric", "val_top9", "--out", tmp_path / "s")
    assert result.exit_code == 2 and "unknown metric" in result.stderr


def test_tune_on_a_photo_folder_passes_img_size_and_cache_to_every_trial(run_cli, tmp_path):
    """A practitioner tunes on their own photos at a small size, each image decoded once for all trials."""
    import tomllib

    from test_stream import make_photos

    make_photos(tmp_path / "photos", {"": 6})
    space = tmp_path / "space.toml"
    space.write_text("lr = {low = 1e-3, high = 1e-2, log = true}\n")
    result = run_cli("tune", "timm/resnet18", "--data", tmp_path / "photos", "--img-size", "40", "--cache", "disk",
                     "--epochs", "1", "--trials", "2", "--space", space, "--threads", "1", "--quiet",
                     "--log", "none", "--out", tmp_path / "s", "--json")
    assert result.exit_code == 0, result.stderr
    for n in (0, 1):
        config = tomllib.loads((tmp_path / "s" / f"trial-{n}" / "config.toml").read_text())
        assert config["img_size"] == 40 and config["cache"] == "disk", config
    best = tomllib.loads((tmp_path / "s" / "best.toml").read_text())
    assert best["img_size"] == 40
