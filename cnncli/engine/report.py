"""The outcome of a training run, and the words and document that report it.

`train` and `finetune` end with the same line (finetune's names its stages), and their `--json`
document is `run_summary`; the CLI prints what these return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnncli.engine.evaluate import EvalResult


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path
    epochs: int
    best_val_top1: float | None
    test: EvalResult | None
    seconds: float
    images_per_second: float
    history: list[dict] = field(default_factory=list)
    stages: list[dict] | None = None  # finetune's stages, as its run records them
    weights_source: dict | None = None  # where the starting weights came from, if not random
    # what the recipe features add: "precision", and with --ema "raw_test_top1" (the trained
    # weights themselves; `test` is then the moving average's)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, **{
            "run_dir": str(self.run_dir),
            "checkpoint": str(self.checkpoint),
            "epochs": self.epochs,
            "best_val_top1": self.best_val_top1,
            "test_top1": self.test.top1 if self.test else None,
            "test_top5": self.test.top5 if self.test else None,
            "test_loss": self.test.loss if self.test else None,
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
        }}


def run_summary(result: RunResult) -> dict[str, Any]:
    """The JSON document of a finished run; a fine-tuning run's adds its weights' source and stages."""
    doc = result.to_dict()
    if result.stages is not None:
        doc["weights_source"] = result.weights_source
        doc["stages"] = result.stages
    return doc


def end_of_run_line(result: RunResult) -> str:
    """One line: the checkpoint, the epochs (per stage), the best validation and test figures, time."""
    from cnncli.output import plural

    test = (f"test top-1 {result.test.top1:.4f}, top-5 {result.test.top5:.4f}" if result.test is not None
            else "no test split")
    best = f"best val top-1 {result.best_val_top1:.4f}, " if result.best_val_top1 is not None else ""
    stages = " + ".join(plural(s["epochs"], f"{s['name']} epoch") for s in result.stages or [])
    speed = f" ({result.images_per_second:.0f} train img/s)" if result.images_per_second else ""
    if result.extra.get("raw_test_top1") is not None:
        test += f" (EMA weights; the trained weights: {result.extra['raw_test_top1']:.4f})"
    return (f"{result.checkpoint}: {stages or plural(result.epochs, 'epoch')}, {best}{test}, "
            f"{result.seconds:.1f}s{speed}")
