"""Start-up latency of the CLI, side by side with `python -c "import torch"` on the same machine.

The speed targets: `cnncli --help` and `cnncli models --source hand` well under half a
second (they must not import torch), and `cnncli inspect alexnet` at most 1.6 times as long
as importing torch. Each command runs in a fresh subprocess (what a user pays), alternating
between the commands round by round so that a busy machine slows them alike; the figure is
the median. One JSON line per command on stdout, then one summary line.

    python bench/cli_latency.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CNNCLI = [sys.executable, "-m", "cnncli"]

COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "cnncli --help": CNNCLI + ["--help"],
    "cnncli models --source hand": CNNCLI + ["models", "--source", "hand"],
    "cnncli inspect alexnet": CNNCLI + ["inspect", "alexnet"],
}

# absolute limits in seconds, or a ratio to "import torch"
TARGETS = {
    "cnncli --help": ("seconds", 0.5),
    "cnncli models --source hand": ("seconds", 0.5),
    "cnncli inspect alexnet": ("ratio_to_import_torch", 1.6),
}


def run_once(cmd: list[str]) -> float:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    start = time.perf_counter()
    done = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def machine() -> dict:
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "timm": version("timm"),
        "typer": version("typer"),
        "cnncli": version("cnncli"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (median reported)")
    args = parser.parse_args()

    for cmd in COMMANDS.values():  # warm the file cache and .pyc files; not timed
        run_once(cmd)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, cmd in COMMANDS.items():
            times[name].append(run_once(cmd))

    info = machine()
    torch_median = statistics.median(times["import torch"])
    verdicts = {}
    for name, values in times.items():
        median = statistics.median(values)
        record = {"command": name, "median_s": round(median, 3), "min_s": round(min(values), 3),
                  "max_s": round(max(values), 3), "runs": len(values),
                  "ratio_to_import_torch": round(median / torch_median, 2)}
        if name in TARGETS:
            kind, limit = TARGETS[name]
            value = median if kind == "seconds" else median / torch_median
            record["target"] = f"<= {limit} s" if kind == "seconds" else f"<= {limit}x import torch"
            record["meets_target"] = value <= limit
            verdicts[name] = record["meets_target"]
        record["machine"] = info
        print(json.dumps(record), flush=True)
    print(json.dumps({"summary": "all targets met" if all(verdicts.values()) else "targets missed",
                      "missed": [n for n, ok in verdicts.items() if not ok]}), flush=True)


if __name__ == "__main__":
    main()
