"""`cnncli benchmark RUN|MODEL`: every deployment format of one network side by side.

Like Ultralytics' benchmark mode: the network is exported to each format into a temporary
folder (nothing is written beside the run), each file is loaded by the runtime that runs it
elsewhere, and per format the table gives the file size, the load time, latency p50/p95 and
images/s at each batch size, and top-1 on N test images of the run's dataset. PyTorch eager
is the reference row. A registry name (no run) is benchmarked with random weights: speed and
size mean the same, top-1 is left out.

int8 here is measured, not gated: the row shows what `export --int8` would refuse.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnncli.errors import InputError

FORMATS = ("pytorch", "torchscript", "onnx", "onnx-int8", "openvino")
DEFAULT_BATCHES = (1, 32)
DEFAULT_IMAGES = 500
MAX_BATCH = 4096


@dataclass
class FormatRow:
    format: str
    bytes: int | None = None
    load_s: float | None = None
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # batch -> p50_ms, p95_ms, images_per_s
    top1: float | None = None
    error: str | None = None  # one line when this format could not be made or run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_formats(text: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise InputError(f"--formats: unknown format(s) {', '.join(unknown) or '(none)'}; choose from "
                         f"{', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def parse_batches(text: str | Sequence[int]) -> list[int]:
    try:
        values = [int(t) for t in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise InputError(f"--batch must be comma-separated whole numbers like 1,32; got '{text}'") from None
    if not values or min(values) < 1 or max(values) > MAX_BATCH:
        raise InputError(f"--batch sizes must be between 1 and {MAX_BATCH}; got '{text}'")
    return list(dict.fromkeys(values))


MAX_INPUT_BYTES = 2 * 1024**3  # the inputs a benchmark holds at once (test images, the largest batch)


def check_input_cost(meta: dict[str, Any], images: int, batches: Sequence[int]) -> None:
    """Refuse --images / --batch whose float32 inputs would not fit, before allocating them."""
    c, h, w = (int(v) for v in meta["input_size"])
    per_image = 4 * c * h * w
    price = per_image * (images + max(batches))
    if price > MAX_INPUT_BYTES:
        raise InputError(f"--images {images} and --batch {max(batches)} at {c}x{h}x{w} need "
                         f"{price / 1024**3:.1f} GiB of float32 inputs, more than the "
                         f"{MAX_INPUT_BYTES // 1024**3} GiB a benchmark allows; ask for fewer")


def _open_network(ref: str):
    """(module, meta, has_weights) for a run / checkpoint or a registry name (random weights)."""
    from cnncli.checkpoint import is_checkpoint_ref, load_model

    if is_checkpoint_ref(ref) or Path(ref).is_file():
        model, meta = load_model(ref)
        return model, meta, True
    from cnncli.checkpoint import build_document
    from cnncli.models.registry import build_model

    built = build_model(ref)
    model, info = built.module.eval(), built.info
    meta = build_document(model=built.spec, num_classes=info.num_classes,
                          class_names=[str(i) for i in range(info.num_classes)], input_size=info.input_size,
                          mean=info.mean, std=info.std)
    return model, meta, False


def _test_data(meta: dict[str, Any], n: int, has_weights: bool):
    """(float32 numpy inputs, labels or None, description): the run's test images, else synthetic."""
    from cnncli.deploy.int8 import load_gate_data, prepared, split_sample
    from cnncli.export import synthetic_images

    if has_weights:
        try:
            splits = load_gate_data(meta)
            test = splits.test
            images, labels = split_sample(test, n, seed=1)  # a streaming split decodes only these
            calib = prepared(split_sample(splits.train, 256, seed=0)[0], meta)
            return prepared(images, meta), labels.numpy(), f"{len(labels)} {test.name} test images", calib
        except InputError:
            pass
    c, h, w = (int(v) for v in meta["input_size"])
    x = prepared(synthetic_images(max(n, 1), c, h, w, seed=0), meta)
    return x, None, f"{len(x)} synthetic images (no test data: top-1 not measured)", x[:256]


def _latency(run: Callable[[Any], Any], x, min_time: float, min_runs: int) -> dict[str, float]:
    run(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < min_time and len(times) < 1000):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    times.sort()
    p50 = statistics.median(times)
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return {"p50_ms": round(p50 * 1000, 4), "p95_ms": round(p95 * 1000, 4),
            "images_per_s": round(len(x) / p50, 1) if p50 > 0 else float("inf")}


