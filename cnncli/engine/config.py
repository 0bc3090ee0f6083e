"""Training options: defaults, TOML recipes, command-line overrides, validation.

A recipe is a flat TOML table whose keys are the option names (`lr`, `batch_size`, ...; dashes
are accepted too). Precedence: built-in defaults < recipe < flags given on the command line.
The resolved options are written to the run as `config.toml`, which is itself a recipe that
reproduces the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, get_args, get_origin, get_type_hints

from cnncli.errors import InputError

# timm's names (timm.optim.create_optimizer_v2) -> (default lr, default weight decay, what it is).
# Decoupled decay where the optimizer has it; lion wants a ~10x smaller lr and ~10x larger decay
# than AdamW (its paper), lamb the larger lr of its layer-wise trust ratio.
OPTIMIZER_DEFAULTS = {
    "sgd": (0.05, 5e-4, "SGD with (Nesterov) momentum"),
    "adamw": (1e-3, 0.05, "Adam with decoupled weight decay"),
    "adam": (1e-3, 0.0, "Adam (L2 weight decay)"),
    "nadamw": (1e-3, 0.05, "Adam with Nesterov momentum, decoupled decay"),
    "radamw": (1e-3, 0.05, "rectified Adam, decoupled decay"),
    "lamb": (2e-3, 0.02, "layer-wise adaptive moments (large batches)"),
    "lion": (1e-4, 0.5, "evolved sign momentum"),
    "rmsprop": (1e-3, 1e-5, "torch's RMSprop (alpha 0.9, momentum)"),
    "rmsproptf": (1e-3, 1e-5, "TensorFlow-style RMSprop (EfficientNet's recipes)"),
    "adan": (1e-3, 0.02, "adaptive Nesterov momentum"),
    "adoptw": (1e-3, 0.05, "ADOPT, decoupled decay"),
    # timm's Muon scales its orthogonalized steps to AdamW's update size (match_rms_adamw), so
    # AdamW's rates carry over: on the Fashion-MNIST recipe 2e-3 matched AdamW, 5e-3 was worse
    "muon": (2e-3, 0.05, "Muon: orthogonalized momentum for conv and dense weights, AdamW for the rest"),
}
OPTIMIZERS = tuple(OPTIMIZER_DEFAULTS)
SCHEDULES = ("cosine", "onecycle", "step", "constant", "plateau")
SAMPLERS = ("random", "balanced")
KEEPS = ("best", "last")


@dataclass
class TrainConfig:
    """Every option of `cnncli train` (and the shared part of `cnncli finetune`)."""

    MIN_EPOCHS: ClassVar[int] = 1  # finetune's --epochs (its second stage) may be 0

    model: str = ""
    data: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    max_samples: int | None = None
    img_size: int | None = None
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float | str | None = None  # default depends on the optimizer (see resolved_lr); "auto": lr-find
    lr_suggestion: str | None = None  # which lr-find suggestion --lr auto takes (valley when None)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None  # default depends on the optimizer
    schedule: str = "cosine"
    plateau_patience: int = 2  # the `plateau` schedule: epochs without a better val top-1 before
    plateau_factor: float = 0.1  # the lr is multiplied by plateau_factor
    warmup_epochs: float = 0.0
    step_epochs: int = 10  # the `step` schedule: multiply by step_gamma every step_epochs
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    augment: list[str] = field(default_factory=list)
    patience: int | None = None
    keep: str = "best"  # the run's model.safetensors: the best-validation epoch's weights, or the last's
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    threads: int | None = None
    amp: str = "auto"  # auto | bf16 | fp16 | off (engine/amp.py); `true`/`false` of older recipes: auto/off
    compile: bool = False
    eval_batch_size: int = 512
    out: str | None = None
    name: str | None = None
    weights: str | None = None  # initial weights for the network (a safetensors or .pth file)
    # experiment tracking (cnncli.track): loggers, comma-separated; MLflow's URI and experiment
    log: str = "csv"
    mlflow_uri: str | None = None
    experiment: str | None = None
    ema: float | None = None  # decay of the weights' moving average (engine/ema.py)
    mixup: float | None = None  # Beta alpha (engine/mixup.py)
    cutmix: float | None = None
    mixup_off_epoch: int | None = None  # epochs from this one on are not mixed
    accum_steps: int = 1  # batches whose gradients are summed before one optimizer step
    # streaming datasets (data/stream.py): None decides by size; DataLoader workers (None: the
    # usable cores); drop files that fail to decode instead of stopping
    stream: bool | None = None
    workers: int | None = None
    skip_bad_images: bool = False
    class_weights: str | None = None  # "auto" (inverse class frequency) or a JSON/CSV file (data/balance.py)
    sampler: str = "random"  # random: a permutation per epoch; balanced: classes drawn equally often
    cache: str | None = None  # --cache ram|disk (data/cache.py): decode once into a uint8 store

    def resolved_lr(self) -> float:
        if isinstance(self.lr, str):  # "auto" is resolved by the trainer before any optimizer is built
            raise ValueError(f"lr {self.lr!r} has not been resolved (engine/lr_find.resolve_auto_lr)")
        if self.lr is not None:
            return self.lr
        return OPTIMIZER_DEFAULTS.get(self.optimizer, OPTIMIZER_DEFAULTS["sgd"])[0]

    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return OPTIMIZER_DEFAULTS.get(self.optimizer, OPTIMIZER_DEFAULTS["sgd"])[1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def option_types(cls=TrainConfig) -> dict[str, Any]:
    """The options' types (fields only: class constants such as MIN_EPOCHS are no option)."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_ok(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin is None:
        if hint is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if hint is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, hint)
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    # Optional / unions
    return any(a is type(None) and value is None or a is not type(None) and _type_ok(value, a)
               for a in get_args(hint))


