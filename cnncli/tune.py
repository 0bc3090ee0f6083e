"""`cnncli tune`: a hyperparameter search on Optuna (TPE), each trial a real cnncli run.

Each trial trains into `<out>/trial-<n>/` (default out: runs/<study>) and reports its per-epoch
metric to the pruner, which may stop it early. The study lives in Optuna's storage (default
`sqlite:///<out>/study.db`; any SQLAlchemy URL, a PostgreSQL server for example): several
`cnncli tune` processes or machines on one storage and study name work on one study; running
the same command again continues it. `--trials N` is the study's total: a process stops when
the study holds N trials. At the end: `<out>/best.toml` (the best trial's resolved recipe, for
`train --recipe`), the table of trials, and plots (optimization history, parameter importances).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnncli import output, outputs
from cnncli.errors import CnnError, InputError, RuntimeFailure
from cnncli.track.base import Logger

METRICS = {"val_top1": "maximize", "val_loss": "minimize", "train_top1": "maximize", "train_loss": "minimize"}
PRUNERS = ("median", "hyperband", "none")
NOT_IN_BEST = ("out", "name")  # best.toml makes a new run, wherever train puts it


@dataclass
class TuneRequest:
    model: str
    data: str
    trials: int
    options: dict[str, Any] = field(default_factory=dict)  # train options for every trial
    recipe: str | None = None
    space: str | None = None
    storage: str | None = None
    study: str | None = None
    pruner: str = "median"
    timeout: float | None = None
    metric: str = "val_top1"
    out: str | None = None
    quiet: bool = False


def study_name(model: str, data: str) -> str:
    stem = Path(model).stem if model.endswith(".toml") else model.replace("/", "_")
    from cnncli.data.paths import dataset_label

    raw = f"tune-{stem}-{dataset_label(data)}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise RuntimeFailure("cnncli tune needs the 'optuna' package: pip install 'cnncli[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(url: str):
    optuna = _import_optuna()
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except ImportError as e:  # a dialect whose driver is missing (psycopg2, ...)
        raise InputError(f"--storage {url}: {e}") from None
    except Exception as e:  # SQLAlchemy: a malformed URL, a server that cannot be reached
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--storage {url}: cannot open the study database ({first[:200]})") from None


@contextlib.contextmanager
def _creating(url: str):
    """Processes that open one SQLite study file at once take turns: Optuna creates its tables
    (and alembic's version row) on first open, and two first opens race ('UNIQUE constraint
    failed: alembic_version'). A lock file beside the database orders them; servers need none."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix or ":memory:" in url:
        yield
        return
    import fcntl

    lock_path = Path(url[len(prefix):] + ".lock")
    try:
        handle = open(lock_path, "a")  # noqa: SIM115 (held to the end of the block)
    except OSError:  # a read-only folder: no lock, the open below says what is wrong
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class PruningCallback(Logger):
    """Reports the trial's metric after each epoch; stops the run when the pruner says so."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        import optuna

        value = record.get(self.metric)
        if value is None:
            raise InputError(f"--metric {self.metric}: the run has no such figure (no validation split? "
                             "set --val-fraction above 0)")
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: {self.metric} {value:.4f}")


@contextlib.contextmanager
def _ask_lock(url: str):
    """For a SQLite study: one process at a time counts the trials and asks for the next, so that
    processes sharing it stop at exactly --trials. (A server's storage may overshoot by a trial.)"""
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(url.removeprefix("sqlite:///") + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _best_value(history: list[dict], metric: str) -> float:
    values = [r[metric] for r in history if r.get(metric) is not None]
    if not values:
        raise InputError(f"--metric {metric}: the run has no such figure (no validation split? "
                         "set --val-fraction above 0)")
    return max(values) if METRICS[metric] == "maximize" else min(values)


def tune(req: TuneRequest) -> dict[str, Any]:
    """Run (or continue) the study; returns its document (trials, best)."""
    from cnncli.engine.config import build_config
    from cnncli.tune_space import read_space, suggest

    if req.metric not in METRICS:
        raise InputError(f"--metric: unknown metric '{req.metric}'; choose one of {', '.join(METRICS)}")
    if req.pruner not in PRUNERS:
        raise InputError(f"--pruner: unknown pruner '{req.pruner}'; choose one of {', '.join(PRUNERS)}")
    if req.trials <= 0:
        raise InputError(f"--trials must be positive, got {req.trials}")
    dims = read_space(req.space)
    name = req.study or study_name(req.model, req.data)
    out = Path(req.out or Path("runs") / name)
    base = {**req.options, "model": req.model, "data": req.data}
    base.setdefault("experiment", name)
    first = build_config(req.recipe, base)  # the options are checked before any study is touched
    if req.metric.startswith("val") and first.val_fraction <= 0:
        raise InputError(f"--metric {req.metric} needs a validation split: --val-fraction above 0")
    optuna = _import_optuna()
    outputs.claim_study_folder(out)
    url = req.storage or f"sqlite:///{out.resolve() / 'study.db'}"
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, first.epochs)),
              "none": optuna.pruners.NopPruner}[req.pruner]()
    with _creating(url):
        storage = open_storage(url)
        try:
            study = optuna.create_study(storage=storage, study_name=name, direction=METRICS[req.metric],
                                        sampler=optuna.samplers.TPESampler(), pruner=pruner, load_if_exists=True)
        except Exception as e:
            raise InputError(f"--storage {url}: cannot open study '{name}' ({str(e).splitlines()[0][:200]})") from None
    if study.direction.name.lower() != METRICS[req.metric]:
        raise InputError(f"study '{name}' {study.direction.name.lower()}s its metric; --metric {req.metric} "
                         f"would {METRICS[req.metric]}: choose another --study")
    recorded = study.user_attrs.get("metric")
    if recorded and recorded != req.metric:
        raise InputError(f"study '{name}' tunes {recorded}, not {req.metric}: choose another --study")
    study.set_user_attr("metric", req.metric)
    start = time.monotonic()
    while req.timeout is None or time.monotonic() - start < req.timeout:
        with _ask_lock(url):
            waiting = optuna.trial.TrialState.WAITING  # enqueued trials are asked for, not extra
            if sum(t.state != waiting for t in study.get_trials(deepcopy=False)) >= req.trials:
                break
            trial = study.ask()
        if trial.number >= req.trials:  # another process on a server's storage got there first
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            break
        _run_trial(study, trial, req, base, dims, out, suggest, build_config)
    return finish(study, out, req.metric)


