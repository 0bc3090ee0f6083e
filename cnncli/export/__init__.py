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

The work is in the package's modules, one job each: `runtime` (the optional onnx and
onnxruntime), `metadata` (the document inside ONNX and TorchScript files), `formats` (the
bytes of each format) and `verify` (proving them); this module is the one entry point,
`export_checkpoint`, and re-exports what they offer under the names `cnncli.export` always had.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnncli.errors import InputError, RuntimeFailure
from cnncli.export.formats import (  # noqa: F401 - re-exported
    DEFAULT_OPSET,
    DYNAMO_MIN_OPSET,
    MIN_OPSET,
    _default_opset,
    _export_onnx_proto,
    _quiet_loggers,
    _unsupported_operator,
    max_opset,
    onnx_bytes,
    safetensors_bytes,
    torchscript_bytes,
)
from cnncli.export.metadata import (  # noqa: F401 - re-exported
    INPUT_NAME,
    OUTPUT_NAME,
    TORCHSCRIPT_META_FILE,
    onnx_metadata,
    read_onnx_meta,
    read_torchscript_meta,
)
from cnncli.export.runtime import (  # noqa: F401 - re-exported
    INSTALL_HINT,
    onnx_session,
    onnxruntime_available,
    require_onnx,
    require_onnxruntime,
)
from cnncli.export.verify import (  # noqa: F401 - re-exported
    FP32_TOLERANCE,
    QUICK_DATASETS,
    RELATIVE_TOLERANCE,
    _real_images,
    max_abs_diff,
    preprocess,
    run_exported,
    synthetic_images,
    tolerance_for,
    verification_inputs,
)

_max_opset = max_opset  # its earlier, private name

FORMATS = ("onnx", "torchscript", "safetensors", "openvino")
DTYPES = ("float32", "float16", "bfloat16")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors", "openvino": ".xml"}


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


# ---------------------------------------------------------------------------- paths

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
    pretrained: bool = False,
    weights: str | None = None,
) -> ExportResult:
    """Export a checkpoint (or run directory) and, unless `verify` is False, verify it.

    A registry name exports with `pretrained` weights (its own classes, ImageNet's for timm's,
    and the weights' eval transform in the metadata) or a `weights` file, into the working
    folder (`timm_<name>.onnx`, ...) unless `out` says where; `int8` needs a run (its gate scores
    the network's classes on a test split of them).

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

    if fmt is None and out is None and dtype != "float32":  # `export run --half`: only safetensors stores it
        fmt = "safetensors"
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
        if not MIN_OPSET <= opset <= max_opset():
            raise InputError(f"--opset {opset} is outside what this setup supports ({MIN_OPSET}..{max_opset()})")
    if fmt == "onnx" and verify is None and not onnxruntime_available():
        note(f"not verifying: onnxruntime is not installed ({INSTALL_HINT})")
        verify = False
    elif fmt == "onnx" and verify:
        require_onnxruntime()
    verify = True if verify is None else verify

    where = locate_network(checkpoint)
    registry = where.kind in ("name", "model-file")
    if where.kind == "checkpoint" and (pretrained or weights):
        raise InputError(f"--pretrained and --weights apply to registry names; {checkpoint} is a checkpoint "
                         "with its own weights")
    if where.kind != "checkpoint" and not (registry and (pretrained or weights)):
        raise InputError(f"{checkpoint} is not a cnncli checkpoint or run directory; export needs one "
                         "(train or finetune a network first), or a registry name with --pretrained or --weights FILE")
    if registry and int8:
        raise InputError("--int8 needs a run: its gate scores the network on a test split of its own classes "
                         "(fine-tune first, or export the pretrained network in fp32)")
    source = where.path if not registry else Path(where.text.replace("/", "_") if where.kind == "name"
                                                   else Path(where.text).stem + ".safetensors")
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
    opened = open_network(where.text if registry else str(source), pretrained=pretrained, weights=weights)
    model, meta = opened.module, opened.document
    meta = meta.replace(exported_from=where.text if registry else str(source))
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
             f"({figures.drop_points:+.2f} points drop, the same class on {figures.agreement:.1%} of them) "
             f"on {figures.test_images} test images; "
             + "speed vs fp32 " + ", ".join(f"batch {b} {s:.2f}x" for b, s in figures.speedup.items())
             + (" (not faster: written because of --allow-slower)"
                if min(figures.speedup.values()) <= 1.0 else ""))
        if figures.coarse:
            from cnncli.output import warn

            warn(f"the int8 gate had {figures.test_images} test images: one image is "
                 f"{100 / figures.test_images:.2f} points, more than --max-drop {figures.max_drop:g}, so a drop "
                 "it would refuse cannot be told from none; give it more (--data with a larger test split)")
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
