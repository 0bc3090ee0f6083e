"""`cnncli tune MODEL --data D --trials N`: a hyperparameter search on Optuna (cnncli.tune)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.options import (
    CacheOpt,
    DataDirOpt,
    DataOpt,
    DeviceOpt,
    EpochsOpt,
    ExperimentOpt,
    ImgSizeOpt,
    JsonOpt,
    LogOpt,
    MaxSamplesOpt,
    MlflowUriOpt,
    QuietOpt,
    RecipeOpt,
    RunForceOpt,
    SeedOpt,
    SkipBadImagesOpt,
    StreamOpt,
    ThreadsOpt,
    ValFractionOpt,
    WorkersOpt,
    given_options,
)


class Pruner(StrEnum):
    median = "median"
    hyperband = "hyperband"
    none = "none"


TUNE_ONLY = frozenset({"ctx", "model", "data", "trials", "space", "storage", "study", "pruner", "timeout",
                       "metric", "recipe", "out", "json_out", "quiet", "force"})


def tune(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Registry name, timm/<name>, or a TOML model file.",
                                         show_default=False)],
    data: DataOpt = "fashion-mnist",
    trials: Annotated[int, typer.Option("--trials", "-n", min=1,
                                        help="Trials in the study in total (a rerun continues to N).")] = 20,
    space: Annotated[Path | None, typer.Option("--space", help="TOML search space, e.g. "
                                               "lr = {low = 1e-4, high = 1e-1, log = true}.",
                                               show_default="lr, weight decay, batch size, "
                                               "label smoothing, augmentation")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage (SQLAlchemy URL); "
                                                "processes sharing one work on one study.",
                                                show_default="sqlite:///runs/<study>/study.db")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name.",
                                              show_default="tune-<model>-<data>")] = None,
    pruner: Annotated[Pruner, typer.Option("--pruner", help="Stops trials that fall behind.")] = Pruner.median,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0, help="Start no trial after S seconds.",
                                                  show_default="no limit")] = None,
    metric: Annotated[str, typer.Option("--metric", help="What to optimize: val_top1, val_loss, "
                                        "train_top1, train_loss.")] = "val_top1",
    out: Annotated[str | None, typer.Option("--out", "-o", help="Study folder (trials, best.toml, plots).",
                                            show_default="runs/<study>")] = None,
    recipe: RecipeOpt = None,
    data_dir: DataDirOpt = None,
    max_samples: MaxSamplesOpt = None,
    val_fraction: ValFractionOpt = 0.1,
    epochs: EpochsOpt = 10,
    seed: SeedOpt = 0,
    log: LogOpt = "csv",
    mlflow_uri: MlflowUriOpt = None,
    experiment: ExperimentOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    force: RunForceOpt = False,
    stream: StreamOpt = None,
    workers: WorkersOpt = None,
    skip_bad_images: SkipBadImagesOpt = False,
    img_size: ImgSizeOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Search hyperparameters with Optuna (TPE): each trial is a real run in runs/<study>/trial-<n>/.

    At the end the best trial's recipe is written as best.toml (use it with 'cnncli train
    --recipe'), with plots of the optimization history and the parameter importances, and the
    trials are printed as a table (or one JSON document with --json).
    """
    from cnncli import output
    from cnncli.outputs import forced
    from cnncli.tune import TuneRequest
    from cnncli.tune import tune as run_tune

    output.set_quiet(quiet)
    req = TuneRequest(model=model, data=data, trials=trials, options=given_options(ctx, TUNE_ONLY),
                      recipe=str(recipe) if recipe else None, space=str(space) if space else None,
                      storage=storage, study=study, pruner=pruner.value, timeout=timeout, metric=metric,
                      out=out, quiet=quiet)
    with forced(force):
        doc = run_tune(req)
    if json_out:
        output.emit_json(doc)
        return
    rows = [[t["number"], t["state"], "" if t["value"] is None else f"{t['value']:.4f}", t["epochs"],
             ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())]
            for t in doc["trials"]]
    best = doc["best"]
    footer = [f"best: trial {best['number']}, {doc['metric']} {best['value']:.4f} -> {doc['best_recipe']}"] \
        if best else ["no trial completed"]
    output.render_rows(["trial", "state", doc["metric"], "epochs", "params"], rows,
                       title=f"study {doc['study']}", footer=footer, justify=["right", "left", "right", "right", "left"])
