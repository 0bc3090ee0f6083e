"""Transfer learning: `cnncli finetune` as a library (the seed's last chapter).

Reuse a pretrained network's layers as the base, put a new classifier (the head) on top for
the dataset's classes, then train in two stages:

1. `head`: the base is frozen (no gradients, and its blocks run in inference mode: batch
   norm keeps its pretrained statistics, no path is dropped, even though the trainer calls
   model.train() every epoch); only the head trains, for `head_epochs`.
2. `unfreeze`: the top K blocks of the base (`unfreeze`, or "all") train together with the
   head, at the learning rate times `unfreeze_lr_factor`, for `epochs`. The base's batch
   norm layers keep their pretrained statistics here too (their scale and shift train).

"Blocks" are what the network itself declares: `stages()` for hand-built networks and model
files, timm's coarse group matcher (the same grouping timm uses for layer-wise lr decay) or,
failing that, its feature_info. While the base is frozen and nothing changes the images, its
output does not change between epochs, so it is computed once and the head trains on the
cached features (the same batches, seeds and learning rates as without the cache).

The recipe options are `train`'s too. `ema`: one moving average of all the weights for the
whole run (timm's practice), from the pretrained base with its new head, updated after every
optimizer step of both stages; it is not restarted when blocks unfreeze (its warm-up counts the
whole run's steps), and while the base is frozen its average is the pretrained weights.
`mixup`/`cutmix` mix images, before the base, so a head stage that mixes is not cached
(feature_cache.mixes_head_stage says why). `mixup_off_epoch` and `accum_steps` count as in train:
epochs over both stages, batches within an epoch (its last batch ends an accumulation).

Everything else is `train`'s: the same Trainer, run directory and checkpoint metadata, plus
`weights_source` (where the pretrained weights came from) and `finetune` (the stage schedule).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from cnncli import output
from cnncli.engine.config import TrainConfig, build_config, validate
from cnncli.engine.feature_cache import (  # noqa: F401
    FeatureCache,
    cache_decision,
    feature_shape,
    fits_on_device,
    mixes_head_stage,
)
from cnncli.errors import InputError


@dataclass
class FinetuneConfig(TrainConfig):
    """`TrainConfig` plus the stage schedule and where the pretrained weights come from.

    `epochs` is the length of stage 2 (unfrozen blocks; 0 skips it, as --unfreeze 0 does);
    `weights` (inherited) is --weights FILE.
    """

    MIN_EPOCHS: ClassVar[int] = 0  # --epochs 0: the head stage only
    head_epochs: int = 3
    unfreeze: int | str = 1  # top K blocks in stage 2, or "all"; 0 skips stage 2
    unfreeze_lr_factor: float = 0.1
    pretrained: bool = False  # let timm download its weights when they are not cached
    cache_features: bool | None = None  # None: on where valid
    layer_decay: float | None = None  # block k from the top learns at lr * layer_decay**k (head: k = 0)


def build_finetune_config(recipe: str | None, overrides: dict[str, Any]) -> FinetuneConfig:
    cfg = build_config(recipe, overrides, cls=FinetuneConfig)
    validate_finetune(cfg)
    cfg.unfreeze = parse_unfreeze(cfg.unfreeze)  # "2" from the command line is the number 2
    return cfg


def parse_unfreeze(value: int | str) -> int | str:
    """An --unfreeze value: a count of blocks (0 = none) or 'all'."""
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    else:
        text = str(value).strip().lower()
        if text == "all":
            return "all"
        try:
            count = int(text)
        except ValueError:
            raise InputError(f"--unfreeze takes a number of blocks or 'all', got '{value}'") from None
    if count < 0:
        raise InputError(f"--unfreeze must not be negative, got {count}")
    return count


def validate_finetune(cfg: FinetuneConfig) -> None:
    validate(cfg)
    if cfg.head_epochs < 0:
        raise InputError(f"--head-epochs must not be negative, got {cfg.head_epochs}")
    if not cfg.unfreeze_lr_factor > 0:
        raise InputError(f"--unfreeze-lr-factor must be positive, got {cfg.unfreeze_lr_factor}")
    if cfg.layer_decay is not None and not 0 < cfg.layer_decay <= 1:
        raise InputError(f"--layer-decay must be in (0, 1], got {cfg.layer_decay:g}")
    if cfg.head_epochs == 0 and (parse_unfreeze(cfg.unfreeze) == 0 or cfg.epochs == 0):
        skipped = "--unfreeze 0" if parse_unfreeze(cfg.unfreeze) == 0 else "--epochs 0"
        raise InputError(f"nothing to train: --head-epochs 0 and {skipped}; give the head some epochs "
                         "or unfreeze some blocks for some epochs")
    if cfg.cache_features and cfg.augment:
        raise InputError("--cache-features needs the base's output to stay the same every epoch, but "
                         f"--augment {','.join(cfg.augment)} changes the images; drop one of them")
    if cfg.cache_features and mixes_head_stage(cfg):
        raise InputError("--cache-features needs the base's output to stay the same every epoch, but "
                         "--mixup/--cutmix mix the images before the base; drop one of them")


# ---------------------------------------------------------------- blocks of the base
@dataclass
class Block:
    """One natural block of the base: a name and its parameter names, input to output order."""

    name: str
    params: list[str]


def _group_name(params: list[str]) -> str:
    """A readable name for a group of parameters: the common module path per top-level module.

    ['blocks.6.0.conv_pw.weight', ..., 'conv_head.weight', 'bn2.weight'] -> 'blocks.6+conv_head+bn2'.
    """
    by_top: dict[str, list[list[str]]] = {}
    for p in params:
        parts = p.split(".")[:-1] or p.split(".")
        by_top.setdefault(parts[0], []).append(parts)
    names = []
    for paths in by_top.values():
        common = paths[0]
        for path in paths[1:]:
            n = 0
            while n < min(len(common), len(path)) and common[n] == path[n]:
                n += 1
            common = common[:n]
        names.append(".".join(common))
    return "+".join(names)


def _assign_leftovers(model: torch.nn.Module, groups: list[list[str]], skip: set[str]) -> list[list[str]]:
    """Parameters in no group (and not the classifier) join the group of the next grouped parameter.

    A parameter between two declared blocks belongs to the computation leading into the later
    one; one after the last block (a final norm) joins the last.
    """
    owner = {name: i for i, group in enumerate(groups) for name in group}
    order = [n for n, _ in model.named_parameters() if n not in skip]
    pending: list[str] = []
    for name in order:
        if name in owner:
            for p in pending:
                groups[owner[name]].append(p)
            pending = []
        else:
            pending.append(name)
    if pending and groups:
        groups[-1].extend(pending)
    return groups


def backbone_blocks(model: torch.nn.Module) -> list[Block]:
    """The base's blocks, input to output, without the classifier (see the module doc)."""
    from cnncli.engine.weights import classifier_names, is_classifier_key

    heads = classifier_names(model)
    head_params = {n for n, _ in model.named_parameters() if is_classifier_key(n, heads)}
    stages = getattr(model, "stages", None)
    # a declared stages() method; timm's `stages` attribute is a module, not a declaration
    if callable(stages) and not isinstance(stages, torch.nn.Module):
        names_by_id = {id(p): n for n, p in model.named_parameters()}
        # what a network declares is the base; its parameters outside every stage (the
        # classifier, a model file's head layers) are the head
        blocks = []
        for name, module in stages():
            params = [names_by_id[id(p)] for p in module.parameters() if names_by_id.get(id(p)) not in head_params]
            if params:
                blocks.append(Block(name, params))
        return blocks
    matcher = getattr(model, "group_matcher", None)
    if callable(matcher):
        from timm.models import group_parameters

        grouped = group_parameters(model, matcher(coarse=True))
        groups = [list(grouped[k]) for k in sorted(grouped)]
        # the group holding the classifier is timm's "unmatched" one (neck + head): its other
        # parameters (a final norm) are the top of the base, so they join the block before
        last_had_head = bool(groups) and any(p in head_params for p in groups[-1])
        groups = [[p for p in g if p not in head_params] for g in groups]
        if last_had_head and len(groups) > 1 and groups[-1]:
            groups[-2].extend(groups.pop())
        groups = [g for g in groups if g]
        return [Block(_group_name(g), g) for g in groups]
    feature_info = getattr(model, "feature_info", None)
    if feature_info:
        prefixes = [f["module"] for f in feature_info]
        groups = [[n for n, _ in model.named_parameters() if n.startswith(p + ".")] for p in prefixes]
        groups = _assign_leftovers(model, groups, head_params)
        return [Block(p, g) for p, g in zip(prefixes, groups) if g]
    raise InputError(f"cannot tell the blocks of {type(model).__name__}: it declares neither stages() nor a "
                     "timm group matcher; fine-tune it with --unfreeze all or --unfreeze 0")


