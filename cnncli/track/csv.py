"""results.csv beside metrics.jsonl: one row per epoch, in the columns of Ultralytics' results.csv
for classification (epoch, time, train/loss, metrics/accuracy_top1, metrics/accuracy_top5,
val/loss, lr/pg0..pg2), then cnncli's own (train/accuracy_top1, phase, images_per_second).

The file is rewritten whole (atomically) after every epoch, so a resumed run's file holds every
epoch once."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from cnncli.fileio import atomic_write_text
from cnncli.track.base import Logger

COLUMNS = ("epoch", "time", "train/loss", "metrics/accuracy_top1", "metrics/accuracy_top5", "val/loss",
           "lr/pg0", "lr/pg1", "lr/pg2", "train/accuracy_top1", "phase", "images_per_second")


def csv_row(record: dict[str, Any], elapsed: float) -> list:
    lrs = list(record.get("lrs") or [record.get("lr")])[:3]
    lrs += [None] * (3 - len(lrs))
    return [record.get("epoch"), round(elapsed, 3), record.get("train_loss"), record.get("val_top1"),
            record.get("val_top5"), record.get("val_loss"), *lrs, record.get("train_top1"),
            record.get("phase"), record.get("images_per_second")]


class CsvLogger(Logger):
    def on_run_start(self, run: dict[str, Any]) -> None:
        self.path = Path(run["run_dir"]) / "results.csv"
        self.rows, self.elapsed = [], 0.0
        for record in run.get("history") or []:  # a resumed run: its earlier epochs first
            self._add(record)

    def _add(self, record: dict[str, Any]) -> None:
        self.elapsed += float(record.get("seconds") or 0.0)
        self.rows.append(csv_row(record, self.elapsed))

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        self._add(record)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([["" if v is None else v for v in row] for row in self.rows])
        atomic_write_text(self.path, buf.getvalue())