def _batch(x, b: int):
    import numpy as np

    reps = -(-b // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:b] if reps > 1 else x[:b])


def _build(fmt: str, model, meta, example, tmp: Path, calib, threads: int | None):
    """(path or None, bytes or None, loader) where loader() -> run(numpy batch) -> numpy logits."""
    import torch

    from cnncli import export as ex

    if fmt == "pytorch":
        def load():
            def run(x):
                with torch.inference_mode():
                    return model(torch.from_numpy(x)).numpy()
            return run
        return None, None, load
    if fmt == "torchscript":
        path = tmp / "model.pt"
        path.write_bytes(ex.torchscript_bytes(model, example, meta))

        def load():
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu").eval()

            def run(x):
                with torch.inference_mode():
                    return module(torch.from_numpy(x)).numpy()
            return run
        return path, path.stat().st_size, load
    onnx_path = tmp / "model.onnx"
    if not onnx_path.exists():
        # the TorchScript-based exporter takes a second where torch.export takes tens on a big
        # graph (onnx_bytes falls back to the other one by itself); onnxruntime runs the same kernels
        data, _ = ex.onnx_bytes(model, example, meta, exporter="torchscript")
        onnx_path.write_bytes(data)
    if fmt == "onnx":
        path = onnx_path
    elif fmt == "onnx-int8":
        from cnncli.deploy.int8 import quantize_onnx

        path = tmp / "model.int8.onnx"
        path.write_bytes(quantize_onnx(onnx_path.read_bytes(), calib))
    else:  # openvino
        from cnncli.deploy.openvino import openvino_ir, write_ir

        path = tmp / "model.xml"
        write_ir(path, *openvino_ir(onnx_path.read_bytes(), meta))
    size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if fmt == "openvino" else 0)

    def load():
        from cnncli.deploy.runtime import open_onnx, open_openvino

        opened = (open_openvino if fmt == "openvino" else open_onnx)(path, threads)
        return opened.run
    return path, size, load


def benchmark(ref: str, formats: Sequence[str] = FORMATS, batches: Sequence[int] = DEFAULT_BATCHES,
              images: int = DEFAULT_IMAGES, threads: int | None = None, min_time: float = 0.5,
              min_runs: int = 5) -> dict[str, Any]:
    """The benchmark document: {model, inputs, batches, cpu_flags, rows: [FormatRow...]}."""
    import torch

    from cnncli.deploy.int8 import cpu_flags
    from cnncli.deploy.runtime import first_line
    from cnncli.engine.device import set_threads

    formats = parse_formats(formats)
    batches = parse_batches(batches)
    if images < 1:
        raise InputError("--images must be at least 1")
    if "pytorch" not in formats:
        formats = ["pytorch", *formats]  # the reference row
    set_threads(threads)
    threads = threads or torch.get_num_threads()  # the same count for every runtime: a fair table
    model, meta, has_weights = _open_network(ref)
    check_input_cost(meta, images, batches)
    x, labels, description, calib = _test_data(meta, images, has_weights)
    c, h, w = (int(v) for v in meta["input_size"])
    example = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(1))
    rows: list[FormatRow] = []
    with tempfile.TemporaryDirectory(prefix="cnncli-benchmark-") as tmp:
        for fmt in formats:
            row = FormatRow(fmt)
            rows.append(row)
            try:
                _, row.bytes, load = _build(fmt, model, meta, example, Path(tmp), calib, threads)
                t0 = time.perf_counter()
                run = load()
                row.load_s = round(time.perf_counter() - t0, 4)
                for b in batches:
                    row.latency[str(b)] = _latency(run, _batch(x, b), min_time, min_runs)
                if labels is not None:
                    hits = sum(int((run(x[i:i + 256]).argmax(axis=1) == labels[i:i + 256]).sum())
                               for i in range(0, len(x), 256))
                    row.top1 = round(hits / len(x), 4)
            except Exception as e:  # noqa: BLE001 - one format failing does not hide the others
                row.error = f"{type(e).__name__}: {first_line(e)}" if not isinstance(e, InputError) else str(e)
    if rows[0].bytes is None:  # the reference row: the size of its weights in memory
        rows[0].bytes = int(sum(p.numel() * p.element_size() for p in model.state_dict().values()))
    return {"model": meta["model"].get("name"), "source": ref, "weights": "trained" if has_weights else "random",
            "inputs": description, "batches": batches, "threads": threads,
            "cpu_flags": cpu_flags(), "rows": [r.to_dict() for r in rows]}
