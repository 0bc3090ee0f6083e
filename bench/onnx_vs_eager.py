"""Inference throughput: ONNX Runtime versus PyTorch eager on the same exported network.

For each network a checkpoint is written (random weights: speed does not depend on their
values), exported with `cnncli export` (verified), and then the very same weights run in
PyTorch eager mode under `torch.inference_mode` and in onnxruntime's CPU session, with the
same number of threads and the same input batch. The two are timed round by round,
alternating, so that a busy machine slows both alike; each figure is the median round.

One JSON line per (network, batch size) on stdout with both figures side by side, after a
`machine` line:

    python bench/onnx_vs_eager.py [--models lenet5,typical_cnn,timm/resnet18] [--seconds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import emit, machine  # noqa: E402

DEFAULT_MODELS = ["lenet5", "typical_cnn", "timm/resnet18"]
# one image (latency-bound, what a service answering single requests sees) and a full batch
BATCHES = {"lenet5": [1, 256], "typical_cnn": [1, 256]}
DEFAULT_BATCHES = [1, 32]


def make_checkpoint(name: str, folder: Path) -> Path:
    import torch

    from cnncli.checkpoint import save_checkpoint
    from cnncli.models.registry import build_model

    torch.manual_seed(0)
    built = build_model(name, num_classes=10)
    model, info = built.module, built.info
    meta = {"kind": "model", "model": built.spec, "num_classes": 10,
            "class_names": [str(i) for i in range(10)], "input_size": list(info.input_size),
            "mean": list(info.mean), "std": list(info.std), "dataset": None}
    return save_checkpoint(folder / f"{name.replace('/', '_')}.safetensors", model.state_dict(), meta)


def images_per_second(fn, batch: int, seconds: float) -> float:
    """Throughput of fn() over about `seconds` (after one warm-up call)."""
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 3:
            return n * batch / elapsed


def bench_model(name: str, batches: list[int], seconds: float, rounds: int, threads: int, exporter: str):
    import torch

    from cnncli.checkpoint import load_model
    from cnncli.export import export_checkpoint, onnx_session

    with tempfile.TemporaryDirectory(prefix="cnncli-bench-") as tmp:
        ckpt = make_checkpoint(name, Path(tmp))
        exported = export_checkpoint(ckpt, "onnx", out=Path(tmp) / "model.onnx", exporter=exporter)
        model, meta = load_model(ckpt)
        session = onnx_session(exported.path, threads=threads, cpu_only=True)
        input_name = session.get_inputs()[0].name
        for batch in batches:
            x = torch.randn(batch, *meta["input_size"])
            x_np = x.numpy()

            def eager(x=x):
                with torch.inference_mode():
                    model(x)

            def ort(x_np=x_np):
                session.run(None, {input_name: x_np})

            eager_runs, ort_runs = [], []
            for _ in range(rounds):
                eager_runs.append(images_per_second(eager, batch, seconds))
                ort_runs.append(images_per_second(ort, batch, seconds))
            e, o = statistics.median(eager_runs), statistics.median(ort_runs)
            emit(bench="onnx_vs_eager", model=name, input_size=meta["input_size"], batch_size=batch,
                 threads=threads, eager_images_per_second=round(e, 1),
                 onnxruntime_images_per_second=round(o, 1), onnxruntime_vs_eager=round(o / e, 3),
                 max_abs_diff=exported.max_abs_diff, exporter=exported.exporter,
                 opset=exported.opset, rounds=rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated registry names")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated, for every model")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per round and runtime")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="threads for both runtimes [torch's default]")
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    args = parser.parse_args()

    import onnxruntime
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    info = machine("onnx_vs_eager")
    emit(bench="onnx_vs_eager", kind="versions", onnxruntime=onnxruntime.__version__,
         providers=onnxruntime.get_available_providers(), device=info["device"], runtime_device="cpu")
    for name in args.models.split(","):
        batches = ([int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes
                   else BATCHES.get(name, DEFAULT_BATCHES))
        bench_model(name, batches, args.seconds, args.rounds, threads, args.exporter)


if __name__ == "__main__":
    main()
