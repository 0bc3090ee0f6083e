"""`cnncli train MODEL --data NAME`: train a network from scratch into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.common import Optimizer, Schedule, report_run
from cnncli.cli.options import (
    AccumStepsOpt,
    AmpOpt,
    AugmentOpt,
    BatchSizeOpt,
    CacheOpt,
    ClipGradOpt,
    CompileOpt,
    CutmixOpt,
    DataDirOpt,
    DataOpt,
    DeterministicOpt,
    DeviceOpt,
    DownloadOpt,
    EmaOpt,
    EpochsOpt,
    ExperimentOpt,
    ImgSizeOpt,
    LabelSmoothingOpt,
    LogOpt,
    LrOpt,
    MaxSamplesOpt,
    MixupOffEpochOpt,
    MixupOpt,
    MlflowUriOpt,
    MomentumOpt,
    NesterovOpt,
    OptimizerOpt,
    PatienceOpt,
    QuietOpt,
    RecipeOpt,
    ResumeOpt,
    RunJsonOpt,
    RunNameOpt,
    RunOutOpt,
    ScheduleOpt,
    SeedOpt,
    SkipBadImagesOpt,
    StreamOpt,
    ThreadsOpt,
    ValFractionOpt,
    WarmupEpochsOpt,
    WeightDecayOpt,
    WeightsOpt,
    WorkersOpt,
    given_options,
)

ModelArg = Annotated[str | None, typer.Argument(
    help="Registry name (see 'cnncli models'), timm/<name>, or a TOML model file.",
    show_default=False)]


def resolve_recipe(recipe: Path | None, resume: Path | None) -> str | None:
    """A resumed run reuses its own config.toml unless another recipe is given."""
    if recipe is not None:
        return str(recipe)
    if resume is not None:
        from cnncli.errors import InputError

        if not resume.is_dir():
            raise InputError(f"--resume expects a run directory; {resume} is not one")
        config = resume / "config.toml"
        if config.exists():
            return str(config)
        if not (resume / "train_state.safetensors").exists():
            raise InputError(f"{resume} is not a cnncli run (no config.toml or train_state.safetensors in it)")
    return None


# The defaults below are TrainConfig's (cnncli.engine.config), shown by --help; a test keeps
# them equal. They never override a recipe: only the options the user gave do (given_options).
def train(
    ctx: typer.Context,
    model: ModelArg = None,
    data: DataOpt = "fashion-mnist",
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    val_fraction: ValFractionOpt = 0.1,
    max_samples: MaxSamplesOpt = None,
    stream: StreamOpt = None,
    workers: WorkersOpt = None,
    skip_bad_images: SkipBadImagesOpt = False,
    cache: CacheOpt = None,
    img_size: ImgSizeOpt = None,
    weights: WeightsOpt = None,
    epochs: EpochsOpt = 10,
    batch_size: BatchSizeOpt = 128,
    optimizer: OptimizerOpt = Optimizer.adamw,
    lr: LrOpt = None,
    momentum: MomentumOpt = 0.9,
    nesterov: NesterovOpt = True,
    weight_decay: WeightDecayOpt = None,
    schedule: ScheduleOpt = Schedule.cosine,
    warmup_epochs: WarmupEpochsOpt = 0.0,
    label_smoothing: LabelSmoothingOpt = 0.0,
    clip_grad: ClipGradOpt = None,
    patience: PatienceOpt = None,
    augment: AugmentOpt = None,
    mixup: MixupOpt = None,
    cutmix: CutmixOpt = None,
    mixup_off_epoch: MixupOffEpochOpt = None,
    ema: EmaOpt = None,
    accum_steps: AccumStepsOpt = 1,
    recipe: RecipeOpt = None,
    out: RunOutOpt = None,
    name: RunNameOpt = None,
    resume: ResumeOpt = None,
    seed: SeedOpt = 0,
    deterministic: DeterministicOpt = False,
    log: LogOpt = "csv",
    mlflow_uri: MlflowUriOpt = None,
    experiment: ExperimentOpt = None,
    json_out: RunJsonOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    amp: AmpOpt = "off",
    compile: CompileOpt = False,
) -> None:
    """Train a network on a dataset; the best weights are evaluated on the test split.

    The run directory holds model.safetensors (best weights + everything needed to rebuild
    the network), last.safetensors, train_state.safetensors (for --resume), config.toml,
    metrics.jsonl and curves.png.
    """
    from cnncli.engine.config import build_config
    from cnncli.engine.trainer import train as run_training

    cfg = build_config(resolve_recipe(recipe, resume), given_options(ctx))
    result = run_training(cfg, resume=str(resume) if resume else None, quiet=quiet)
    report_run(result, json_out)


