"""`cnncli export --format onnx --int8`: static int8 quantization with an accuracy-and-speed gate.

onnxruntime's post-training static quantization (`onnxruntime.quantization.quantize_static`:
QDQ format, per-channel int8 weights, uint8 activations, ranges calibrated on the run's own
training images) turns the verified fp32 ONNX graph into an int8 one. Two ways this goes
wrong in practice are measured before anything is written:

- accuracy: top-1 of the int8 and the fp32 graph on held-out test images of the run's data;
  a drop of more than `max_drop` points is refused; the share of images on which the two graphs
  answer the same class (`agreement`) is reported beside it, and `coarse` says when one image
  is more than `max_drop` points (the gate then cannot see a drop it would refuse);
- speed: latency at batch 1 and 32 of both files on this machine (rounds alternate the two,
  the best median of each counts); int8 that is not faster at every batch size is refused
  unless `allow_slower`, because int8 graphs of small CNNs are often slower than fp32 on
  CPUs without VNNI (the quantize/dequantize pairs cost more than the convolutions save).

A refusal is one line, exit 1, nothing written. The figures go into the JSON result and into
the file's metadata (`int8` in the cnncli document). The latency measurement is a parameter
(`latency=`), so a test can stand in for the clock.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnncli.errors import InputError, RuntimeFailure, UnreadableImageError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIB_IMAGES = 256
DEFAULT_GATE_IMAGES = 2000
DEFAULT_MAX_DROP = 1.0
LATENCY_BATCHES = (1, 32)
ROUNDS = 3  # alternating fp32 / int8 rounds: load on a shared machine moves both alike

# latency(kind, batch_size, run) -> seconds per call; kind is "fp32" or "int8"
LatencyFn = Callable[[str, int, Callable[[], Any]], float]


@dataclass
class GateFigures:
    """What the gate measured (the JSON's `int8` and the file's metadata)."""

    calibration: str
    calib_images: int
    test_images: int
    test_source: str
    top1_fp32: float
    top1_int8: float
    drop_points: float
    max_drop: float
    agreement: float  # share of the test images whose int8 top-1 class is the fp32 one
    coarse: bool  # one test image is more than max_drop points: too few images for the gate
    latency_ms: dict[str, dict[str, float]]  # {"1": {"fp32": ms, "int8": ms}, "32": {...}}
    speedup: dict[str, float]  # fp32 latency / int8 latency per batch size
    allow_slower: bool
    cpu_flags: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- data for the gate

def cpu_flags() -> list[str]:
    """The instruction-set flags that decide int8 speed (Linux /proc/cpuinfo; empty elsewhere)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def load_gate_data(meta: dict[str, Any], data: str | None = None, data_dir: str | None = None,
                   workers: int | None = None):
    """The DatasetSplits the gate calibrates on (train) and scores on (test): the run's own
    dataset, or `data` when given. InputError saying how to give some when there is none."""
    from cnncli.data import load_dataset

    recipe = meta.get("recipe") or {}
    from cnncli.data.paths import recorded_dataset

    name = data or recorded_dataset(meta)
    how = ("pass --data with a dataset of the same classes (fashion-mnist, imagefolder:DIR with "
           "train/ and test/ folders, ...)")
    if not name:
        raise InputError(f"the checkpoint records no dataset, so the int8 gate has no test images; {how}")
    if str(name).startswith("synthetic") and not data:
        raise InputError(f"the run was trained on generated data ({name}), which gives the int8 gate "
                         f"no real test images; {how}")
    from cnncli.data.registry import canonical_dataset_name
    from cnncli.data.stream import trained_streaming

    photos = canonical_dataset_name(str(name)).partition(":")[0].lower() in ("imagefolder", "csv")
    stream = True if trained_streaming(meta) and (photos or not data) else None  # the run's own way
    try:
        splits = load_dataset(name, data_dir=data_dir or (None if data else recipe.get("data_dir")),
                              download=False, val_fraction=0.0, max_samples=None, seed=0, stream=stream)
    except UnreadableImageError:  # the dataset is the right one; a file of it is not
        raise
    except InputError as e:
        raise InputError(f"no test images for the int8 gate: {e}; {how}") from None
    if splits.test is None or len(splits.test) == 0:
        raise InputError(f"dataset {name} has no test split for the int8 gate; {how}")
    num_classes = int(meta.get("num_classes") or 0)
    if num_classes and splits.num_classes != num_classes:
        raise InputError(f"dataset {name} has {splits.num_classes} classes but the network "
                         f"{num_classes}; {how}")
    if getattr(splits, "streaming", False):  # decoded per batch with the run's eval transform
        from cnncli.data.stream import own_eval

        splits.configure(tuple(int(v) for v in meta["input_size"]), workers=workers, **own_eval(meta))
    return splits


