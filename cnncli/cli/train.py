"""`cnncli train MODEL --data NAME`: train a network from scratch into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.common import Keep, Optimizer, Sampler, Schedule, report_run
from cnncli.cli.options import (
    AccumStepsOpt,
    AmpOpt,
    AugmentOpt,
    BatchSizeOpt,
    CacheOpt,
    ClassWeightsOpt,
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
    KeepOpt,
    LabelSmoothingOpt,
    LogOpt,
    LrOpt,
    LrSuggestionOpt,
    MaxSamplesOpt,
    MixupOffEpochOpt,
    MixupOpt,
    MlflowUriOpt,
    MomentumOpt,
    NesterovOpt,
    OptimizerOpt,
    PatienceOpt,
    PlateauFactorOpt,
    PlateauPatienceOpt,
    QuietOpt,
    RecipeOpt,
    ResumeOpt,
    RunForceOpt,
    RunJsonOpt,
    RunNameOpt,
    RunOutOpt,
    SamplerOpt,
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
        from cnncli.outputs import MARKER, OLD_RUN_FILE, run_of

        if not resume.is_dir():
            raise InputError(f"--resume expects a run directory; {resume} is not one")
        if run_of(resume) is None:  # a folder of the user's own, whatever config.toml it holds
            raise InputError(f"{resume} is not a cnncli run (no {MARKER} or {OLD_RUN_FILE} in it)")
        config = resume / "config.toml"
        if config.exists():
            return str(config)
    return None


def run_config(recipe: Path | None, resume: Path | None, given: dict, build, cls):
    """A run's options: defaults < recipe < flags; on --resume the run's own record, with the
    changes the resume policy allows (cnncli.engine.resume_policy) and the others refused."""
    if resume is None:
        return build(str(recipe) if recipe else None, given)
    resolve_recipe(None, resume)  # a folder that is a run, said first
    from cnncli.engine.resume_policy import resumed_options

    return build(None, resumed_options(resume, given, str(recipe) if recipe else None, cls))


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
    lr_suggestion: LrSuggestionOpt = None,
    momentum: MomentumOpt = 0.9,
    nesterov: NesterovOpt = True,
    weight_decay: WeightDecayOpt = None,
    schedule: ScheduleOpt = Schedule.cosine,
    plateau_patience: PlateauPatienceOpt = 2,
    plateau_factor: PlateauFactorOpt = 0.1,
    warmup_epochs: WarmupEpochsOpt = 0.0,
    label_smoothing: LabelSmoothingOpt = 0.0,
    clip_grad: ClipGradOpt = None,
    patience: PatienceOpt = None,
    keep: KeepOpt = Keep.best,
    class_weights: ClassWeightsOpt = None,
    sampler: SamplerOpt = Sampler.random,
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
    force: RunForceOpt = False,
    seed: SeedOpt = 0,
    deterministic: DeterministicOpt = False,
    log: LogOpt = "csv",
    mlflow_uri: MlflowUriOpt = None,
    experiment: ExperimentOpt = None,
    json_out: RunJsonOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    amp: AmpOpt = "auto",
    compile: CompileOpt = False,
) -> None:
    """Train a network on a dataset; the kept weights (--keep: the best validation epoch's or the
    last's) are evaluated on the test split.

    The run directory holds model.safetensors (the kept weights + everything needed to rebuild
    the network), last.safetensors, train_state.safetensors (for --resume), config.toml,
    metrics.jsonl and curves.png.
    """
    from cnncli.engine.config import TrainConfig, build_config
    from cnncli.engine.trainer import train as run_training
    from cnncli.outputs import forced

    cfg = run_config(recipe, resume, given_options(ctx), build_config, TrainConfig)
    with forced(force):
        result = run_training(cfg, resume=str(resume) if resume else None, quiet=quiet)
    report_run(result, json_out)


