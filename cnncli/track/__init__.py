"""Experiment tracking: the loggers a run writes to (`--log csv,tensorboard,mlflow`).

The trainer knows one hook point (hooks.Hooks: run start, step, epoch end, run end); each logger
is a small class behind it. This package imports nothing heavy: tensorboard and mlflow are
imported by their logger when a run asks for it, so a run without `--log mlflow` never pays
mlflow's start-up.
"""

from __future__ import annotations

import importlib.util

from cnncli.errors import InputError, RuntimeFailure

LOGGERS = ("csv", "tensorboard", "mlflow")
# the package each logger needs, and the extra that installs it
NEEDS = {"tensorboard": ("tensorboard", "track"), "mlflow": ("mlflow", "track")}


def parse_log(text: str | list | None, check_installed: bool = True) -> list[str]:
    """'csv,tensorboard' -> ['csv', 'tensorboard']; 'none' or '' -> []. Unknown names: exit 2;
    a logger whose package is missing: one line naming the extra, exit 1."""
    items = text if isinstance(text, list) else str(text or "").split(",")
    names = []
    for raw in items:
        name = str(raw).strip().lower()
        if not name or name == "none":
            continue
        if name not in LOGGERS:
            raise InputError(f"--log: unknown logger '{raw}'; choose from {', '.join(LOGGERS)} (or none)")
        if name not in names:
            names.append(name)
    if check_installed:
        for name in names:
            if name in NEEDS:
                package, extra = NEEDS[name]
                if importlib.util.find_spec(package) is None:
                    raise RuntimeFailure(f"--log {name} needs the '{package}' package: "
                                         f"pip install 'cnncli[{extra}]'")
    return names


def build_loggers(names: list[str]) -> list:
    """The logger objects for these names (their heavy imports wait for on_run_start)."""
    loggers = []
    for name in names:
        if name == "csv":
            from cnncli.track.csv import CsvLogger

            loggers.append(CsvLogger())
        elif name == "tensorboard":
            from cnncli.track.tensorboard import TensorBoardLogger

            loggers.append(TensorBoardLogger())
        elif name == "mlflow":
            from cnncli.track.mlflow import MlflowLogger

            loggers.append(MlflowLogger())
    return loggers


__all__ = ["LOGGERS", "build_loggers", "parse_log"]