def sample_index(n_all: int, n: int, seed: int):
    """Positions of n samples of n_all (all, in order, when fewer) in a fixed random order."""
    import torch

    if n >= n_all:
        return None
    return torch.randperm(n_all, generator=torch.Generator().manual_seed(seed))[:n]


def split_sample(split, n: int, seed: int):
    """(uint8 images, int64 labels) of n samples of a split: a streaming split decodes only those,
    in DataLoader workers (bounded: n images at the network's size), a tensor split slices."""
    import torch

    index = sample_index(len(split), n, seed)
    if not getattr(split, "streaming", False):
        if index is None:
            return split.images, split.labels
        return split.images[index], split.labels[index]
    index = torch.arange(len(split)) if index is None else index
    images, labels = [], []
    for positions, x in split.eval_batches(64, index):
        images.append(x)
        labels.append(split.labels[positions])
    split.close()
    if not images:
        c, h, w = split.image_shape
        return torch.zeros((0, c, h, w), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.cat(images), torch.cat(labels)


def sample_images(images, n: int, seed: int = 0):
    """n images (all when fewer) in a fixed random order: calibration should see every class."""
    import torch

    if n >= len(images):
        return images
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[index]


def prepared(images, meta: dict[str, Any], batch: int = 256):
    """uint8 (N, C, H, W) torch images -> float32 numpy network input, in chunks."""
    import numpy as np

    from cnncli.export import preprocess

    chunks = [preprocess(images[i:i + batch], meta).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(chunks) if chunks else np.zeros((0, *meta["input_size"]), dtype=np.float32)


# ---------------------------------------------------------------------------- quantization

class _Batches:
    """onnxruntime's CalibrationDataReader over a float32 array, `batch` images at a time."""

    def __init__(self, name: str, x, batch: int = 32):
        self.items = [{name: x[i:i + batch]} for i in range(0, len(x), batch)]
        self.position = 0

    def get_next(self):
        if self.position >= len(self.items):
            return None
        self.position += 1
        return self.items[self.position - 1]

    def rewind(self):
        self.position = 0


def quantize_onnx(fp32: bytes, calibration, method: str = "minmax") -> bytes:
    """int8 QDQ ONNX bytes of an fp32 ONNX graph, ranges calibrated on `calibration` (float32 numpy)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise InputError(f"unknown calibration method '{method}'; choose one of {', '.join(CALIBRATION_METHODS)}")
    if len(calibration) == 0:
        raise InputError("int8 calibration needs at least one image (--calib-images)")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    input_name = onnx.load_from_string(fp32).graph.input[0].name
    # without VNNI, uint8 x int8 products can saturate in the AVX2 kernels: 7-bit weights avoid it
    reduce_range = not ({"avx512_vnni", "avx_vnni", "amx_int8"} & set(cpu_flags()))
    with tempfile.TemporaryDirectory(prefix="cnncli-int8-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32)
        try:  # shape inference and graph folding before quantizing, as onnxruntime recommends
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - optional step: quantize the graph as it is
            pre = src
        try:
            quantize_static(str(pre), str(out), _Batches(input_name, calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method])
        except Exception as e:  # noqa: BLE001
            raise RuntimeFailure(f"int8 quantization failed: {type(e).__name__}: "
                                 f"{(str(e).splitlines() or [''])[0][:200]}") from None
        return out.read_bytes()


def with_metadata(data: bytes, props: dict[str, str]) -> bytes:
    """The ONNX bytes with their metadata props replaced by `props`."""
    import onnx

    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    return proto.SerializeToString()


# ---------------------------------------------------------------------------- the gate

def measure_latency(kind: str, batch: int, run: Callable[[], Any], min_time: float = 0.3,
                    min_runs: int = 5, warmup: int = 2) -> float:
    """Median seconds of one call of `run` (after warm-up), over at least `min_runs` calls and
    `min_time` seconds. `kind` and `batch` are for stand-ins that need them."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    return statistics.median(times)


def predicted(session, x, batch: int = 256):
    """The top-1 class of every image (int64 numpy)."""
    import numpy as np

    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x[i:i + batch]})[0].argmax(axis=1) for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def top1(session, x, labels, batch: int = 256) -> float:
    import numpy as np

    if not len(x):
        return float(np.nan)
    return float((predicted(session, x, batch) == np.asarray(labels)).mean())


