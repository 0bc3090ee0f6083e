"""The trainer's one hook point: the list of loggers/callbacks a run calls.

The trainer calls `start_hooks` once the run folder exists, then `step`, `epoch_end` and
`run_end`; a run that ends by an exception (a pruned tuning trial, Ctrl-C, a crash) closes its
loggers through `closed_on_error`. Only the main process of a distributed run logs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from cnncli.errors import CnnError
from cnncli.track.base import Logger

# what a run's loggers may upload or show, when the run has it
ARTIFACTS = ("model.safetensors", "config.toml", "eval.json", "metrics.jsonl", "results.csv",
             "curves.png", "confusion.png")


class Hooks:
    def __init__(self, loggers: list[Logger] | None = None):
        self.loggers = list(loggers or [])
        self.wants_steps = any(getattr(lg, "wants_steps", False) for lg in self.loggers)
        self._closed = False

    def start(self, run: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.on_run_start(run)

    def step(self, step: int, loss, optimizer, images_per_second: float) -> None:
        if not self.wants_steps:
            return
        scalars = {"loss": float(loss.item()), "lr": float(optimizer.param_groups[0]["lr"]),
                   "images_per_second": float(images_per_second)}
        for lg in self.loggers:
            if getattr(lg, "wants_steps", False):
                lg.on_step(step, scalars)

    def epoch_end(self, epoch: int, row: dict[str, Any], val=None, optimizer=None) -> None:
        if not self.loggers:
            return
        record = {**row, "val_top5": getattr(val, "top5", None),
                  "lrs": [g["lr"] for g in optimizer.param_groups] if optimizer is not None else [row.get("lr")]}
        for lg in self.loggers:
            lg.on_epoch_end(epoch, record)

    def run_end(self, doc: dict[str, Any], run_dir: Path) -> None:
        if not self.loggers:
            return
        _draw_confusion(run_dir)
        files = {name: run_dir / name for name in ARTIFACTS if (run_dir / name).is_file()}
        try:
            for lg in self.loggers:
                lg.on_run_end(doc, files)
        finally:
            self.close()

    def close(self, failed: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        for lg in self.loggers:
            lg.close(failed=failed)

    @contextlib.contextmanager
    def closed_on_error(self):
        try:
            yield self
        except BaseException:
            self.close(failed=True)
            raise


def start_hooks(trainer, progress, callbacks: list | None = None) -> Hooks:
    """The run's hooks: the loggers of `--log` plus the caller's callbacks, started."""
    if not trainer.dist.is_main:
        return Hooks([])
    from cnncli.checkpoint import versions
    from cnncli.track import build_loggers, parse_log

    cfg = trainer.cfg
    hooks = Hooks(build_loggers(parse_log(cfg.log)) + list(callbacks or []))
    if hooks.loggers:
        hooks.start({"run_dir": Path(trainer.run_dir), "name": Path(trainer.run_dir).name,
                     "recipe": cfg.to_dict(), "model": cfg.model, "dataset": cfg.data,
                     "device": str(trainer.device), "versions": versions(),
                     "resumed": trainer.resume_dir is not None, "history": list(progress.history),
                     "steps_per_epoch": trainer.steps_per_epoch,
                     "total_epochs": sum(p.epochs for p in trainer.phases)})
    return hooks


def _draw_confusion(run_dir: Path) -> None:
    """confusion.png from the test split's eval.json, for the loggers that show pictures."""
    eval_json = run_dir / "eval.json"
    if not eval_json.is_file():
        return
    import json

    try:
        doc = json.loads(eval_json.read_text(encoding="utf-8"))
        from cnncli.plots import plot_confusion

        plot_confusion(doc["confusion"], doc.get("class_names"), run_dir / "confusion.png", normalize=True,
                       title="confusion matrix on the test split (row-normalized)")
    except (ImportError, KeyError, ValueError, OSError, CnnError):  # a picture is a nicety; the numbers stay
        pass
