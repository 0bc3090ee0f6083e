"""TensorBoard event files in the run folder (torch.utils.tensorboard): `tensorboard --logdir runs`
shows every run. Scalars per step (step/loss, step/lr, step/images_per_second) and per epoch
(train/loss, train/top1, val/loss, val/top1, val/top5, lr, images_per_second), the hyperparameters
with the run's final figures (the HParams tab), and the curves and confusion pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnncli.track.base import Logger

EPOCH_SCALARS = {"train_loss": "train/loss", "train_top1": "train/top1", "val_loss": "val/loss",
                 "val_top1": "val/top1", "val_top5": "val/top5", "lr": "lr",
                 "images_per_second": "images_per_second"}
PICTURES = ("curves.png", "confusion.png")


def _hparam_value(value: Any):
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class TensorBoardLogger(Logger):
    wants_steps = True

    def on_run_start(self, run: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.recipe = run.get("recipe") or {}
        first_step = len(run.get("history") or []) * int(run.get("steps_per_epoch") or 0)
        # a resumed run drops what an interrupted writer logged past the resumed point
        self.writer = SummaryWriter(log_dir=str(run["run_dir"]), purge_step=first_step if run.get("resumed") else None)
        self.writer.add_text("run", f"{run.get('model')} on {run.get('dataset')}, device {run.get('device')}, "
                             f"versions {run.get('versions')}", 0)

    def on_step(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(f"step/{key}", value, step)

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        for key, tag in EPOCH_SCALARS.items():
            value = record.get(key)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(tag, value, epoch)
        for i, lr in enumerate(record.get("lrs") or []):
            if i and isinstance(lr, (int, float)):
                self.writer.add_scalar(f"lr/pg{i}", lr, epoch)
        self.writer.flush()

    def on_run_end(self, doc: dict[str, Any], files: dict[str, Path]) -> None:
        from torch.utils.tensorboard.summary import hparams

        final = {f"hparam/{k}": float(v) for k, v in doc.items()
                 if k in ("best_val_top1", "test_top1", "test_top5", "test_loss") and isinstance(v, (int, float))}
        hp = {k: _hparam_value(v) for k, v in self.recipe.items() if v is not None}
        epoch = int(doc.get("epochs") or 0)
        if final:
            writer = self.writer._get_file_writer()
            for summary in hparams(hp, final):  # in this folder: one run, not a sub-run per call
                writer.add_summary(summary)
            for key, value in final.items():
                self.writer.add_scalar(key, value, epoch)
        for name in PICTURES:
            if name in files:
                from torchvision.io import ImageReadMode, read_image

                self.writer.add_image(name.removesuffix(".png"), read_image(str(files[name]), ImageReadMode.RGB),
                                      epoch, dataformats="CHW")

    def close(self, failed: bool = False) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()
            self.writer = None
