"""int8 ONNX against fp32 ONNX on this CPU: images/s at batch 1 and 32, and the top-1 change.

The int8 file is what `cnncli export --int8` writes (onnxruntime static quantization, QDQ,
per-channel int8 weights, uint8 activations, minmax ranges from 256 training images); the
baseline is the fp32 ONNX file `cnncli export` writes, run by the same onnxruntime with the
same threads on the same batch, the way a user would deploy it. Rounds alternate the two
files so that a busy machine slows both alike; each figure is the median round.

- typical_cnn is trained briefly (the full Fashion-MNIST when it is on the machine, else the
  embedded subset) and both files are scored on the whole test set of that data;
- timm/resnet18 has random weights (speed does not depend on their values) at 3x224x224,
  calibrated on synthetic images; its "top-1 change" is the share of test inputs on which
  int8 and fp32 disagree about the top class, since there is no accuracy to lose.

The CPU's flags (avx2 / avx512f / avx512_vnni / amx) are printed beside the figures: int8 is
fast only where the CPU has int8 dot-product instructions (VNNI, AMX).

    python bench/int8_vs_fp32.py [--models typical_cnn,timm/resnet18] [--epochs 1] [--max-samples 10000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import emit, machine  # noqa: E402

BATCHES = (1, 32)


def timed(session, x, seconds: float) -> float:
    """Median seconds per call over a round of about `seconds`."""
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def images_per_second(sessions: dict, x, rounds: int, seconds: float) -> dict[str, float]:
    per_round: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for kind, s in sessions.items():
            per_round[kind].append(len(x) / timed(s, x, seconds))
    return {k: statistics.median(v) for k, v in per_round.items()}


def predictions(session, x, batch: int = 256):
    import numpy as np

    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0].argmax(axis=1)
                           for i in range(0, len(x), batch)])


def trained_typical_cnn(tmp: Path, epochs: int, max_samples: int):
    from cnncli.data.registry import find_dataset
    from cnncli.engine.config import TrainConfig
    from cnncli.engine.trainer import Trainer

    data = "fashion-mnist" if find_dataset("fashion-mnist") else "fashion-mnist-mini"
    cfg = TrainConfig(model="typical_cnn", data=data, epochs=epochs, max_samples=max_samples,
                      out=str(tmp / "typical_cnn"), batch_size=128)
    result = Trainer(cfg, quiet=True).fit()
    return result.checkpoint, data


def bench_model(name: str, args, tmp: Path, flags: list[str]) -> None:
    import numpy as np
    import torch

    from cnncli.checkpoint import load_model, save_checkpoint
    from cnncli.deploy.int8 import load_gate_data, prepared, quantize_onnx, sample_images
    from cnncli.export import onnx_bytes, onnx_session, synthetic_images
    from cnncli.models.registry import build_model

    if name == "typical_cnn":
        ckpt, data = trained_typical_cnn(tmp, args.epochs, args.max_samples)
        model, meta = load_model(ckpt)
        splits = load_gate_data(meta)
        calib = prepared(sample_images(splits.train.images, 256), meta)
        test_x, test_y = prepared(splits.test.images, meta), splits.test.labels.numpy()
        weights = f"trained {args.epochs} epoch(s) on {min(args.max_samples, len(splits.train))} {data} images"
    else:
        torch.manual_seed(0)
        built = build_model(name)
        model, info = built.module.eval(), built.info
        meta = {"kind": "model", "model": dict(built.spec), "num_classes": info.num_classes,
                "class_names": [str(i) for i in range(info.num_classes)], "input_size": list(info.input_size),
                "mean": list(info.mean), "std": list(info.std), "dataset": None}
        save_checkpoint(tmp / "r.safetensors", model.state_dict(), meta)
        c, h, w = info.input_size
        calib = prepared(synthetic_images(64, c, h, w, seed=0), meta)
        test_x, test_y = prepared(synthetic_images(args.random_images, c, h, w, seed=1), meta), None
        weights = "random (speed only)"
    c, h, w = (int(v) for v in meta["input_size"])
    fp32, _ = onnx_bytes(model, torch.randn(2, c, h, w), meta, exporter="torchscript")
    int8 = quantize_onnx(fp32, calib)
    sessions = {"fp32": onnx_session(fp32, threads=args.threads, cpu_only=True),
                "int8": onnx_session(int8, threads=args.threads, cpu_only=True)}
    p32, p8 = predictions(sessions["fp32"], test_x), predictions(sessions["int8"], test_x)
    if test_y is not None:
        top1 = {"fp32": float((p32 == test_y).mean()), "int8": float((p8 == test_y).mean())}
        accuracy = {"top1_fp32": round(top1["fp32"], 4), "top1_int8": round(top1["int8"], 4),
                    "top1_change_points": round((top1["int8"] - top1["fp32"]) * 100, 2),
                    "test_images": len(test_x)}
    else:
        accuracy = {"top1_disagreement_percent": round(float((p32 != p8).mean()) * 100, 2),
                    "test_images": len(test_x)}
    for b in BATCHES:
        x = np.ascontiguousarray(np.concatenate([test_x] * (-(-b // len(test_x))))[:b])
        ips = images_per_second(sessions, x, args.rounds, args.seconds)
        emit(bench="int8_vs_fp32", model=name, weights=weights, batch=b, threads=args.threads,
             fp32_images_per_s=round(ips["fp32"], 1), int8_images_per_s=round(ips["int8"], 1),
             speedup=round(ips["int8"] / ips["fp32"], 3), fp32_bytes=len(fp32), int8_bytes=len(int8),
             cpu_flags=flags, **accuracy)


def main() -> None:
    import torch

    from cnncli.deploy.int8 import cpu_flags

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="typical_cnn,timm/resnet18")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-samples", type=int, default=10000)
    parser.add_argument("--random-images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    machine("int8_vs_fp32")
    flags = cpu_flags()
    with tempfile.TemporaryDirectory(prefix="cnncli-int8-bench-") as tmp:
        for name in args.models.split(","):
            bench_model(name.strip(), args, Path(tmp), flags)


if __name__ == "__main__":
    main()
