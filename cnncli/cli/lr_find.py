"""`cnncli lr-find MODEL --data NAME`: the learning-rate range test, and its three suggestions."""

from __future__ import annotations

from typing import Annotated

import typer

from cnncli.cli.common import Optimizer
from cnncli.cli.options import (
    AccumStepsOpt,
    AmpOpt,
    AugmentOpt,
    BatchSizeOpt,
    ClipGradOpt,
    CutmixOpt,
    DataDirOpt,
    DataOpt,
    DeviceOpt,
    DownloadOpt,
    EndLrOpt,
    ImgSizeOpt,
    JsonOpt,
    LabelSmoothingOpt,
    LrPlotOpt,
    LrStepsOpt,
    MaxSamplesOpt,
    MixupOpt,
    MomentumOpt,
    NesterovOpt,
    OptimizerOpt,
    RecipeOpt,
    SeedOpt,
    SkipBadImagesOpt,
    StartLrOpt,
    StreamOpt,
    ThreadsOpt,
    ValFractionOpt,
    WeightDecayOpt,
    WeightsOpt,
    WorkersOpt,
    given_options,
)

ModelArg = Annotated[str | None, typer.Argument(
    help="Registry name (see 'cnncli models'), timm/<name>, or a TOML model file.", show_default=False)]

# what lr-find takes as options but does not pass to the training configuration
NOT_CONFIG = frozenset({"ctx", "recipe", "json_out", "start_lr", "end_lr", "steps", "plot"})


def lr_find(
    ctx: typer.Context,
    model: ModelArg = None,
    data: DataOpt = "fashion-mnist",
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    val_fraction: ValFractionOpt = 0.1,
    max_samples: MaxSamplesOpt = None,
    img_size: ImgSizeOpt = None,
    weights: WeightsOpt = None,
    batch_size: BatchSizeOpt = 128,
    optimizer: OptimizerOpt = Optimizer.adamw,
    momentum: MomentumOpt = 0.9,
    nesterov: NesterovOpt = True,
    weight_decay: WeightDecayOpt = None,
    label_smoothing: LabelSmoothingOpt = 0.0,
    clip_grad: ClipGradOpt = None,
    augment: AugmentOpt = None,
    mixup: MixupOpt = None,
    cutmix: CutmixOpt = None,
    accum_steps: AccumStepsOpt = 1,
    start_lr: StartLrOpt = 1e-7,
    end_lr: EndLrOpt = 10.0,
    steps: LrStepsOpt = 100,
    plot: LrPlotOpt = None,
    recipe: RecipeOpt = None,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    amp: AmpOpt = "off",
    stream: StreamOpt = None,
    workers: WorkersOpt = None,
    skip_bad_images: SkipBadImagesOpt = False,
) -> None:
    """Find a learning rate: train briefly at an exponentially growing rate and watch the loss.

    The sweep runs --steps optimizer steps from --start-lr to --end-lr on the training data (with
    the options train would use), smooths the loss, stops once it diverges (4x its best), and
    suggests three rates as fastai does: valley (in the longest stretch of falling loss), steep
    (where it falls fastest) and minimum (a tenth of the rate at the lowest loss). The weights
    are thrown away; nothing is written but --plot. 'train --lr auto' runs the same test first.
    """
    from cnncli import output
    from cnncli.engine.config import build_config
    from cnncli.engine.lr_find import check_sweep, find_lr
    from cnncli.engine.trainer import Trainer

    check_sweep(start_lr, end_lr, steps)
    given = given_options(ctx, exclude=NOT_CONFIG)
    cfg = build_config(str(recipe) if recipe else None, {**given, "epochs": 1, "out": None, "log": "none"})
    if plot is not None and plot.exists() and not plot.is_file():
        from cnncli.errors import InputError

        raise InputError(f"--plot {plot} exists and is not a file; give a .png file name")
    trainer = Trainer(cfg, quiet=True)
    result = find_lr(trainer, start_lr, end_lr, steps)
    doc = {"model": cfg.model, "dataset": cfg.data, "optimizer": cfg.optimizer,
           "batch_size": cfg.batch_size, "precision": trainer.precision.name, **result.to_dict()}
    if plot is not None:
        from cnncli.plots import plot_lr_find

        doc["plot"] = str(plot_lr_find(doc, plot, title=f"{cfg.model} on {cfg.data}: learning-rate range test"))
        output.note(f"loss against learning rate drawn to {plot}")
    if json_out:
        output.emit_json(doc)
        return
    rows = [[name, f"{s['lr']:.3g}", f"{s['loss']:.4f}"] for name, s in result.suggestions.items()]
    stopped = (f"stopped after {len(result.lrs)} steps: the loss diverged at lr {result.lrs[-1]:.3g}"
               if result.stopped == "diverged" else f"{len(result.lrs)} steps up to lr {result.lrs[-1]:.3g}")
    output.render_rows(["suggestion", "lr", "smoothed loss"], rows, justify=["left", "right", "right"],
                       title=f"learning-rate range test: {cfg.model} on {cfg.data}, {cfg.optimizer}, "
                       f"batch {cfg.batch_size}",
                       footer=[stopped + ("" if plot else "; --plot FILE.png draws the curve")])
