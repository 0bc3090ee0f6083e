"""What `--resume RUN` may change: the resume policy.

A resumed run continues what its training state recorded (the `recipe` of
train_state.safetensors; config.toml before the first epoch ended). A flag, or a key of a
`--recipe` given with `--resume`, whose value differs from the recorded one is refused in one
line that names it, except the few meant to change between sittings: a longer `--epochs`,
`--device`, `--threads` and `--workers`. Those are applied, written back to config.toml and
recorded in the run's `resumes` list (one entry per resume: after which epoch, on which
device, what changed).

config.toml is the run's own record: it is compared with the training state before anything
else, and a hand edit is refused (the flags above are the way to change a resumed run).
A run trained from a TOML model file resumes only with that file as its checkpoints recorded it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from pathlib import Path
from typing import Any

from cnncli.errors import InputError

# the options a resume may change (besides a longer --epochs), and the wording of the rule
CHANGEABLE = ("device", "threads", "workers")
RULE = "a resumed run keeps its settings; only a longer --epochs, --device, --threads or --workers may change"


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(none)"
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, str)) and isinstance(b, (int, str)):  # --unfreeze "2" vs 2
        return str(a).strip().lower() == str(b).strip().lower()
    return a == b


def _known(values: dict[str, Any], cls) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def normalized(values: dict[str, Any], cls) -> dict[str, Any]:
    """Every option's value as it takes effect: defaults filled in, lr and weight decay resolved."""
    known = _known(values, cls)
    if isinstance(known.get("amp"), bool):  # earlier runs recorded amp = true / false
        known["amp"] = "auto" if known["amp"] else "off"
    cfg = cls(**{k: v for k, v in known.items() if v is not None})
    return resolved_recipe(cfg)


def resolved_recipe(cfg) -> dict[str, Any]:
    """The options of a config as a run records them: lr and weight decay as resolved, not null."""
    values = cfg.to_dict()
    values["lr"] = cfg.lr if isinstance(cfg.lr, str) else cfg.resolved_lr()  # "auto": not searched yet
    values["weight_decay"] = cfg.resolved_weight_decay()
    return values


def recorded_options(run_dir: Path, cls) -> dict[str, Any]:
    """The options the run recorded: its training state's recipe, else its config.toml."""
    from cnncli.engine.config import coerce_options, read_recipe

    state = run_dir / "train_state.safetensors"
    if state.exists():
        from cnncli.checkpoint import read_meta

        recipe = read_meta(state).get("recipe")
        if isinstance(recipe, dict):
            return coerce_options(_known(recipe, cls), f"{state} (its recipe)", cls)
    config = run_dir / "config.toml"
    if config.exists():
        return read_recipe(config, cls)
    raise InputError(f"{run_dir} is not a cnncli run (no config.toml or train_state.safetensors in it)")


def check_config_unchanged(run_dir: Path, recorded: dict[str, Any], cls) -> None:
    """config.toml must say what the training state recorded: a hand edit is refused in one line."""
    from cnncli.engine.config import read_recipe

    config, state = run_dir / "config.toml", run_dir / "train_state.safetensors"
    if not config.exists() or not state.exists():
        return
    on_file, kept = normalized(read_recipe(config, cls), cls), normalized(recorded, cls)
    for key, value in on_file.items():
        if key != "out" and not _same(value, kept.get(key)):
            raise InputError(
                f"{config} was edited after the run wrote it ({key} = {_shown(value)} there, the run "
                f"recorded {_shown(kept.get(key))}); put it back: {RULE}, given as flags")


def resumed_options(run_dir: Path, given: dict[str, Any], recipe: str | None, cls) -> dict[str, Any]:
    """The options of `--resume run_dir` with `given` flags (and `--recipe`): the recorded ones,
    with the allowed changes applied; anything else that differs is refused (InputError)."""
    from cnncli.engine.config import read_recipe

    recorded = recorded_options(run_dir, cls)
    check_config_unchanged(run_dir, recorded, cls)
    requested: dict[str, tuple[Any, str]] = {}
    if recipe:
        requested.update({k: (v, f"recipe {recipe}: {k} = {_shown(v)}") for k, v in read_recipe(recipe, cls).items()})
    requested.update({k: (v, f"{_flag(k)} {_shown(v)}") for k, v in given.items() if v is not None})
    if isinstance(requested.get("lr", (None,))[0], str):  # --lr auto again: the rate its search chose
        if recorded.get("lr_suggestion") is None:
            raise InputError(f"{requested['lr'][1]} differs from the run's {_shown(recorded.get('lr'))} "
                             f"({run_dir}); {RULE} (start a new run to change it)")
        del requested["lr"]
        from cnncli import output

        output.note(f"--lr auto: reusing the learning rate {recorded['lr']:.3g} this run recorded (no new search)")
    before = normalized(recorded, cls)
    after = normalized({**recorded, **{k: v for k, (v, _) in requested.items()}}, cls)
    changes: dict[str, Any] = {}
    for key, (value, said) in requested.items():
        old, new = before.get(key), after.get(key)
        if _same(old, new):
            continue
        if key == "out" and Path(str(value)).resolve() == run_dir.resolve():
            continue
        if key == "epochs" and isinstance(new, int) and isinstance(old, int):
            if new < old:
                raise InputError(f"{said} is shorter than the run's {old} epochs; a resumed run may only "
                                 "train longer (or start a new run)")
            changes[key] = value
        elif key in CHANGEABLE:
            changes[key] = value
        else:
            raise InputError(f"{said} differs from the run's {_shown(old)} ({run_dir}); {RULE} "
                             "(start a new run to change it)")
    return {**recorded, **changes}


