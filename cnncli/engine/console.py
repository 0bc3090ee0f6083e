"""What a training run shows and how it stops: the progress bar, the epoch line, Ctrl-C.

SIGINT/SIGTERM become a flag the loop checks after each step, so the step in flight finishes
and a resumable state is written before the run ends with `TrainingInterrupted`.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from cnncli.errors import CnnError


class TrainingInterrupted(CnnError):
    """SIGINT/SIGTERM: the current step finished and a resumable state was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class SignalCatcher:
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self):
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread (e.g. inside some test runners): no handlers
            self._old = {}
        return self

    def _handle(self, signum, frame):
        if self.signum:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum
        print("\nstopping after this step and saving a resumable state (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)
        return False


def epoch_line(row: dict, epoch: int, total: int) -> str:
    val = f"  val loss {row['val_loss']:.4f}  val top-1 {row['val_top1']:.4f}" if row["val_top1"] is not None else ""
    ips = f"  {row['images_per_second']:.0f} img/s" if row.get("images_per_second") else ""
    return (f"epoch {epoch}/{total} [{row['phase']}]  loss {row['train_loss']:.4f}  "
            f"top-1 {row['train_top1']:.4f}{val}{ips}  {row['seconds']:.1f}s")


class ProgressBar:
    """A rich progress bar on stderr, only on a terminal; quiet otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            from cnncli.output import stderr_console

            self._progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                      TextColumn("{task.completed}/{task.total}"),
                                      TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} "
                                                 "{task.fields[ips]:.0f} img/s"),
                                      TimeRemainingColumn(), console=stderr_console(), transient=True)
            self._progress.__enter__()
        return self

    def start_epoch(self, epoch: int, steps: int, done: int = 0):
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task("train", total=steps, completed=done, epoch=epoch,
                                             loss=0.0, acc=0.0, ips=0.0)

    def advance(self, loss: float, acc: float, ips: float):
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, loss=loss, acc=acc, ips=ips)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False


def is_generated(data: str) -> bool:
    """A dataset made in memory (synthetic:...): no loading phase worth a note."""
    return str(data).split(":")[0] == "synthetic"


class announced:
    """`with announced("scoring the test split"):` a note on stderr once the phase has run for
    `after` seconds (2), so a long phase is never silent and a quick one (or one that fails at once,
    whose one error line is then the only line) prints nothing."""

    def __init__(self, message: str, after: float = 2.0, enabled: bool = True):
        self.message, self.after, self.enabled, self._timer = message, after, enabled, None

    def __enter__(self):
        if self.enabled:
            import threading

            from cnncli import output

            self._timer = threading.Timer(self.after, output.note, args=(f"{self.message}...",))
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc):
        if self._timer is not None:
            self._timer.cancel()
        return False