def _run_trial(study, trial, req, base, dims, out, suggest, build_config) -> None:
    import optuna

    from cnncli.engine.console import TrainingInterrupted
    from cnncli.engine.trainer import Trainer

    run_dir = out / f"trial-{trial.number}"
    trial.set_user_attr("run_dir", str(run_dir))
    fail = optuna.trial.TrialState.FAIL
    try:
        params = suggest(trial, dims)
        cfg = build_config(req.recipe, {**base, **params, "out": str(run_dir)})
        result = Trainer(cfg, quiet=True, callbacks=[PruningCallback(trial, req.metric)],
                         run_name=run_dir.name).fit()
        value = _best_value(result.history, req.metric)
    except optuna.TrialPruned as e:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        output.note(f"trial {trial.number}: pruned at {e}")
        return
    except (KeyboardInterrupt, TrainingInterrupted):
        study.tell(trial, state=fail)  # the study stays consistent; the next run continues it
        raise
    except InputError:  # a bad option would fail every trial the same way
        study.tell(trial, state=fail)
        raise
    except (CnnError, Exception) as e:  # a crashed trial is marked failed; the study goes on
        study.tell(trial, state=fail)
        output.warn(f"trial {trial.number} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return
    study.tell(trial, value)
    output.note(f"trial {trial.number}: {req.metric} {value:.4f} ({_params_text(trial.params)})")


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def finish(study, out: Path, metric: str) -> dict[str, Any]:
    """best.toml, the plots, and the study's document."""
    import optuna

    from cnncli.engine.config import read_recipe, to_toml

    trials = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        trials.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                       "epochs": len(t.intermediate_values), "seconds": seconds,
                       "run_dir": t.user_attrs.get("run_dir")})
    doc = {"study": study.study_name, "metric": metric, "direction": study.direction.name.lower(),
           "trials": trials, "best": None, "best_recipe": None, "plots": []}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        doc["best"] = {"number": best.number, "value": best.value, "params": best.params,
                       "run_dir": best.user_attrs.get("run_dir")}
        config = Path(best.user_attrs.get("run_dir", "")) / "config.toml"
        if config.is_file():
            recipe = {k: v for k, v in read_recipe(config).items() if k not in NOT_IN_BEST}
            text = f"# the best trial ({best.number}) of study {study.study_name}: {metric} {best.value:.4f}\n"
            outputs.write_file(out / "best.toml", (text + to_toml(recipe)).encode("utf-8"), outputs.TUNE_BEST)
            doc["best_recipe"] = str(out / "best.toml")
    doc["plots"] = _plots(study, out, len(complete))
    return doc


def _plots(study, out: Path, complete: int) -> list[str]:
    import io

    if not complete:
        return []
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from optuna.visualization import matplotlib as vis

    written = []
    wanted = [("history.png", vis.plot_optimization_history)]
    if complete >= 2:
        wanted.append(("importances.png", vis.plot_param_importances))
    for name, plot in wanted:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
                fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
                import matplotlib.pyplot as plt

                plt.close(fig)
            outputs.write_file(out / name, buf.getvalue(), outputs.PNG)
            written.append(str(out / name))
        except (ValueError, RuntimeError, ImportError, ZeroDivisionError) as e:  # e.g. no parameter varied
            output.note(f"no {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return written