def check_model_file_unchanged(recorded: Any, current: Any, state: Path) -> None:
    """A run trained from a TOML model file resumes only with that file as it was: the network is
    built from the file's path again, so an edit (a dropout rate, an activation) that keeps the
    weights' shapes would change the resumed run silently. Refused in one line naming the first
    difference; the description is free to change. Runs without a model file pass."""
    old = recorded.get("model_file") if isinstance(recorded, dict) else None
    new = current.get("model_file") if isinstance(current, dict) else None
    if not isinstance(old, dict) or not isinstance(new, dict):
        return

    def parts(doc: dict) -> dict[str, Any]:
        head = {k: v for k, v in (doc.get("model") or {}).items() if k != "description"}
        layers = {f"layer '{layer.get('name', i)}'": layer for i, layer in enumerate(doc.get("layers") or [])}
        rest = {f"[{k}]": v for k, v in doc.items() if k not in ("model", "layers")}
        return {"[model]": head, **layers, **rest}

    before, now = parts(old), parts(new)
    for key in (*before, *(k for k in now if k not in before)):
        if not _same(before.get(key), now.get(key)):
            what = "is new" if key not in before else "is gone" if key not in now else "differs"
            raise InputError(f"{current.get('name')} changed since the run started ({key} {what}); put the "
                             f"file back as {state} recorded it, or start a new run (without --resume)")


def resume_entry(recorded: dict[str, Any] | None, cfg, device, after_epoch: int) -> dict[str, Any]:
    """The `resumes` entry of one resume: when, on which device, what changed from the record."""
    entry: dict[str, Any] = {"after_epoch": int(after_epoch), "device": str(device),
                             "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    if recorded:
        before, now = normalized(recorded, type(cfg)), resolved_recipe(cfg)
        changed = {k: [before.get(k), now[k]] for k in ("epochs", *CHANGEABLE)
                   if k in now and not _same(before.get(k), now[k])}
        if changed:
            entry["changed"] = changed
    return entry


def reopen_finished(progress, phases) -> bool:
    """A finished run resumed with a longer --epochs: point `progress` back into its last phase.

    The epochs already run in that phase are counted from the history's rows. Returns whether
    the run was reopened (False: finished for good, or not finished at all)."""
    if not phases or progress.phase < len(phases) or progress.stopped_early:
        return False
    last = phases[-1]
    done = sum(1 for row in progress.history if row.get("phase") == last.name)
    if last.epochs <= done:
        return False
    progress.phase, progress.epoch_in_phase, progress.step = len(phases) - 1, done, 0
    return True


def check_progress(progress, phases, steps_per_epoch: int, source) -> None:
    """A training state's position must lie inside this run's phases and epochs (one line if not).

    Its counts are already known to be non-negative integers (Progress.from_state); here they
    are checked against the run: a phase past the last, an epoch past its phase's length or a
    step past the epoch's would silently skip training or run past the schedule's end."""
    def bad(what: str):
        raise InputError(f"{source}: corrupt training state: {what}; start a new run (without --resume)")

    if progress.phase > len(phases):
        bad(f"phase {progress.phase} of a run with {len(phases)}")
    if progress.phase < len(phases):
        phase = phases[progress.phase]
        if progress.epoch_in_phase >= max(1, phase.epochs):
            bad(f"epoch_in_phase {progress.epoch_in_phase} of a {phase.epochs}-epoch phase '{phase.name}'")
        if progress.step >= steps_per_epoch:
            bad(f"step {progress.step} of an epoch of {steps_per_epoch} steps")
    if progress.epoch_in_phase > progress.epoch:
        bad(f"epoch_in_phase {progress.epoch_in_phase} after {progress.epoch} epochs in all")