def unfrozen_blocks(blocks: list[Block], unfreeze: int | str) -> list[Block]:
    """The top `unfreeze` blocks (nearest the output), or all of them."""
    count = parse_unfreeze(unfreeze)
    if count == "all":
        return list(blocks)
    if count > len(blocks):
        raise InputError(f"--unfreeze {count}, but the base has only {len(blocks)} blocks "
                         f"({', '.join(b.name for b in blocks)}); use --unfreeze all")
    return blocks[len(blocks) - count:] if count else []


# ---------------------------------------------------------------- freezing
def set_trainable(model: torch.nn.Module, names: set[str]) -> None:
    """requires_grad on exactly the parameters named, off everywhere else."""
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)


def set_frozen_modes(model: torch.nn.Module) -> None:
    """Put the frozen part of the network in inference mode (after model.train()).

    A module that has parameters, none of which train, goes to eval mode with everything
    inside it: frozen batch-norm layers keep using (and keeping) their pretrained statistics,
    frozen blocks drop no paths. Parameter-free modules outside frozen blocks (a dropout
    layer of the head) keep the training mode.
    """
    params = list(model.parameters())
    if params and not any(p.requires_grad for p in params):
        model.eval()
        return
    for child in model.children():
        set_frozen_modes(child)


def keep_batchnorm_statistics(model: torch.nn.Module, base_params: set[str]) -> None:
    """Batch-norm layers of the base stay in eval mode even where their block is unfrozen.

    Their scale and shift still train; only the running statistics stay the pretrained ones,
    so the unfrozen blocks keep computing what the head was trained on in stage 1 (Keras's
    fine-tuning advice, and what small fine-tuning batches need: their own statistics would be
    noisy and would shift every feature the head has learnt at once).
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
            if any(p in base_params for p in own):
                module.eval()


def prefers_channels_last(model: torch.nn.Module) -> bool:
    """Depthwise convolutions (MobileNet, EfficientNet) run several times faster channels-last
    on oneDNN CPUs (measured 2-4x for EfficientNet-Lite0); plain convolutions gain nothing."""
    return any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
               for m in model.modules())


@dataclass
class StagePlan:
    """What trains in each stage, in parameter names (for the phases, the tests and the run record)."""

    blocks: list[Block]
    head: list[str]
    unfrozen: list[Block]

    def stage_params(self, stage: str) -> set[str]:
        names = set(self.head)
        if stage == "unfreeze":
            for b in self.unfrozen:
                names.update(b.params)
        return names


def plan_stages(model: torch.nn.Module, unfreeze: int | str) -> StagePlan:
    from cnncli.engine.weights import classifier_names, is_classifier_key

    heads = classifier_names(model)
    if not any(is_classifier_key(n, heads) for n, _ in model.named_parameters()):
        raise InputError(f"{type(model).__name__} has no trainable classifier to fine-tune")
    blocks = backbone_blocks(model)
    in_base = {p for b in blocks for p in b.params}
    head = [n for n, _ in model.named_parameters() if n not in in_base]
    return StagePlan(blocks, head, unfrozen_blocks(blocks, unfreeze))


def layer_scales(plan: StagePlan, layer_decay: float | None) -> dict[str, float]:
    """Layer-wise lr decay (timm's param_groups_layer_decay over the base's blocks): the head 1,
    the top block layer_decay, the next layer_decay**2, ... down to the stem; parameter -> scale."""
    scales = dict.fromkeys(plan.head, 1.0)
    depth = len(plan.blocks)
    for k, block in enumerate(plan.blocks):
        scales.update(dict.fromkeys(block.params, 1.0 if layer_decay is None else layer_decay ** (depth - k)))
    return scales


def stage_phases(plan: StagePlan, head_epochs: int, epochs: int, lr_factor: float, cache=None,
                 layer_decay: float | None = None) -> list:
    """The Trainer phases of the two stages (a stage with no epochs or nothing unfrozen is left out)."""
    from cnncli.engine.trainer import Phase

    base_params = {p for b in plan.blocks for p in b.params}
    scales = layer_scales(plan, layer_decay)

    def phase(stage: str, n_epochs: int, scale: float, feed=None) -> Phase:
        names = plan.stage_params(stage)

        def param_groups(model):
            set_trainable(model, names)
            groups: dict[float, list] = {}  # one group per scale, in the model's parameter order
            for n, p in model.named_parameters():
                if n in names:
                    groups.setdefault(scales.get(n, 1.0), []).append(p)
            return [{"params": ps, "lr_scale": scale * s} for s, ps in groups.items()]

        def prepare_model(model):
            set_trainable(model, names)
            set_frozen_modes(model)
            keep_batchnorm_statistics(model, base_params)

        return Phase(stage, n_epochs, param_groups=param_groups, prepare_model=prepare_model, feed=feed)

    phases = []
    if head_epochs > 0:
        phases.append(phase("head", head_epochs, 1.0, cache))
    if plan.unfrozen and epochs > 0:
        phases.append(phase("unfreeze", epochs, lr_factor))
    return phases


# ---------------------------------------------------------------- the command as a function
def _describe_source(source: dict) -> str:
    kind = source.get("kind")
    if kind == "file":
        where = f"file {source.get('path')}"
    elif kind == "checkpoint":
        where = f"cnncli run {source.get('path')} (trained on {source.get('dataset')})"
    elif kind == "timm":
        where = f"timm {source.get('weights')}" + (" (downloaded)" if source.get("downloaded") else f" ({source.get('path')})")
    elif kind == "package":
        where = f"package {source.get('package')} {source.get('version') or ''}".rstrip() + f" ({source.get('mapping')} mapping)"
    else:
        where = str(kind)
    return where


def finetune(cfg: FinetuneConfig, resume: str | None = None, quiet: bool = False):
    """`cnncli finetune` as a Python function: returns the Trainer's RunResult."""
    from cnncli.engine.trainer import Trainer

    output.set_quiet(quiet)
    validate_finetune(cfg)
    if resume:
        model, input_size, mean, std, extra, spec = _resume_model(Path(resume))
        source = extra.get("weights_source") or {}
    else:
        from cnncli.engine.open import open_network

        backbone = open_network(cfg.model, weights=cfg.weights, pretrained=cfg.pretrained, backbone=True)
        model, input_size, mean, std = backbone.module, backbone.input_size, backbone.mean, backbone.std
        source, spec = dict(backbone.weights_source), dict(backbone.spec)
        extra = {"weights_source": source}
        cfg_extra = (getattr(backbone, "info", None) and backbone.info.extra) or {}
        for key in ("crop_pct", "interpolation"):  # a streaming dataset's eval crop and resizes (engine/stream_feed.py)
            if cfg_extra.get(key):
                extra[key] = cfg_extra[key]
    base_name = spec["name"] if spec else cfg.model
    from cnncli.data.paths import dataset_label

    data_name = dataset_label(cfg.data)
    run_name = cfg.name or f"{Path(base_name).stem if base_name.endswith('.toml') else base_name.replace('/', '_')}-ft-{data_name}"
    trainer = Trainer(cfg, resume=resume, model=model, extra_meta=extra, input_size=input_size, mean=mean,
                      std=std, quiet=quiet, run_name=run_name, model_spec=spec, command="finetune")

    # the new head for the dataset's classes (a resumed run's weights are loaded over it by fit)
    model.reset_classifier(trainer.num_classes)
    model.to(trainer.device)
    if prefers_channels_last(model):
        model.to(memory_format=torch.channels_last)  # the checkpoint is written contiguous
    if trainer.ema is not None:
        # the Trainer's average was taken of the network with the source's classifier: one of the
        # network being fine-tuned replaces it (new head, device, layout); a resumed run loads its
        # own average over it. One average for the whole run, both stages (timm's practice).
        from cnncli.engine.ema import WeightAverage

        trainer.ema = WeightAverage(model, cfg.ema)
    if not resume and trainer.dist.is_main:
        output.note(f"pretrained weights: {_describe_source(source)}; {source.get('tensors_loaded', '?')} tensors "
                    f"loaded; the source's classifier: {source.get('classifier')}; a new head for "
                    f"{trainer.num_classes} classes replaces it")
    plan = plan_stages(model, cfg.unfreeze)
    trainer.phases = stage_phases(plan, cfg.head_epochs, cfg.epochs, cfg.unfreeze_lr_factor,
                                  layer_decay=cfg.layer_decay)
    use_cache, why_not = cache_decision(cfg, trainer)
    if not use_cache and cfg.head_epochs and cfg.cache_features is None and trainer.dist.is_main:
        output.note(f"not caching the base's features: {why_not}")
    if use_cache:
        trainer.phases[0].feed = FeatureCache(
            keep_on_device=trainer.device.type == "cpu" or fits_on_device(trainer))
    from cnncli.engine.lr_find import resolve_auto_lr

    resolve_auto_lr(trainer)  # --lr auto: the range test on the head stage (phase 0)
    lr = cfg.resolved_lr()
    trainer.extra_meta["weights_source"] = source
    trainer.weights_source = source
    trainer.extra_meta["finetune"] = {
        "blocks": [b.name for b in plan.blocks],
        "head": _group_name(plan.head),
        "unfreeze": parse_unfreeze(cfg.unfreeze),
        "unfreeze_lr_factor": cfg.unfreeze_lr_factor,
        "layer_decay": cfg.layer_decay,
        "block_lr_scales": ({b.name: layer_scales(plan, cfg.layer_decay)[b.params[0]] for b in plan.unfrozen}
                            if cfg.layer_decay is not None else None),
        "stages": [{"name": p.name, "epochs": p.epochs,
                    "trains": ([b.name for b in plan.unfrozen] if p.name == "unfreeze" else []) + ["head"],
                    "lr": lr * (cfg.unfreeze_lr_factor if p.name == "unfreeze" else 1.0),
                    "cached_features": bool(p.feed is not None)} for p in trainer.phases],
    }
    return trainer.fit()


def _resume_model(run_dir: Path):
    """The fine-tuned network's architecture (new head included) and record, from the run's state."""
    from cnncli.checkpoint import built_from_meta, read_meta

    path = run_dir / "train_state.safetensors"
    if not path.exists():
        raise InputError(f"{run_dir} has no train_state.safetensors to resume from")
    meta = read_meta(path)
    if "finetune" not in meta:
        raise InputError(f"{run_dir} is a 'cnncli train' run; resume it with 'cnncli train --resume {run_dir}'")
    built = built_from_meta(meta)
    extra = {"weights_source": meta.get("weights_source"), "finetune": meta.get("finetune")}
    return built.module, tuple(meta["input_size"]), list(meta["mean"]), list(meta["std"]), extra, built.spec