def gate(fp32: bytes, int8: bytes, test_x, test_y, *, max_drop: float = DEFAULT_MAX_DROP,
         allow_slower: bool = False, latency: LatencyFn | None = None,
         threads: int | None = None) -> dict[str, Any]:
    """Measure int8 against fp32 (top-1 on the test images, latency at batch 1 and 32);
    RuntimeFailure when the drop exceeds `max_drop` points or int8 is slower (unless
    `allow_slower`). Returns the figures (without the calibration fields)."""
    import numpy as np

    from cnncli.export import onnx_session

    latency = latency or measure_latency
    sessions = {"fp32": onnx_session(fp32, threads=threads, cpu_only=True),
                "int8": onnx_session(int8, threads=threads, cpu_only=True)}
    labels = np.asarray(test_y)
    answers = {k: predicted(s, test_x) for k, s in sessions.items()}
    acc = {k: float((a == labels).mean()) if len(a) else float(np.nan) for k, a in answers.items()}
    drop = round((acc["fp32"] - acc["int8"]) * 100, 4)
    agreement = float((answers["fp32"] == answers["int8"]).mean()) if len(labels) else float(np.nan)
    figures: dict[str, Any] = {"test_images": len(test_x), "top1_fp32": acc["fp32"],
                               "top1_int8": acc["int8"], "drop_points": drop, "max_drop": max_drop,
                               "agreement": agreement, "coarse": 100.0 / max(1, len(test_x)) > max_drop}
    if drop > max_drop:
        raise RuntimeFailure(f"int8 refused: top-1 {acc['int8']:.4f} vs fp32 {acc['fp32']:.4f} on "
                             f"{len(test_x)} test images, a drop of {drop:.2f} points > --max-drop "
                             f"{max_drop:g}; nothing written (more --calib-images or another "
                             "--calibration may help)")
    latency_ms: dict[str, dict[str, float]] = {}
    for b in LATENCY_BATCHES:
        x = _batch_of(test_x, b)
        best: dict[str, float] = {}
        for _ in range(ROUNDS):
            for kind, s in sessions.items():
                name = s.get_inputs()[0].name
                t = latency(kind, b, lambda s=s, name=name, x=x: s.run(None, {name: x}))
                best[kind] = min(best.get(kind, float("inf")), float(t))
        latency_ms[str(b)] = {k: round(v * 1000, 4) for k, v in best.items()}
    speedup = {b: round(v["fp32"] / v["int8"], 3) if v["int8"] > 0 else float("inf")
               for b, v in latency_ms.items()}
    figures.update(latency_ms=latency_ms, speedup=speedup, allow_slower=allow_slower)
    slower = [b for b, s in speedup.items() if s <= 1.0]
    if slower and not allow_slower:
        said = ", ".join(f"batch {b}: {latency_ms[b]['int8']:.3g} ms vs {latency_ms[b]['fp32']:.3g} ms "
                         f"({speedup[b]:.2f}x)" for b in speedup)
        raise RuntimeFailure(f"int8 refused: not faster than fp32 on this CPU ({said}); nothing "
                             "written (--allow-slower writes it anyway)")
    return figures


def _batch_of(x, b: int):
    import numpy as np

    if len(x) >= b:
        return np.ascontiguousarray(x[:b])
    reps = -(-b // max(1, len(x)))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:b])


def int8_export(fp32: bytes, meta: dict[str, Any], *, calib_images: int = DEFAULT_CALIB_IMAGES,
                calibration: str = "minmax", max_drop: float = DEFAULT_MAX_DROP,
                allow_slower: bool = False, gate_images: int = DEFAULT_GATE_IMAGES,
                data: str | None = None, data_dir: str | None = None,
                latency: LatencyFn | None = None) -> tuple[bytes, GateFigures]:
    """Quantize, gate and return (int8 bytes with the figures in their metadata, figures)."""
    from cnncli.export import onnx_metadata

    if calibration not in CALIBRATION_METHODS:
        raise InputError(f"unknown calibration method '{calibration}'; choose one of {', '.join(CALIBRATION_METHODS)}")
    if calib_images < 1 or gate_images < 1:
        raise InputError("--calib-images and --gate-images must be at least 1")
    if not max_drop >= 0:
        raise InputError(f"--max-drop must be a number of points >= 0, got {max_drop}")
    splits = load_gate_data(meta, data, data_dir)
    from cnncli.data.stream import BadImageFailure

    try:
        calib = prepared(split_sample(splits.train, calib_images, seed=0)[0], meta)
        test_images, test_labels = split_sample(splits.test, gate_images, seed=1)
    except BadImageFailure as e:  # streamed: export has no --skip-bad-images to offer
        reason = str(e).removesuffix(" (skip such files with --skip-bad-images)")
        raise BadImageFailure(f"{reason}: the int8 gate reads its images whole; fix or remove the file "
                              "('cnncli datasets check' lists every such file)") from None
    test_x = prepared(test_images, meta)
    int8 = quantize_onnx(fp32, calib, calibration)
    measured = gate(fp32, int8, test_x, test_labels.numpy(), max_drop=max_drop,
                    allow_slower=allow_slower, latency=latency)
    figures = GateFigures(calibration=calibration, calib_images=len(calib),
                          test_source=f"{splits.test.name} test split", cpu_flags=cpu_flags(), **measured)
    int8_meta = {**meta, "int8": figures.to_dict()}
    return with_metadata(int8, onnx_metadata(int8_meta)), figures
