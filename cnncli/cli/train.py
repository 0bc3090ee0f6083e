"""`cnncli train MODEL --data NAME`: train a network from scratch into a run directory."""

from __future__ import annotations

from pathlib import Path

import typer

from cnncli.cli.common import Device, Optimizer, Schedule, enum_value

# Options shared with `finetune`; every default is None so that a recipe value is only
# overridden by flags the user actually typed.
DATA = typer.Option(None, "--data", "-d", help="Dataset: fashion-mnist, fashion-mnist-mini, cifar10, imagefolder:PATH, synthetic.")
DATA_DIR = typer.Option(None, "--data-dir", help="Folder holding the dataset files.")
DOWNLOAD = typer.Option(None, "--download/--no-download", help="Fetch the dataset through torchvision (needs a network).")
RECIPE = typer.Option(None, "--recipe", "-r", help="TOML recipe with any of these options; flags override it.")
EPOCHS = typer.Option(None, "--epochs", "-e", help="Epochs to train [default: 10].")
BATCH = typer.Option(None, "--batch-size", "-b", help="Batch size (global under torchrun) [default: 128].")
OPTIM = typer.Option(None, "--optimizer", help="Optimizer [default: adamw].")
LR = typer.Option(None, "--lr", help="Peak learning rate [default: 1e-3 adamw, 0.05 sgd].")
MOMENTUM = typer.Option(None, "--momentum", help="SGD momentum [default: 0.9].")
NESTEROV = typer.Option(None, "--nesterov/--no-nesterov", help="Nesterov momentum for SGD [default: on].")
WD = typer.Option(None, "--weight-decay", help="Weight decay [default: 0.05 adamw, 5e-4 sgd].")
SCHEDULE = typer.Option(None, "--schedule", help="Learning-rate schedule [default: cosine].")
WARMUP = typer.Option(None, "--warmup-epochs", help="Linear warm-up, in epochs (may be fractional).")
SMOOTH = typer.Option(None, "--label-smoothing", help="Label smoothing in [0, 1).")
CLIP = typer.Option(None, "--clip-grad", help="Clip the gradient norm to this value.")
AUGMENT = typer.Option(None, "--augment", help="Batch augmentations: shift,flip,lighting,erase.")
PATIENCE = typer.Option(None, "--patience", help="Stop after this many epochs without a better validation top-1.")
SEED = typer.Option(None, "--seed", help="Random seed [default: 0].")
DETERMINISTIC = typer.Option(None, "--deterministic/--no-deterministic", help="Use only deterministic algorithms.")
DEVICE = typer.Option(None, "--device", help="auto picks cuda, then mps, then cpu.")
THREADS = typer.Option(None, "--threads", help="CPU threads for PyTorch.")
IMG_SIZE = typer.Option(None, "--img-size", help="Resize images to this square size for the network.")
VAL = typer.Option(None, "--val-fraction", help="Share of the training set held out for validation [default: 0.1].")
MAX_SAMPLES = typer.Option(None, "--max-samples", help="Cap the training set at N images, stratified by class.")
OUT = typer.Option(None, "--out", "-o", help="Run directory [default: runs/<model>-<data>].")
NAME = typer.Option(None, "--name", help="Run name under runs/.")
RESUME = typer.Option(None, "--resume", help="Continue the run in this directory.")
JSON = typer.Option(False, "--json", help="Print one JSON document with the results on stdout.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar or per-epoch lines.")
AMP = typer.Option(None, "--amp/--no-amp", help="bf16 autocast (CUDA, or CPUs that support it).")
COMPILE = typer.Option(None, "--compile/--no-compile", help="torch.compile the network (falls back to eager).")
WEIGHTS = typer.Option(None, "--weights", help="Initial weights: a .safetensors or .pth state dict.")


def collect(**options) -> dict:
    return {k: enum_value(v) for k, v in options.items()}


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


def train(
    model: str | None = typer.Argument(None, help="Registry name (see 'cnncli models'), timm/<name>, or a TOML model file."),
    data: str | None = DATA,
    data_dir: str | None = DATA_DIR,
    download: bool | None = DOWNLOAD,
    recipe: Path | None = RECIPE,
    epochs: int | None = EPOCHS,
    batch_size: int | None = BATCH,
    optimizer: Optimizer | None = OPTIM,
    lr: float | None = LR,
    momentum: float | None = MOMENTUM,
    nesterov: bool | None = NESTEROV,
    weight_decay: float | None = WD,
    schedule: Schedule | None = SCHEDULE,
    warmup_epochs: float | None = WARMUP,
    label_smoothing: float | None = SMOOTH,
    clip_grad: float | None = CLIP,
    augment: str | None = AUGMENT,
    patience: int | None = PATIENCE,
    seed: int | None = SEED,
    deterministic: bool | None = DETERMINISTIC,
    device: Device | None = DEVICE,
    threads: int | None = THREADS,
    img_size: int | None = IMG_SIZE,
    val_fraction: float | None = VAL,
    max_samples: int | None = MAX_SAMPLES,
    out: str | None = OUT,
    name: str | None = NAME,
    resume: Path | None = RESUME,
    amp: bool | None = AMP,
    compile: bool | None = COMPILE,
    weights: str | None = WEIGHTS,
    json_out: bool = JSON,
    quiet: bool = QUIET,
) -> None:
    """Train a network on a dataset; the best weights are evaluated on the test split.

    The run directory holds model.safetensors (best weights + everything needed to rebuild
    the network), last.safetensors, train_state.safetensors (for --resume), config.toml,
    metrics.jsonl and curves.png.
    """
    from cnncli.engine.config import build_config
    from cnncli.engine.trainer import train as run_training

    overrides = collect(
        model=model, data=data, data_dir=data_dir, download=download, epochs=epochs,
        batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum, nesterov=nesterov,
        weight_decay=weight_decay, schedule=schedule, warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing, clip_grad=clip_grad,
        augment=[a for a in augment.split(",") if a] if augment is not None else None,
        patience=patience, seed=seed, deterministic=deterministic, device=device, threads=threads,
        img_size=img_size, val_fraction=val_fraction, max_samples=max_samples, out=out, name=name,
        amp=amp, compile=compile, weights=weights,
    )
    cfg = build_config(resolve_recipe(recipe, resume), overrides)
    result = run_training(cfg, resume=str(resume) if resume else None, quiet=quiet)
    _report(result, json_out)


def _report(result, json_out: bool) -> None:
    from cnncli import output
    from cnncli.engine import distributed

    if not distributed.context().is_main:
        return
    doc = result.to_dict()
    if json_out:
        output.emit_json(doc)
        return
    test = (f"test top-1 {doc['test_top1']:.4f}, top-5 {doc['test_top5']:.4f}"
            if doc["test_top1"] is not None else "no test split")
    best = f"best val top-1 {doc['best_val_top1']:.4f}, " if doc["best_val_top1"] is not None else ""
    print(f"{doc['checkpoint']}: {doc['epochs']} epochs, {best}{test}, "
          f"{doc['seconds']:.1f}s ({doc['images_per_second']:.0f} train img/s)")
