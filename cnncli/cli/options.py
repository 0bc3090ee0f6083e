"""Every option of the command line, declared once as an `Annotated` alias.

A command names its parameters with these aliases and gives the default in its own signature
(`epochs: EpochsOpt = 10`), so that `--help` shows the default through Typer's `show_default`
and a flag reads the same in every command that has it. `train` and `finetune` take the
recipe overrides from the click context (`given_options`): only the flags the user actually
typed override a recipe, whatever their defaults are.

Light on purpose (typer and the standard library only): `cnncli --help` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cnncli.cli.common import Keep, Optimizer, Sampler, Schedule, enum_value, parse_device


def _range(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False):
    """A typer callback refusing a number that is not finite or out of range (exit 2, one line)."""
    import math

    def shown(v) -> str:  # whole numbers as written (4294967295, not 4.29497e+09)
        return str(int(v)) if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e16) \
            else f"{v:g}"

    def check(value):
        if value is None:
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise typer.BadParameter(f"must be a finite number, got {value!r}")
        bad = low is not None and (value < low or (low_open and value == low))
        bad = bad or (high is not None and (value > high or (high_open and value == high)))
        if bad:
            lo = "" if low is None else ("(" if low_open else "[") + shown(low)
            hi = "" if high is None else shown(high) + (")" if high_open else "]")
            where = f"in {lo}, {hi}" if low is not None and high is not None else (
                f"{'above' if low_open else 'at least'} {shown(low)}" if low is not None else f"at most {shown(high)}")
            raise typer.BadParameter(f"must be {where}, got {value:g}")
        return value

    return check


MAX_THREADS = 1024

# rich help panels of train and finetune (the other commands have few options: one panel)
DATA = "Data"
MODEL = "Model"
OPTIMISATION = "Optimisation"
AUGMENTATION = "Augmentation"
RUN = "Run/output"
DEVICE = "Device"

DEVICE_METAVAR = "auto|cpu|cuda[:N]|N|mps"
DEVICE_HELP = "auto picks cuda, then mps, then cpu; cuda:N or N picks a GPU by index."

# ------------------------------------------------------------------------------ data
DataOpt = Annotated[str, typer.Option(
    "--data", "-d", rich_help_panel=DATA,
    help="Dataset: fashion-mnist, fashion-mnist-mini, cifar10, synthetic, imagefolder:PATH, csv:FILE, "
         "wds:SHARDS, or a folder or .csv path.")]
DataDirOpt = Annotated[str | None, typer.Option(
    "--data-dir", rich_help_panel=DATA, help="Folder holding the dataset files.")]
DownloadOpt = Annotated[bool, typer.Option(
    "--download/--no-download", rich_help_panel=DATA,
    help="Fetch the dataset through torchvision (needs a network).")]
ValFractionOpt = Annotated[float, typer.Option(
    "--val-fraction", rich_help_panel=DATA, callback=_range(0, 1, high_open=True),
    help="Share of the training set held out for validation.")]
MaxSamplesOpt = Annotated[int | None, typer.Option(
    "--max-samples", rich_help_panel=DATA, callback=_range(1),
    help="Cap the training set (eval, compare: the split scored) at N images, stratified by class; "
    "N below the number of classes is refused (a class would have none).")]
StreamOpt = Annotated[bool | None, typer.Option(
    "--stream/--no-stream", rich_help_panel=DATA, show_default="by size",
    help="imagefolder/csv: decode images per batch in worker processes, or load them all in memory "
         "(default: stream when they would take over 512 MB decoded).")]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", rich_help_panel=DATA, callback=_range(0, 256), show_default="the usable CPU cores",
    help="DataLoader worker processes decoding a streaming dataset (0: in the main process).")]
CacheOpt = Annotated[str | None, typer.Option(
    "--cache", rich_help_panel=DATA, metavar="ram|disk", show_default="off",
    help="imagefolder/csv/wds: decode each image once at the training resolution into a uint8 store that "
         "later epochs read: disk (a memory-mapped file in the cnncli cache folder, reused by later runs "
         "until a file changes) or ram (this run, within the memory budget).")]
SkipBadImagesOpt = Annotated[bool, typer.Option(
    "--skip-bad-images", rich_help_panel=DATA,
    help="Skip (count and report) images that fail to decode instead of stopping.")]
ImgSizeOpt = Annotated[int | None, typer.Option(
    "--img-size", callback=_range(8, 4096), rich_help_panel=DATA,
    help="Resize images to this square size for the network.", show_default="the dataset's size")]
FinetuneImgSizeOpt = Annotated[int | None, typer.Option(
    "--img-size", callback=_range(8, 4096), rich_help_panel=DATA, show_default="the backbone's input size",
    help="Resize images to this square size; smaller is much faster on a CPU.")]

# ------------------------------------------------------------------------------ model
WeightsOpt = Annotated[str | None, typer.Option(
    "--weights", rich_help_panel=MODEL,
    help="Initial weights: a .safetensors or .pth state dict.")]
PretrainedWeightsOpt = Annotated[str | None, typer.Option(
    "--weights", rich_help_panel=MODEL,
    help="Pretrained weights: a .safetensors or .pth/.bin state dict in the network's naming.")]
PretrainedDownloadOpt = Annotated[bool, typer.Option(
    "--pretrained/--no-pretrained", rich_help_panel=MODEL,
    help="Let timm download its pretrained weights when they are not in the local cache "
    "(needs a network).")]
UnfreezeOpt = Annotated[str, typer.Option(
    "--unfreeze", rich_help_panel=MODEL,
    help="Stage 2: unfreeze the top K blocks of the base (K or 'all'; 0 skips stage 2).")]

# ------------------------------------------------------------------------------ optimisation
EpochsOpt = Annotated[int, typer.Option(
    "--epochs", "-e", callback=_range(1, 10**6), rich_help_panel=OPTIMISATION, help="Epochs to train.")]
UnfrozenEpochsOpt = Annotated[int, typer.Option(
    "--epochs", "-e", callback=_range(0, 10**6), rich_help_panel=OPTIMISATION,
    help="Stage 2: epochs with the top blocks unfrozen (0 skips stage 2, as --unfreeze 0 does).")]
HeadEpochsOpt = Annotated[int, typer.Option(
    "--head-epochs", rich_help_panel=OPTIMISATION, callback=_range(0, 10**6),
    help="Stage 1: epochs training only the new head on the frozen base.")]
UnfreezeLrFactorOpt = Annotated[float, typer.Option(
    "--unfreeze-lr-factor", rich_help_panel=OPTIMISATION, callback=_range(0, None, low_open=True),
    help="Stage 2 learning rate = --lr times this.")]
CacheFeaturesOpt = Annotated[bool | None, typer.Option(
    "--cache-features/--no-cache-features", rich_help_panel=OPTIMISATION,
    show_default="on unless augmenting",
    help="Stage 1: compute the frozen base's features once.")]
BatchSizeOpt = Annotated[int, typer.Option(
    "--batch-size", "-b", rich_help_panel=OPTIMISATION, callback=_range(1, 65536), help="Batch size (global under torchrun).")]
OptimizerOpt = Annotated[Optimizer, typer.Option(
    "--optimizer", rich_help_panel=OPTIMISATION, metavar="sgd|adamw|lamb|lion|...",
    help="From timm's factory: also adam, nadamw, radamw, rmsprop, rmsproptf, adan, adoptw, muon; no decay on biases and norms.")]
def _lr_value(text: str):
    """--lr: a number in (0, 10], or 'auto' (the learning-rate range test picks it)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a number (or 'auto')") from None
    try:
        return _range(0, 10, low_open=True)(value)
    except typer.BadParameter as e:
        raise ValueError(e.message) from None


