"""Where a run is: the resumable part of a training run, as one value.

`Progress` always points at what comes next (phase, epoch within it, step within that), so the
value saved after an epoch or at an interrupted step is exactly what `--resume` continues from.
Its JSON form is the `train_state` table of train_state.safetensors, key for key the format
earlier versions wrote, so their states still resume; a state that does not fit is refused in
one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cnncli.errors import InputError


@dataclass
class Progress:
    phase: int = 0  # the phase to run next
    epoch_in_phase: int = 0  # its epoch to run next
    step: int = 0  # the step of that epoch to run next (> 0 only after an interruption)
    epoch: int = 0  # epochs finished, all phases together
    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    best_val_top1: float | None = None
    bad_epochs: int = 0  # epochs since the validation top-1 last improved
    train_seconds: float = 0.0
    train_images: int = 0
    stopped_early: bool = False
    seconds: float = 0.0  # wall-clock time of the run so far
    partial: dict[str, Any] | None = None  # the interrupted epoch's metrics so far
    optimizer_fresh: bool = False  # the next phase builds a new optimizer: none is saved

    def advance_epoch(self, phase_epochs: int) -> None:
        """An epoch ended: point at the next one (the next phase's first after the last)."""
        self.epoch += 1
        self.step, self.partial = 0, None
        if self.epoch_in_phase + 1 == phase_epochs:
            self.phase, self.epoch_in_phase, self.optimizer_fresh = self.phase + 1, 0, True
        else:
            self.epoch_in_phase, self.optimizer_fresh = self.epoch_in_phase + 1, False

    def to_state(self) -> dict[str, Any]:
        state = {"phase": self.phase, "epoch_in_phase": self.epoch_in_phase, "step": self.step,
                 "epoch": self.epoch, "history": self.history, "best_val_top1": self.best_val_top1,
                 "bad_epochs": self.bad_epochs, "train_seconds": self.train_seconds,
                 "train_images": self.train_images, "stopped_early": self.stopped_early,
                 "seconds": self.seconds}
        if self.partial is not None:
            state["partial"] = dict(self.partial)
        if self.optimizer_fresh:
            state["optimizer_fresh"] = True
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any], source) -> Progress:
        """The progress of a train_state file's `train_state` table, every value checked."""
        def bad(key: str, what: str):
            raise InputError(f"{source}: corrupt training state: '{key}' must be {what}; "
                             "start a new run (without --resume)")

        def count(key: str, default: int = 0) -> int:
            value = state.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10**12:
                bad(key, "a count from 0")
            return value

        def seconds(key: str) -> float:
            value = state.get(key, 0.0)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                bad(key, "a number of seconds")
            return float(value)

        history = state.get("history", [])
        if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
            bad("history", "a list of epoch rows")
        best = state.get("best_val_top1")
        if best is not None and (not isinstance(best, (int, float)) or isinstance(best, bool)
                                 or not math.isfinite(best)):
            bad("best_val_top1", "a number or null")
        partial = state.get("partial")
        if partial is not None and not (
                isinstance(partial, dict) and isinstance(partial.get("loss_sum"), (int, float))
                and all(isinstance(partial.get(k), int) and partial[k] >= 0 for k in ("correct", "seen"))):
            bad("partial", "the interrupted epoch's loss_sum, correct and seen")
        for key in ("stopped_early", "optimizer_fresh"):
            if not isinstance(state.get(key, False), bool):
                bad(key, "true or false")
        return cls(phase=count("phase"), epoch_in_phase=count("epoch_in_phase"), step=count("step"),
                   epoch=count("epoch"), history=[dict(r) for r in history],
                   best_val_top1=None if best is None else float(best), bad_epochs=count("bad_epochs"),
                   train_seconds=seconds("train_seconds"), train_images=count("train_images"),
                   stopped_early=state.get("stopped_early", False), seconds=seconds("seconds"),
                   partial=dict(partial) if partial is not None else None,
                   optimizer_fresh=state.get("optimizer_fresh", False))
