"""The search space of `cnncli tune`: a TOML table of train options.

    lr = {low = 1e-4, high = 1e-1, log = true}     # a range (float, or int for int options; step=)
    batch_size = {choices = [32, 64, 128]}         # a categorical choice
    epochs = 3                                     # a fixed value for every trial

Keys are `cnncli train` options; `augment` choices are policy strings ("none", "shift,flip").
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnncli.engine.config import coerce_options, option_types
from cnncli.errors import InputError

# what tune itself decides for every trial
NOT_SEARCHABLE = {"model", "data", "out", "name", "log", "mlflow_uri", "experiment"}
RANGE_KEYS = {"low", "high", "log", "step"}

DEFAULT_SPACE = {
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-1, "log": True},
    "batch_size": {"choices": [32, 64, 128, 256]},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "augment": {"choices": ["none", "flip", "shift,flip", "shift,flip,lighting"]},
}


@dataclass
class Dimension:
    name: str
    kind: str  # float | int | choice | fixed
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: list | None = None
    value: Any = None


def _option_value(name: str, value: Any, where: str) -> Any:
    if name == "augment":
        return "" if value in ("none", "") else value  # checked as a policy below
    return coerce_options({name: value}, where)[name]


def parse_space(doc: dict[str, Any], where: str = "space") -> list[Dimension]:
    hints = option_types()
    dims = []
    for raw, spec in doc.items():
        name = raw.replace("-", "_")
        if name not in hints:
            close = difflib.get_close_matches(name, list(hints), n=1)
            raise InputError(f"{where}: unknown option '{raw}'" + (f"; did you mean '{close[0]}'?" if close else ""))
        if name in NOT_SEARCHABLE:
            raise InputError(f"{where}: '{raw}' is set by cnncli tune itself, not searched")
        if not isinstance(spec, dict):
            dims.append(Dimension(name, "fixed", value=coerce_options({name: spec}, where)[name]))
            continue
        keys = set(spec)
        if keys == {"choices"}:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise InputError(f"{where}: '{raw}.choices' must be a non-empty list")
            for c in choices:
                _option_value(name, c, where)
            if name == "augment":
                from cnncli.data.augment import parse_augment

                for c in choices:
                    if c not in ("none", ""):
                        parse_augment(str(c))
            dims.append(Dimension(name, "choice", choices=list(choices)))
            continue
        unknown = keys - RANGE_KEYS
        if unknown or not {"low", "high"} <= keys:
            bad = sorted(unknown) or sorted({"low", "high"} - keys)
            raise InputError(f"{where}: '{raw}' takes {{low, high[, log, step]}} or {{choices}}; "
                             f"{'unknown' if unknown else 'missing'} '{bad[0]}'")
        low, high = (_option_value(name, spec[k], where) for k in ("low", "high"))
        if not isinstance(low, (int, float)) or isinstance(low, bool):
            raise InputError(f"{where}: '{raw}' is not a numeric option; give it {{choices = [...]}}")
        if low >= high:
            raise InputError(f"{where}: '{raw}' has an inverted or empty range: low {low} >= high {high}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise InputError(f"{where}: '{raw}.log' must be true or false")
        if log and low <= 0:
            raise InputError(f"{where}: '{raw}' with log = true needs low > 0, got {low}")
        kind = "int" if isinstance(low, int) and isinstance(high, int) and hints[name] in (int, int | None) else "float"
        dims.append(Dimension(name, kind, low=low, high=high, log=log, step=spec.get("step")))
    return dims


def read_space(path: str | Path | None) -> list[Dimension]:
    if path is None:
        return parse_space(DEFAULT_SPACE, "the default space")
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--space: {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--space: cannot read {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"--space: {path} is not valid TOML: {e}") from None
    if set(doc) == {"space"} and isinstance(doc["space"], dict):
        doc = doc["space"]
    if not doc:
        raise InputError(f"--space: {path} names no option")
    return parse_space(doc, f"--space {path}")


def suggest(trial, dims: list[Dimension]) -> dict[str, Any]:
    """The trial's options (train's names and types) drawn by Optuna's trial."""
    values = {}
    for d in dims:
        if d.kind == "fixed":
            value = d.value
        elif d.kind == "choice":
            value = trial.suggest_categorical(d.name, d.choices)
        elif d.kind == "int":
            value = trial.suggest_int(d.name, d.low, d.high, log=d.log, step=d.step or 1)
        else:
            value = trial.suggest_float(d.name, float(d.low), float(d.high), log=d.log, step=d.step)
        if d.name == "augment":
            value = [a for a in str(value).split(",") if a and a != "none"]
        values[d.name] = value
    return values