LrOpt = Annotated[str | None, typer.Option(
    "--lr", rich_help_panel=OPTIMISATION, parser=_lr_value, metavar="LR|auto",
    show_default="1e-3 with adamw, 0.05 with sgd",
    help="Peak learning rate, or auto (lr-find).")]
LrSuggestionOpt = Annotated[str | None, typer.Option(
    "--lr-suggestion", rich_help_panel=OPTIMISATION, metavar="valley|steep|minimum", show_default="valley",
    help="Which suggestion of the range test --lr auto takes (printed and recorded in the run).")]
MomentumOpt = Annotated[float, typer.Option(
    "--momentum", rich_help_panel=OPTIMISATION, callback=_range(0, 1, high_open=True), help="SGD momentum.")]
NesterovOpt = Annotated[bool, typer.Option(
    "--nesterov/--no-nesterov", rich_help_panel=OPTIMISATION, help="Nesterov momentum for SGD.")]
WeightDecayOpt = Annotated[float | None, typer.Option(
    "--weight-decay", rich_help_panel=OPTIMISATION, callback=_range(0, 10),
    show_default="0.05 adamw, 5e-4 sgd, 0.5 lion, 0.02 lamb/adan, 0 adam, 1e-5 rmsprop",
    help="Weight decay.")]
