"""`cnncli predict` start-up on exported files, side by side with the checkpoint and `import torch`.

The target: `predict` on an ONNX or OpenVINO file answers in under 1 s, since it imports no
torch (decoding and preprocessing in numpy/Pillow). The checkpoint and `import torch` rows
are the baseline a user has without the exported file. A lenet5 checkpoint (random weights:
start-up does not depend on them) is exported once; each command then runs in a fresh
subprocess on one PNG, commands alternating round by round; the figure is the median.

    python bench/predict_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import emit, machine  # noqa: E402

TARGET_S = 1.0


def run_once(cmd: list[str]) -> float:
    env = dict(os.environ, NO_COLOR="1")
    start = time.perf_counter()
    done = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    import numpy as np
    import torch
    from PIL import Image

    from cnncli.checkpoint import save_checkpoint
    from cnncli.export import export_checkpoint
    from cnncli.models.registry import build_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    machine("predict_startup")
    with tempfile.TemporaryDirectory(prefix="cnncli-startup-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        built = build_model("lenet5", num_classes=10)
        model = built.module
        meta = {"kind": "model", "model": built.spec, "num_classes": 10,
                "class_names": [str(i) for i in range(10)], "input_size": [1, 32, 32],
                "mean": [0.29], "std": [0.35], "dataset": "fashion-mnist-mini"}
        ckpt = save_checkpoint(tmp / "model.safetensors", model.state_dict(), meta)
        export_checkpoint(ckpt, "onnx", exporter="torchscript")
        export_checkpoint(ckpt, "openvino", exporter="torchscript")
        image = tmp / "shirt.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(image)
        cli = [sys.executable, "-m", "cnncli", "predict"]
        commands = {
            "import torch": [sys.executable, "-c", "import torch"],
            "predict model.safetensors": cli + [str(ckpt), str(image)],
            "predict model.onnx": cli + [str(tmp / "model.onnx"), str(image)],
            "predict model.xml (OpenVINO)": cli + [str(tmp / "model.xml"), str(image)],
        }
        for cmd in commands.values():  # warm the file cache; not timed
            run_once(cmd)
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                times[name].append(run_once(cmd))
    for name, values in times.items():
        median = statistics.median(values)
        record = {"bench": "predict_startup", "command": name, "median_s": round(median, 3),
                  "min_s": round(min(values), 3), "max_s": round(max(values), 3), "runs": len(values)}
        if name.startswith("predict model.onnx") or name.startswith("predict model.xml"):
            record.update(target=f"< {TARGET_S} s", meets_target=median < TARGET_S)
        emit(**record)


if __name__ == "__main__":
    main()
