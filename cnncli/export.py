"""Export a cnncli checkpoint to ONNX, TorchScript or (half-precision) safetensors, and prove it.

Every export is verified before it is written (unless asked not to): the exported bytes are
run by the runtime that will run them elsewhere (onnxruntime, `torch.jit.load`, or the network
rebuilt from the safetensors file by `cnncli.checkpoint.load_model`) on a batch of real
images from the checkpoint's dataset when it is on this machine (otherwise synthetic images
through the same preprocessing) and on a batch of random inputs, and the largest absolute
difference from the PyTorch output is compared with a stated bound. A file that fails is
never written, so what sits on disk under the output name has always passed.

The checkpoint's metadata travels with every format: ONNX `metadata_props` (key `cnncli`
holds the whole document; a few flat keys are there for other tools), the TorchScript
archive's extra file `cnncli.json`, and the safetensors header as in any cnncli checkpoint
(so `eval` and `predict` read an exported safetensors file like a run's own).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnncli.errors import InputError, RuntimeFailure

FORMATS = ("onnx", "torchscript", "safetensors", "openvino")
DTYPES = ("float32", "float16", "bfloat16")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors", "openvino": ".xml"}

# Opset 18 is what torch's exporter targets natively and every onnxruntime since 1.14 runs.
DEFAULT_OPSET = 18
DYNAMO_MIN_OPSET = 18  # torch.export-based exporter: its native opset
MIN_OPSET = 13  # below this, the ops that modern CNNs need (e.g. Resize, ReduceMean) change form

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TORCHSCRIPT_META_FILE = "cnncli.json"

# Bounds on the largest absolute difference of the logits from the fp32 PyTorch network.
# fp32 exports should agree to rounding; rounded weights are judged relative to the size of
# the logits (a network with logits near 30 cannot be held to the same absolute figure as one
# near 1): fp16 keeps 11 significant bits, bf16 only 8.
FP32_TOLERANCE = 1e-4
RELATIVE_TOLERANCE = {"float16": 1e-2, "bfloat16": 6e-2}

# Datasets that load from disk in about a second, so verification can afford their test images;
# an image folder (decoding every file) or a generated set would cost more than the export.
QUICK_DATASETS = ("fashion-mnist", "fashion-mnist-mini", "cifar10")

INSTALL_HINT = "pip install 'cnncli[export]'"


@dataclass
class ExportResult:
    """What `cnncli export --json` prints."""

    path: str
    format: str
    bytes: int
    max_abs_diff: float | None
    verified: bool
    tolerance: float | None
    dtype: str
    source: str
    opset: int | None = None
    exporter: str | None = None
    inputs: str | None = None  # what the verification ran on ("fashion-mnist test images", ...)
    int8: dict[str, Any] | None = None  # the int8 gate's figures (cnncli.deploy.int8.GateFigures)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- optional runtimes

def require_onnx():
    try:
        import onnx
    except ImportError:
        raise InputError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from None
    return onnx


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise InputError(f"running an ONNX file needs onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_session(model: str | os.PathLike | bytes, threads: int | None = None, cpu_only: bool = False):
    """An onnxruntime session on the CPU (or CUDA where the GPU build is installed)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would clutter stderr
    if threads:
        options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    wanted = ("CPUExecutionProvider",) if cpu_only else ("CUDAExecutionProvider", "CPUExecutionProvider")
    providers = [p for p in wanted if p in available]
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        name = "the exported model" if isinstance(model, bytes) else str(model)
        raise InputError(f"{name}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None


# ---------------------------------------------------------------------------- paths and metadata

def resolve_format(fmt: str | None, out: str | os.PathLike | None) -> str:
    """The format to write: `fmt` when given; else the one --out's suffix names (.onnx, .pt,
    .safetensors, .xml); ONNX when there is no --out. An --out whose suffix names no format is
    refused rather than filled with ONNX under a misleading name."""
    if fmt is not None:
        return fmt
    if out is None:
        return "onnx"
    suffix = Path(out).suffix.lower()
    by_suffix = {s: f for f, s in SUFFIXES.items()}
    if suffix in by_suffix:
        return by_suffix[suffix]
    known = ", ".join(f"{s} ({f})" for f, s in SUFFIXES.items())
    raise InputError(f"--out {out}: '{suffix or 'no suffix'}' names no export format; use one of {known}, "
                     f"or pass --format {'|'.join(FORMATS)} to write that format under this name")


def default_output_path(checkpoint: str | os.PathLike, fmt: str, dtype: str = "float32",
                        int8: bool = False) -> Path:
    """Next to the checkpoint: run/model.safetensors -> run/model.onnx, run/model.fp16.safetensors,
    run/model.int8.onnx, run/model.xml (+ model.bin)."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.name[: -len(".safetensors")] if checkpoint.name.endswith(".safetensors") else checkpoint.stem
    tag = ".int8" if int8 else {"float32": "", "float16": ".fp16", "bfloat16": ".bf16"}[dtype]
    if fmt == "safetensors" and not tag:
        tag = ".export"  # never overwrite the checkpoint itself
    return checkpoint.with_name(f"{stem}{tag}{SUFFIXES[fmt]}")


def onnx_metadata(meta) -> dict[str, str]:
    """ONNX metadata_props: the whole cnncli document plus flat keys other tools can read."""
    from cnncli.checkpoint import as_document

    meta = as_document(meta)
    props = {"cnncli": meta.to_json()}
    flat = {
        "model": meta.get("model", {}).get("name"),
        "num_classes": meta.get("num_classes"),
        "class_names": meta.get("class_names"),
        "input_size": meta.get("input_size"),
        "mean": meta.get("mean"),
        "std": meta.get("std"),
        "dataset": meta.get("dataset"),
        "input_name": INPUT_NAME,
        "output": f"{OUTPUT_NAME} (unnormalized scores; softmax gives probabilities)",
    }
    for key, value in flat.items():
        if value is not None:
            props[key] = value if isinstance(value, str) else json.dumps(value)
    return props


def read_onnx_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The cnncli document stored in an ONNX file cnncli exported (used by predict)."""
    onnx = require_onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except Exception as e:
        raise InputError(f"{path}: not a readable ONNX file ({str(e).splitlines()[0][:160]})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "cnncli" not in props:
        raise InputError(f"{path} has no cnncli metadata (classes, input size, mean/std); "
                         "export it with 'cnncli export' or predict from the checkpoint")
    from cnncli.checkpoint import RunDocument

    meta = RunDocument.from_json(props["cnncli"], source=path)  # checked as a checkpoint's is
    if not meta.get("input_size"):
        raise InputError(f"{path}: cnncli metadata without an input size")
    return meta


def read_torchscript_meta(data: bytes | str | os.PathLike) -> dict[str, Any]:
    import torch

    extra = {TORCHSCRIPT_META_FILE: ""}
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        torch.jit.load(source, map_location="cpu", _extra_files=extra)
    return json.loads(extra[TORCHSCRIPT_META_FILE])


# ---------------------------------------------------------------------------- inputs

def verification_inputs(meta: dict[str, Any], real: int = 8, random: int = 3, seed: int = 0):
    """[(description, batch)]: real (or synthetic) images preprocessed as the metadata says,
    and standard-normal noise. The two batch sizes differ from the export's example batch so
    that the dynamic batch axis is exercised too."""
    import torch

    c, h, w = (int(v) for v in meta["input_size"])
    generator = torch.Generator().manual_seed(seed)
    images, description = _real_images(meta, real)
    if images is None:
        images = synthetic_images(real, c, h, w, seed=seed)
        description = "synthetic images"
    batch = preprocess(images, meta)
    noise = torch.randn(random, c, h, w, generator=generator)
    return [(description, batch), ("random inputs", noise)]


def preprocess(images, meta: dict[str, Any], device: str = "cpu"):
    """uint8 (N, C, H, W) images to the network's input, exactly as the metadata says."""
    from cnncli.data.transforms import prepare_batch

    mean = meta.get("mean") or [0.5] * int(meta["input_size"][0])
    std = meta.get("std") or [0.5] * int(meta["input_size"][0])
    return prepare_batch(images, input_size=tuple(int(v) for v in meta["input_size"]),
                         mean=mean, std=std, device=device)


def synthetic_images(n: int, c: int, h: int, w: int, seed: int = 0):
    """uint8 images with edges and smooth regions (stripes, blobs, noise), not flat noise,
    so that activations resemble those of real photographs more than noise does."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    freq = torch.rand(n, c, 1, 1, generator=g) * 12 + 2
    angle = torch.rand(n, c, 1, 1, generator=g) * 3.1416
    stripes = torch.sin(freq * (xs * torch.cos(angle) + ys * torch.sin(angle)))
    cx, cy = (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1 for _ in range(2))
    blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) * 6)
    noise = torch.rand(n, c, h, w, generator=g) * 0.2
    img = 0.35 * stripes + 0.6 * blob + noise
    img = (img - img.amin(dim=(2, 3), keepdim=True)) / (img.amax(dim=(2, 3), keepdim=True)
                                                        - img.amin(dim=(2, 3), keepdim=True) + 1e-6)
    return (img * 255).round().to(torch.uint8)


def _real_images(meta: dict[str, Any], n: int):
    """Up to n test images of the checkpoint's dataset if it loads offline, else (None, None)."""
    dataset = meta.get("dataset")
    if not dataset:
        return None, None
    recipe = meta.get("recipe") or {}
    try:
        from cnncli.data import load_dataset, parse_dataset_name

        if parse_dataset_name(dataset)[0] not in QUICK_DATASETS:
            return None, None
        splits = load_dataset(dataset, data_dir=recipe.get("data_dir"), download=False,
                              val_fraction=0.0, max_samples=None, seed=0)
        split = splits.test if splits.test is not None and len(splits.test) else splits.train
        images = split.images[:n]
    except Exception:  # not on this machine (or not loadable here): synthetic images serve
        return None, None
    if len(images) == 0:
        return None, None
    return images, f"{len(images)} {dataset} images"


# ---------------------------------------------------------------------------- the three formats

def onnx_bytes(model, example, meta: dict[str, Any], opset: int = DEFAULT_OPSET,
               exporter: str = "dynamo") -> tuple[bytes, str]:
    """Serialized ONNX with a dynamic batch axis and the metadata; returns (bytes, exporter).

    torch's `torch.export`-based exporter is the supported one; the older TorchScript-based
    exporter serves as a fallback for a network `torch.export` cannot capture.
    """
    onnx = require_onnx()
    errors = []
    order = [exporter] + [e for e in ("dynamo", "torchscript") if e != exporter]
    if opset < DYNAMO_MIN_OPSET and exporter == "dynamo":
        # the torch.export-based exporter writes opset 18 and can only try to convert down
        # (and sometimes fails silently); the TorchScript-based one emits older opsets natively
        order = ["torchscript", "dynamo"]
    for which in order:
        try:
            proto = _export_onnx_proto(model, example, opset, dynamo=(which == "dynamo"))
            got = _default_opset(proto)
            if got != opset:
                raise RuntimeError(f"wrote opset {got} instead of {opset}")
            break
        except Exception as e:  # record and try the other exporter
            errors.append(f"{which}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    else:
        op = _unsupported_operator(" ".join(errors))
        if op:
            raise InputError(f"this network cannot be exported to ONNX: operator {op} is not supported "
                             "by torch's ONNX exporters")
        raise RuntimeFailure("ONNX export failed with both torch exporters (" + "; ".join(errors) + ")")
    if errors:
        from cnncli.output import note

        note(f"the {order[0]} ONNX exporter failed ({errors[0]}); used the {which} exporter")
    onnx.helper.set_model_props(proto, onnx_metadata(meta))
    proto.doc_string = f"cnncli export of {meta.get('model', {}).get('name', 'a network')}"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise RuntimeFailure(f"the exported ONNX graph fails the ONNX checker: {str(e).splitlines()[0][:200]}") from None
    return proto.SerializeToString(), which


def _unsupported_operator(text: str) -> str | None:
    """The operator torch's exporters name when they have no ONNX translation for it."""
    import re

    for pattern in (r"[Uu]nsupported: ONNX export of operator ([\w:.]+)",
                    r"[Nn]o ONNX function (?:found|registered) for (?:<OpOverload\(op=)?'?([\w:.]+)",
                    r"[Uu]nsupported FX nodes?:? \{?'?([\w:.]+)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).rstrip(".'")
    return None


def _default_opset(proto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _export_onnx_proto(model, example, opset: int, dynamo: bool):
    import onnx
    import torch

    with warnings.catch_warnings(), torch.no_grad(), _quiet_loggers("torch.onnx", "onnxscript", "torch.export"):
        warnings.simplefilter("ignore")  # deprecation chatter from the exporters, not the user's concern
        if dynamo:
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, verbose=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=True,
            )
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(
            model, (example,), buf, dynamo=False, verbose=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        return onnx.load_from_string(buf.getvalue())


class _quiet_loggers:
    """Silence libraries' logging below ERROR for a while (the exporters log progress and
    version-conversion attempts that mean nothing to the user; failures still raise)."""

    def __init__(self, *names: str):
        import logging

        self.loggers = [logging.getLogger(n) for n in names]
        self.levels: list[int] = []

    def __enter__(self):
        import logging

        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)
        return False


def torchscript_bytes(model, example, meta) -> bytes:
    """A traced TorchScript archive with the metadata as the extra file `cnncli.json`."""
    import torch

    from cnncli.checkpoint import as_document

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still runs everywhere
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as e:
            raise RuntimeFailure(f"TorchScript tracing failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={TORCHSCRIPT_META_FILE: as_document(meta).to_json()})
    return buf.getvalue()


def safetensors_bytes(model, meta, dtype: str = "float32") -> bytes:
    """A cnncli checkpoint again, its floating tensors stored in `dtype`, the dtype recorded."""
    from cnncli.checkpoint import as_document, checkpoint_bytes

    return checkpoint_bytes(model.state_dict(), as_document(meta).replace(dtype=dtype), dtype=dtype)


# ---------------------------------------------------------------------------- verification

def run_exported(fmt: str, data: bytes, batches: list, meta: dict[str, Any]) -> list:
    """Outputs of the exported bytes for each batch, computed by the runtime that will run them."""
    import torch

    if fmt == "onnx":
        session = onnx_session(data)
        name = session.get_inputs()[0].name
        return [torch.from_numpy(session.run(None, {name: b.numpy()})[0]) for b in batches]
    if fmt == "openvino":
        from cnncli.deploy.openvino import run_openvino_ir

        return [torch.from_numpy(o) for o in run_openvino_ir(*data, [b.numpy() for b in batches])]
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        with torch.no_grad():
            return [module(b) for b in batches]
    if fmt == "safetensors":
        import tempfile

        from cnncli.checkpoint import load_model

        # load_model reads a file (its checks are on the file), so give it one briefly
        with tempfile.TemporaryDirectory(prefix="cnncli-verify-") as tmp:
            path = Path(tmp) / "model.safetensors"
            path.write_bytes(data)
            rebuilt, _ = load_model(path)
        with torch.inference_mode():
            return [rebuilt(b) for b in batches]
    raise ValueError(fmt)


def tolerance_for(dtype: str, reference) -> float:
    """The bound a verification must meet (see FP32_TOLERANCE, RELATIVE_TOLERANCE)."""
    if dtype == "float32":
        return FP32_TOLERANCE
    scale = max(1.0, max(float(r.abs().max()) for r in reference))
    return RELATIVE_TOLERANCE[dtype] * scale


def max_abs_diff(outputs, reference) -> float:
    return max(float((o.float() - r.float()).abs().max()) for o, r in zip(outputs, reference))


# ---------------------------------------------------------------------------- the one entry point

def export_checkpoint(
    checkpoint: str | os.PathLike,
    fmt: str | None = None,
    out: str | os.PathLike | None = None,
    opset: int | None = None,
    dtype: str = "float32",
    verify: bool | None = None,
    exporter: str = "dynamo",
    int8: bool = False,
    int8_options: dict[str, Any] | None = None,
) -> ExportResult:
    """Export a checkpoint (or run directory) and, unless `verify` is False, verify it.

    `fmt=None` takes the format from `out`'s suffix (ONNX without `out`; see resolve_format).

    `verify=None` verifies whenever the runtime is installed (for ONNX: onnxruntime) and says
    on stderr when it cannot; `verify=True` insists and fails without the runtime.
    Raises RuntimeFailure (exit 1) when the exported file disagrees with PyTorch beyond the
    bound; nothing is written then. `int8` (ONNX only): quantize the verified fp32 graph and
    write it only if it passes the accuracy-and-speed gate of `cnncli.deploy.int8`
    (`int8_options`: calib_images, calibration, max_drop, allow_slower, gate_images, data,
    data_dir, latency). `fmt="openvino"` writes OpenVINO IR (.xml + .bin) from the ONNX graph.
    """
    import torch

    from cnncli import outputs as policy
    from cnncli.engine.open import locate_network, open_network
    from cnncli.output import note

    fmt = resolve_format(fmt, out)
    if fmt not in FORMATS:
        raise InputError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    if dtype != "float32" and fmt != "safetensors":
        raise InputError("--half and --bf16 apply to --format safetensors only")
    if opset is not None and fmt not in ("onnx", "openvino"):
        raise InputError("--opset applies to --format onnx only (and openvino, converted from ONNX)")
    if int8 and fmt != "onnx":
        raise InputError("--int8 applies to --format onnx only")
    if int8_options and not int8:
        raise InputError("--calib-images, --calibration, --max-drop and --allow-slower need --int8")
    if fmt == "openvino":
        from cnncli.deploy.runtime import require_openvino

        require_openvino()
    if int8 or fmt == "openvino":
        verify = True if verify is None else verify
        require_onnxruntime()  # the ONNX graph is verified (and int8 gated) by onnxruntime
    opset = DEFAULT_OPSET if opset is None else opset
    if fmt in ("onnx", "openvino"):
        require_onnx()
        if not MIN_OPSET <= opset <= _max_opset():
            raise InputError(f"--opset {opset} is outside what this setup supports ({MIN_OPSET}..{_max_opset()})")
    if fmt == "onnx" and verify is None and not onnxruntime_available():
        note(f"not verifying: onnxruntime is not installed ({INSTALL_HINT})")
        verify = False
    elif fmt == "onnx" and verify:
        require_onnxruntime()
    verify = True if verify is None else verify

    where = locate_network(checkpoint)
    if where.kind != "checkpoint":
        raise InputError(f"{checkpoint} is not a cnncli checkpoint or run directory; export needs one "
                         "(train or finetune a network first)")
    source = where.path
    out_path = Path(out) if out is not None else default_output_path(source, fmt, dtype, int8=int8)
    if fmt == "openvino" and out_path.suffix != ".xml":
        raise InputError(f"--out {out_path}: OpenVINO IR is an .xml file (its weights go beside it in .bin)")
    if out_path.resolve() == source.resolve():
        raise InputError(f"--out {out_path} is the checkpoint itself; choose another file")
    # a path export may not write is said now, not after converting (cnncli.outputs)
    kind = output_kind(fmt)
    policy.check_file(out_path, kind)
    if fmt == "openvino":
        policy.check_file(out_path.with_suffix(".bin"), policy.OPENVINO_BIN)
    from cnncli.fileio import ensure_writable_dir

    ensure_writable_dir(out_path.parent)  # an unwritable folder too
    opened = open_network(str(source))
    model, meta = opened.module, opened.document
    meta = meta.replace(exported_from=str(source))
    c, h, w = (int(v) for v in meta["input_size"])
    example = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(1))

    used_exporter = None
    if fmt in ("onnx", "openvino"):
        data, used_exporter = onnx_bytes(model, example, meta, opset=opset, exporter=exporter)
    elif fmt == "torchscript":
        data = torchscript_bytes(model, example, meta)
    else:
        data = safetensors_bytes(model, meta, dtype)

    diff = tol = description = None
    if verify:
        batches = verification_inputs(meta)
        description = " and ".join(d for d, _ in batches)
        inputs = [b for _, b in batches]
        with torch.inference_mode():
            reference = [model(b) for b in inputs]
        tol = tolerance_for(dtype, reference)
        checks = [("onnx" if fmt == "openvino" else fmt, data)]
        if fmt == "openvino":
            from cnncli.deploy.openvino import openvino_ir

            xml, weights = openvino_ir(data, meta)
            checks.append(("openvino", (xml, weights)))
        for which, payload in checks:
            outputs = run_exported(which, payload, inputs, meta)
            diff = max_abs_diff(outputs, reference)
            figure = f"max abs diff {diff:.3g} (bound {tol:.3g}, {dtype}) on {description}"
            if not diff <= tol:  # also catches NaN
                stage = "" if which == fmt else f" (the intermediate {which} graph)"
                raise RuntimeFailure(f"verification failed{stage}: {figure}; {out_path} not "
                                     "written (--no-verify writes it anyway)")
            note(f"verified {which}: {figure}")
    elif fmt == "openvino":
        from cnncli.deploy.openvino import openvino_ir

        xml, weights = openvino_ir(data, meta)
    gate = None
    if int8:
        from cnncli.deploy.int8 import int8_export

        data, figures = int8_export(data, meta, **(int8_options or {}))
        gate = figures.to_dict()
        note(f"int8 gate passed: top-1 {figures.top1_int8:.4f} vs fp32 {figures.top1_fp32:.4f} "
             f"({figures.drop_points:+.2f} points drop) on {figures.test_images} test images; "
             + "speed vs fp32 " + ", ".join(f"batch {b} {s:.2f}x" for b, s in figures.speedup.items())
             + (" (not faster: written because of --allow-slower)"
                if min(figures.speedup.values()) <= 1.0 else ""))
        diff = tol = None  # int8 is judged by the gate, not by a bound on the logits
        if verify:
            diff = max_abs_diff(run_exported("onnx", data, inputs, meta), reference)
    if fmt == "openvino":
        from cnncli.deploy.openvino import write_ir

        write_ir(out_path, xml, weights)
        data = xml + weights
    else:
        policy.write_file(out_path, data, kind)
    return ExportResult(path=str(out_path), format=fmt, bytes=len(data), max_abs_diff=diff,
                        verified=bool(verify), tolerance=tol, dtype=dtype, source=str(source),
                        opset=opset if fmt in ("onnx", "openvino") else None, exporter=used_exporter,
                        inputs=description, int8=gate)


def output_kind(fmt: str):
    """The kind of file an export of `fmt` is: what an existing --out must be to be replaced."""
    from cnncli import outputs

    return {"onnx": outputs.ONNX, "torchscript": outputs.TORCHSCRIPT, "safetensors": outputs.MODEL_SAFETENSORS,
            "openvino": outputs.OPENVINO_XML}[fmt]


def _max_opset() -> int:
    try:
        import onnx

        return min(onnx.defs.onnx_opset_version(), 23)
    except ImportError:  # pragma: no cover
        return DEFAULT_OPSET