ScheduleOpt = Annotated[Schedule, typer.Option(
    "--schedule", rich_help_panel=OPTIMISATION,
    help="Learning-rate schedule; plateau lowers it when the validation top-1 stops improving.")]
PlateauPatienceOpt = Annotated[int, typer.Option(
    "--plateau-patience", rich_help_panel=OPTIMISATION, callback=_range(1, 10**6),
    help="--schedule plateau: epochs without a better validation top-1 before the lr drops.")]
PlateauFactorOpt = Annotated[float, typer.Option(
    "--plateau-factor", rich_help_panel=OPTIMISATION, callback=_range(0, 1, low_open=True, high_open=True),
    help="--schedule plateau: the lr is multiplied by this at each drop.")]
LayerDecayOpt = Annotated[float | None, typer.Option(
    "--layer-decay", rich_help_panel=OPTIMISATION, show_default="off",
    callback=_range(0, 1, low_open=True),
    help="Layer-wise lr decay: the base's k-th block from the top learns at lr times F^k (the head at lr).")]
ClassWeightsOpt = Annotated[str | None, typer.Option(
    "--class-weights", rich_help_panel=DATA, metavar="auto|FILE", show_default="off",
    help="Weigh the loss per class: auto (inverse class frequency) or a JSON/CSV file of class name -> weight.")]
SamplerOpt = Annotated[Sampler, typer.Option(
    "--sampler", rich_help_panel=DATA,
    help="random: each image once per epoch; balanced: images drawn so that every class is equally frequent.")]
WarmupEpochsOpt = Annotated[float, typer.Option(
    "--warmup-epochs", rich_help_panel=OPTIMISATION, callback=_range(0, 10**6),
    help="Linear warm-up, in epochs (may be fractional).")]
LabelSmoothingOpt = Annotated[float, typer.Option(
    "--label-smoothing", rich_help_panel=OPTIMISATION, callback=_range(0, 1, high_open=True), help="Label smoothing in [0, 1).")]
ClipGradOpt = Annotated[float | None, typer.Option(
    "--clip-grad", rich_help_panel=OPTIMISATION, callback=_range(0, None, low_open=True),
    help="Clip the gradient norm to this value.", show_default="no clipping")]
PatienceOpt = Annotated[int | None, typer.Option(
    "--patience", rich_help_panel=OPTIMISATION, callback=_range(1), show_default="no early stop",
    help="Stop after this many epochs without a better validation top-1.")]