def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    origin = get_origin(hint)
    if origin is list:
        return "a list of strings"
    if origin is None:
        return names.get(hint, str(hint))
    return " or ".join(_type_name(a) for a in get_args(hint) if a is not type(None))


def coerce_options(options: dict[str, Any], where: str, cls=TrainConfig) -> dict[str, Any]:
    """Check names and types of options from a recipe; dashes in names become underscores."""
    hints = option_types(cls)
    out = {}
    for raw_key, value in options.items():
        key = raw_key.replace("-", "_")
        if key not in hints:
            close = difflib.get_close_matches(key, list(hints), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise InputError(f"{where}: unknown key '{raw_key}'{hint}")
        if key == "augment" and isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if key == "amp" and isinstance(value, bool):  # earlier recipes: amp = true / false
            value = "auto" if value else "off"
        if isinstance(value, int) and not isinstance(value, bool) and _type_ok(float(value), hints[key]) \
                and not _type_ok(value, hints[key]):
            value = float(value)
        if not _type_ok(value, hints[key]):
            raise InputError(f"{where}: key '{raw_key}' must be {_type_name(hints[key])}, "
                             f"got {type(value).__name__} {value!r}")
        out[key] = value
    return out


def read_recipe(path: str | Path, cls=TrainConfig) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"recipe not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read recipe {path}: {e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"recipe {path} is not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise InputError(f"recipe {path} is not a recipe: its arrays or tables nest too deeply") from None
    # A recipe may group its options under [train]; both forms mean the same
    if set(doc) == {"train"} and isinstance(doc["train"], dict):
        doc = doc["train"]
    options = coerce_options(doc, f"recipe {path}", cls)
    # a model file named in a recipe is found next to the recipe when not from where we are
    model = options.get("model")
    if isinstance(model, str) and model.endswith(".toml") and not Path(model).is_absolute() \
            and not Path(model).exists() and (path.parent / model).exists():
        options["model"] = str(path.parent / model)
    return options


def build_config(recipe: str | None, overrides: dict[str, Any], cls=TrainConfig):
    """Defaults < recipe < explicit command-line values (None means 'not given')."""
    values: dict[str, Any] = {}
    if recipe:
        values.update(read_recipe(recipe, cls))
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = cls(**values)
    validate(config)
    return config


def validate(c: TrainConfig) -> None:
    def positive(name, value):
        if value is not None and value <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}")

    if not c.model:
        raise InputError("no model given: name one (see 'cnncli models') or set `model` in the recipe")
    if c.epochs is not None and c.epochs < c.MIN_EPOCHS:
        raise InputError(f"--epochs must be {'positive' if c.MIN_EPOCHS else 'at least 0'}, got {c.epochs}")
    for name in ("batch_size", "eval_batch_size", "max_samples", "threads", "img_size",
                 "step_epochs", "patience", "plateau_patience"):
        positive(name, getattr(c, name))
    if isinstance(c.lr, str):
        if c.lr.strip().lower() != "auto":
            raise InputError(f"--lr must be a number or 'auto', got {c.lr!r}")
        c.lr = "auto"
    else:
        positive("lr", c.lr)
    if c.lr_suggestion is not None:
        from cnncli.engine.lr_find import check_suggestion

        c.lr_suggestion = check_suggestion(c.lr_suggestion)
    if c.weight_decay is not None and c.weight_decay < 0:
        raise InputError(f"--weight-decay must not be negative, got {c.weight_decay}")
    if not 0 <= c.val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {c.val_fraction}")
    if not 0 <= c.label_smoothing < 1:
        raise InputError(f"--label-smoothing must be in [0, 1), got {c.label_smoothing}")
    if c.warmup_epochs < 0:
        raise InputError(f"--warmup-epochs must not be negative, got {c.warmup_epochs}")
    positive("clip_grad", c.clip_grad)
    positive("accum_steps", c.accum_steps)
    if c.cache is not None and str(c.cache).lower() not in ("ram", "disk"):
        raise InputError(f"--cache {c.cache}: choose ram or disk")
    if c.workers is not None and c.workers < 0:
        raise InputError(f"--workers must not be negative, got {c.workers}")
    _check_numbers(c)  # what the checks above let through: nan, inf, past the flags' bounds
    from cnncli.engine.amp import MODES

    if str(c.amp).lower() not in MODES and not isinstance(c.amp, bool):
        raise InputError(f"--amp {c.amp}: choose one of {', '.join(MODES)}")
    if c.ema is not None:
        from cnncli.engine.ema import check_decay

        check_decay(c.ema)
    if c.mixup is not None or c.cutmix is not None:
        from cnncli.engine.mixup import check_alpha

        check_alpha("mixup", c.mixup)
        check_alpha("cutmix", c.cutmix)
    if c.mixup_off_epoch is not None and c.mixup_off_epoch < 0:
        raise InputError(f"--mixup-off-epoch must not be negative, got {c.mixup_off_epoch}")
    if c.optimizer not in OPTIMIZERS:
        close = difflib.get_close_matches(str(c.optimizer), OPTIMIZERS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise InputError(f"unknown optimizer '{c.optimizer}'{hint}; choose one of {', '.join(OPTIMIZERS)}")
    if c.schedule not in SCHEDULES:
        raise InputError(f"unknown schedule '{c.schedule}'; choose one of {', '.join(SCHEDULES)}")
    if c.schedule == "plateau" and c.val_fraction == 0:
        raise InputError("--schedule plateau lowers the lr when the validation top-1 stops improving; "
                         "it needs a validation split (--val-fraction > 0)")
    if not 0 < c.plateau_factor < 1:
        raise InputError(f"--plateau-factor must be in (0, 1), got {c.plateau_factor}")
    if c.keep not in KEEPS:
        raise InputError(f"--keep {c.keep}: choose best (the epoch with the highest validation top-1) or last")
    if c.sampler not in SAMPLERS:
        raise InputError(f"unknown sampler '{c.sampler}'; choose one of {', '.join(SAMPLERS)}")
    if c.class_weights is not None and not c.class_weights.strip():
        raise InputError("--class-weights takes 'auto' or a JSON/CSV file of class name -> weight")
    if c.device not in ("auto", "cpu", "cuda", "mps") and not c.device.startswith("cuda:"):
        raise InputError(f"unknown device '{c.device}'; choose auto, cpu, cuda or mps")
    if c.log:
        from cnncli.track import parse_log

        parse_log(c.log)
    if c.augment:
        from cnncli.data.augment import parse_augment

        parse_augment(",".join(c.augment))


# What a recipe's numbers may be (the flags have the same bounds, cli/options.py): a recipe is
# input too, and TOML spells nan and inf; a seed or thread count out of range crashes torch.
RANGES = {"seed": (0, 2**32 - 1), "threads": (1, 1024), "lr": (0, 10), "weight_decay": (0, 10),
          "batch_size": (1, 65536), "eval_batch_size": (1, 65536), "img_size": (8, 4096),
          "epochs": (0, 10**6), "momentum": (0, 1), "accum_steps": (1, 4096)}


def _check_numbers(c) -> None:
    import math

    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{flag} must be a finite number, got {value!r}")
        low, high = RANGES.get(f.name, (None, None))
        if low is not None and not low <= value <= high:
            raise InputError(f"{flag} must be in [{low}, {high:g}], got {value!r}")


def to_toml(values: dict[str, Any]) -> str:
    """A flat dict as TOML (None values are left out: they mean 'the default')."""
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
