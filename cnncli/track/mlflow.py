"""MLflow: one MLflow run per cnncli run, through MlflowClient (no global active run, so that
tuning trials in one process never mix).

Tracking URI: --mlflow-uri, else $MLFLOW_TRACKING_URI, else a SQLite database beside the run
folder (`runs/mlflow.db`, browsable with `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`;
its artifacts under `runs/mlartifacts/`). Params: the resolved recipe; metrics per epoch;
artifacts: model.safetensors, config.toml, eval.json, pictures; tags: model, dataset, versions,
device. A tracking store that cannot be reached is one warning line and the run goes on: the
run folder stays the record.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnncli import output
from cnncli.track.base import Logger

# a tracking server that is down must not hold a run for MLflow's default minutes of retries
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
EPOCH_METRICS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "images_per_second")
MAX_PARAM_LENGTH = 6000  # what MLflow stores in a param value


def tracking_uri(flag: str | None, run_dir: Path) -> str:
    if flag:
        return flag
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(run_dir).parent / 'mlflow.db').resolve()}"


def _artifact_root(uri: str) -> str | None:
    """For a SQLite store, artifacts beside the database (MLflow's default is ./mlruns of the cwd)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


class MlflowLogger(Logger):
    def __init__(self):
        self.client = self.run_id = None
        self.uri = ""

    def _guard(self, what: str, fn, *args, **kwargs):
        """Call MLflow; on any failure warn once and stop logging (the run goes on)."""
        if self.client is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MLflow raises many kinds (REST, SQLAlchemy, OS); none may end a run
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            output.warn(f"mlflow: cannot {what} at {self.uri} ({first[:200]}); logging to MLflow stops, "
                        "the run goes on and its folder is the record")
            self.client = None
            return None

    def on_run_start(self, run: dict[str, Any]) -> None:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        recipe = run.get("recipe") or {}
        self.uri = tracking_uri(recipe.get("mlflow_uri"), run["run_dir"])
        if self.uri.startswith("sqlite:///"):
            from cnncli.errors import InputError
            from cnncli.outputs import SQLITE, check_file

            db = Path(self.uri.removeprefix("sqlite:///"))
            db.parent.mkdir(parents=True, exist_ok=True)
            try:
                check_file(db, SQLITE, "--mlflow-uri", force=False)
            except InputError as e:
                output.warn(f"mlflow: {e}; logging to MLflow stops, the run goes on")
                return
        self.client = MlflowClient(tracking_uri=self.uri)
        name = recipe.get("experiment") or run.get("experiment") or Path(run["run_dir"]).name
        experiment = self._guard("reach the tracking store", self._experiment, name)
        if experiment is None:
            return
        tags = {"model": str(run.get("model")), "dataset": str(run.get("dataset")),
                "device": str(run.get("device")), "run_dir": str(Path(run["run_dir"]).resolve()),
                **{f"version.{k}": str(v) for k, v in (run.get("versions") or {}).items()}}
        created = self._guard("create a run", self.client.create_run, experiment, run_name=run.get("name"),
                              tags=tags)
        if created is None:
            return
        self.run_id = created.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in recipe.items() if v is not None]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self._guard("log the recipe", self.client.log_batch, self.run_id, params=params[i:i + 100])
        self._guard("tag the run", self.client.log_batch, self.run_id,
                    tags=[RunTag("mlflow.note.content", f"cnncli run {run['run_dir']}")])

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=_artifact_root(self.uri))

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(record[k]), now, epoch) for k in EPOCH_METRICS
                   if isinstance(record.get(k), (int, float))]
        self._guard("log metrics", self.client.log_batch, self.run_id, metrics=metrics)

    def on_run_end(self, doc: dict[str, Any], files: dict[str, Path]) -> None:
        if self.run_id is None:
            return
        import time

        from mlflow.entities import Metric

        now, epoch = int(time.time() * 1000), int(doc.get("epochs") or 0)
        final = [Metric(k, float(v), now, epoch) for k, v in doc.items()
                 if k in ("best_val_top1", "test_top1", "test_top5", "test_loss", "seconds") and isinstance(v, (int, float))]
        self._guard("log the final metrics", self.client.log_batch, self.run_id, metrics=final)
        for path in files.values():
            self._guard(f"upload {path.name}", self.client.log_artifact, self.run_id, str(path))
        self._guard("end the run", self.client.set_terminated, self.run_id, "FINISHED")
        self.run_id = None

    def close(self, failed: bool = False) -> None:
        if self.run_id is not None:  # ended without on_run_end: a pruned trial, Ctrl-C, a crash
            self._guard("end the run", self.client.set_terminated, self.run_id, "KILLED" if failed else "FINISHED")
            self.run_id = None