KeepOpt = Annotated[Keep, typer.Option(
    "--keep", rich_help_panel=OPTIMISATION,
    help="The weights the run keeps as model.safetensors and tests: best (the epoch with the highest "
    "validation top-1) or last (the final epoch's, as Keras without restore_best_weights).")]

# ------------------------------------------------------------------------------ augmentation
AugmentOpt = Annotated[str | None, typer.Option(
    "--augment", rich_help_panel=AUGMENTATION, show_default="none",
    help="Augmentations, comma-separated: shift,flip,lighting,erase (whole batches) and the "
    "per-sample policies randaugment[=M[:N]], trivialaugment, autoaugment[=imagenet|cifar10|svhn], "
    "augmix[=S].")]

MixupOpt = Annotated[float | None, typer.Option(
    "--mixup", rich_help_panel=AUGMENTATION, show_default="off",
    help="mixup with this Beta alpha (e.g. 0.2); soft-target loss.")]
CutmixOpt = Annotated[float | None, typer.Option(
    "--cutmix", rich_help_panel=AUGMENTATION, show_default="off",
    help="cutmix with this Beta alpha (e.g. 1.0); with --mixup, one of the two per batch.")]
MixupOffEpochOpt = Annotated[int | None, typer.Option(
    "--mixup-off-epoch", rich_help_panel=AUGMENTATION, show_default="never",
    help="Train the epochs from this one on (0-based) without mixup/cutmix.")]
EmaOpt = Annotated[float | None, typer.Option(
    "--ema", rich_help_panel=OPTIMISATION, show_default="off",
    help="Keep a moving average of the weights with this decay in (0, 1), e.g. 0.999 (with "
    "warm-up); validation and test report it and the run's model is the average.")]
AccumStepsOpt = Annotated[int, typer.Option(
    "--accum-steps", rich_help_panel=OPTIMISATION,
    help="Sum the gradients of this many batches before each optimizer step.")]

# ------------------------------------------------------------------------------ run / output
RecipeOpt = Annotated[Path | None, typer.Option(
    "--recipe", "-r", rich_help_panel=RUN,
    help="TOML recipe with any of these options; flags given on the command line override it.")]
RunOutOpt = Annotated[str | None, typer.Option(
    "--out", "-o", rich_help_panel=RUN, show_default="runs/<model>-<data>",
    help="Run directory.")]
RunNameOpt = Annotated[str | None, typer.Option(
    "--name", rich_help_panel=RUN, help="Run name under runs/.")]
ResumeOpt = Annotated[Path | None, typer.Option(
    "--resume", rich_help_panel=RUN, help="Continue the run in this directory.")]
SeedOpt = Annotated[int, typer.Option("--seed", rich_help_panel=RUN, callback=_range(0, 2**32 - 1), help="Random seed.")]
DeterministicOpt = Annotated[bool, typer.Option(
    "--deterministic/--no-deterministic", rich_help_panel=RUN,
    help="Use only deterministic algorithms.")]
RunJsonOpt = Annotated[bool, typer.Option(
    "--json", rich_help_panel=RUN, help="Print one JSON document with the results on stdout.")]
LogOpt = Annotated[str, typer.Option(
    "--log", rich_help_panel=RUN, metavar="csv,tensorboard,mlflow",
    help="Loggers, comma-separated: csv (results.csv), tensorboard (event files in the run), "
    "mlflow; 'none' for none.")]
MlflowUriOpt = Annotated[str | None, typer.Option(
    "--mlflow-uri", rich_help_panel=RUN, show_default="$MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db",
    help="MLflow tracking URI (a server or a database) for --log mlflow.")]
ExperimentOpt = Annotated[str | None, typer.Option(
    "--experiment", rich_help_panel=RUN, show_default="the run's or study's name",
    help="MLflow experiment name for --log mlflow.")]
QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", rich_help_panel=RUN, help="No progress bar or per-epoch lines.")]

