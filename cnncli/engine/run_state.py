"""A run's files between epochs: the resumable state written, the history drawn, a resume read.

Functions of the `Trainer` (passed as `self`, as the methods they were), so that the training
loop (engine/trainer.py) holds only the loop.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cnncli import output
from cnncli.checkpoint import load_state_strict
from cnncli.engine.progress import Progress
from cnncli.engine.resume_policy import (
    check_model_file_unchanged,
    check_progress,
    reopen_finished,
    resume_entry,
)
from cnncli.engine.state import load_train_state, save_train_state
from cnncli.fileio import atomic_write_text, remove_stale_temporaries


def save_state(self, path: Path, optimizer, progress: Progress) -> None:
    """The resumable state: weights, optimizer (or none where the next phase starts its own), progress."""
    state = progress.to_state()
    if progress.optimizer_fresh and progress.phase < len(self.phases):
        # the next phase starts a new optimizer; nothing to carry over
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    elif progress.optimizer_fresh:  # the last phase ended: kept, for a resume with a longer --epochs
        state["optimizer_kept"] = True
    save_train_state(path, self.model, optimizer, state,
                     self.checkpoint_meta(progress.epoch, {"val_top1": progress.best_val_top1}),
                     extra_tensors=self.ema.state_tensors() if self.ema is not None else None)


def write_history(run_dir: Path, history: list[dict], title: str) -> None:
    """metrics.jsonl and curves.png of the epochs so far (whole files, written atomically)."""
    from cnncli.output import to_json

    atomic_write_text(run_dir / "metrics.jsonl", "".join(to_json(r, indent=None) + "\n" for r in history))
    try:
        from cnncli.plots import plot_curves

        plot_curves(history, run_dir / "curves.png", title=title)
    except ImportError:  # matplotlib missing: the numbers are in metrics.jsonl
        pass


def load_resume(self, run_dir: Path) -> Progress | None:
    """Where `--resume run_dir` continues: weights, EMA and optimizer loaded into the trainer
    (`self`), its progress checked against the phases, the resume recorded; None: from the start."""
    if self.dist.is_main:
        remove_stale_temporaries(run_dir)  # what writes killed midway left behind
    path = run_dir / "train_state.safetensors"
    if not path.exists():
        # stopped (even killed) before its first epoch ended: continue from the start
        if self.dist.is_main:
            output.note(f"{run_dir} stopped before its first epoch ended; starting it again")
        return None
    extras: dict = {}
    model_sd, optim_sd, doc = load_train_state(path, extras)
    check_model_file_unchanged(doc.get("model"), self.model_spec, path)  # before anything is loaded
    if doc.get("lr_find") and "lr_find" not in self.extra_meta:  # --lr auto's search, kept
        self.extra_meta["lr_find"] = doc.get("lr_find")
    load_state_strict(self.model, model_sd, path)
    self.model.to(self.device)
    if self.ema is not None:
        self.ema.load_tensors(extras, path)
    progress = Progress.from_state(doc["train_state"], path)
    if getattr(self, "skips", None) is not None:  # --skip-bad-images: the drops before this session
        self.skips.resume_from(doc.get("skipped_images"))
        self.extra_meta.update({"skipped_images": self.skips.record} if self.skips.record else {})
    check_progress(progress, self.phases, self.steps_per_epoch, path)
    if not progress.optimizer_fresh:
        self._optimizer_state = optim_sd
    # the resume policy (engine/resume_policy.py): what changed is recorded, a longer run reopened
    recorded = doc.get("recipe")
    self.extra_meta["resumes"] = [*(doc.get("resumes") or []),
                                  resume_entry(recorded, self.cfg, self.device, progress.epoch)]
    self._config_stale = "changed" in self.extra_meta["resumes"][-1]
    if reopen_finished(progress, self.phases):
        kept = bool(doc["train_state"].get("optimizer_kept"))
        progress.optimizer_fresh = not kept
        self._optimizer_state = optim_sd if kept else None
        if self.dist.is_main:
            output.note(f"{run_dir}: training longer, to {self.cfg.epochs} epochs"
                        + ("" if kept else " (with a new optimizer: this state did not keep its own)"))
    if progress.phase >= len(self.phases) or progress.stopped_early:
        if self.dist.is_main:
            output.note(f"{run_dir}: training had already finished; evaluating its best checkpoint")
    elif self.dist.is_main:
        output.note(f"resuming {run_dir} after epoch {progress.epoch}"
                    + (f", step {progress.step}" if progress.step else ""))
    return progress
