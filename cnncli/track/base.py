"""What a logger (or any training callback) implements; every method is optional."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Logger:
    """A training callback. `run` (on_run_start) is a dict: run_dir, name, recipe (the resolved
    options), model, dataset, device, versions, resumed, history (the epochs a resumed run had),
    total_epochs. `record` (on_epoch_end) is the epoch's metrics.jsonl row plus val_top5 and lrs
    (one per parameter group). `files` (on_run_end) maps artifact names to the run's files."""

    wants_steps = False  # on_step costs a loss.item() per step: only asked for when wanted

    def on_run_start(self, run: dict[str, Any]) -> None:
        pass

    def on_step(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        pass

    def on_run_end(self, doc: dict[str, Any], files: dict[str, Path]) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        """The run ended (failed: it ended without on_run_end); release what is held."""