# ------------------------------------------------------------------------------ device
DeviceOpt = Annotated[str, typer.Option(
    "--device", rich_help_panel=DEVICE, parser=parse_device, metavar=DEVICE_METAVAR,
    help=DEVICE_HELP)]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", rich_help_panel=DEVICE, callback=_range(1, MAX_THREADS), help="CPU threads for PyTorch.",
    show_default="PyTorch's choice")]
AmpOpt = Annotated[str, typer.Option(
    "--amp", rich_help_panel=DEVICE, metavar="auto|bf16|fp16|off",
    help="Mixed precision; auto: bf16 where native (GPU capability >= 8, AVX512-BF16/AMX CPUs), "
    "fp16 + GradScaler on other GPUs, else float32.")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile/--no-compile", rich_help_panel=DEVICE,
    help="torch.compile the network (falls back to eager).")]

# ------------------------------------------------------------------------------ other commands
# (one panel each: these commands have few options)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
CommandDeviceOpt = Annotated[str, typer.Option(
    "--device", parser=parse_device, metavar=DEVICE_METAVAR, help=DEVICE_HELP)]
CommandThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", min=1, callback=_range(1, MAX_THREADS), help="CPU threads for PyTorch.", show_default="PyTorch's choice")]
InferenceBatchSizeOpt = Annotated[int, typer.Option(
    "--batch-size", "-b", min=1, callback=_range(1, 65536), help="Images per forward pass.")]
RegistryPretrainedOpt = Annotated[bool, typer.Option(
    "--pretrained", help="Registry name: timm's pretrained weights (needs the hub or its cache).")]
RegistryWeightsOpt = Annotated[str | None, typer.Option(
    "--weights", help="Registry name: weights from this .safetensors / .pth file.")]
PngOutOpt = Annotated[Path | None, typer.Option(
    "--out", "-o", help="The PNG to write.", show_default="a name made from the inputs")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace an existing output file of another kind (never a folder or a special file).")]
RunForceOpt = Annotated[bool, typer.Option(
    "--force", rich_help_panel=RUN, help="Write the run into a folder that is not empty and not a run "
    "of this command (its files of the same names are replaced).")]


# lr-find (its data and model options are train's)
StartLrOpt = Annotated[float, typer.Option(
    "--start-lr", callback=_range(0, 10, low_open=True), help="Learning rate of the sweep's first step.")]
EndLrOpt = Annotated[float, typer.Option(
    "--end-lr", callback=_range(0, 1000, low_open=True), help="Learning rate of the sweep's last step.")]
LrStepsOpt = Annotated[int, typer.Option(
    "--steps", callback=_range(10, 10_000), help="Optimizer steps of the sweep (it stops early once the loss diverges).")]
LrPlotOpt = Annotated[Path | None, typer.Option(
    "--plot", help="Draw loss against learning rate, the suggestions marked, to this PNG.",
    show_default="no plot")]
# test-time augmentation (eval and predict)
TtaOpt = Annotated[str, typer.Option(
    "--tta", metavar="none|flip|multicrop",
    help="Test-time augmentation: average the softmax over the image and its horizontal flip "
    "(flip), or over five crops at the input size, centre and corners of the image padded by a "
    "tenth (multicrop).")]


# ------------------------------------------------------------------------------ overrides
# what train/finetune take as options but do not pass to the run's configuration
NOT_CONFIG = frozenset({"ctx", "recipe", "resume", "json_out", "quiet", "force"})


def given_options(ctx: typer.Context, exclude=NOT_CONFIG) -> dict[str, Any]:
    """The options the user gave (command line or environment), as configuration values.

    A default is not an override: a recipe's `epochs = 30` stays 30 unless `--epochs` was typed.
    """
    given = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)  # click's ParameterSource (typer's copy of it)
        if name in exclude or source is None or source.name == "DEFAULT":
            continue
        if name == "augment" and value is not None:
            value = [a for a in value.split(",") if a]
        given[name] = enum_value(value)
    return given

