"""One door to a network: `open_network(ref)` for every command that runs or looks at one.

A reference is a registry name (hand-built or `timm/<name>`), a TOML model file, a cnncli
checkpoint or run directory, or a file `cnncli export` wrote (.onnx, OpenVINO .xml, TorchScript
.pt) where the caller can use one (`exported=True`: predict). What comes back is one
`OpenedNetwork`: the module (or the runtime session), the document (the checkpoint's own, or
one made from the registry's defaults), and what the inputs must look like.

Weights: a checkpoint has its own (`--pretrained`/`--weights` are refused for it); a registry
name takes `pretrained` (the sources of `cnncli.engine.weights`, timm's download allowed) or a
`weights` file loaded strictly, or, where the caller allows it (`untrained=True`), none.
`backbone=True` (finetune) asks the weight sources in order for any reference: a --weights
file, the run itself, timm's cache, a weight package, timm's download when `pretrained`.

Nothing here imports torch before it knows it needs to: an ONNX or OpenVINO file opens without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnncli.errors import InputError

EXPORTED_KINDS = ("onnx", "openvino", "torchscript")


@dataclass(frozen=True)
class NetworkRef:
    """What a MODEL argument names, found without loading anything."""

    text: str
    kind: str  # "checkpoint", "onnx", "openvino", "torchscript", "model-file" or "name"
    path: Path | None = None  # the checkpoint's weights file, the exported file or the model file


def locate_network(ref: str) -> NetworkRef:
    """Classify a reference; a missing checkpoint, a folder that is not a run, or a missing
    model file is an InputError here."""
    text = str(ref)
    low = text.lower()
    if low.endswith(".xml"):
        return NetworkRef(text, "openvino", Path(text))
    if low.endswith(".onnx"):
        return NetworkRef(text, "onnx", Path(text))
    if text.endswith(".pt"):
        return NetworkRef(text, "torchscript", Path(text))
    from cnncli.checkpoint import is_checkpoint_ref, resolve_checkpoint_path
    from cnncli.models.info import is_model_file

    path = Path(text)
    if is_checkpoint_ref(text) or (path.is_file() and not is_model_file(text)):
        return NetworkRef(text, "checkpoint", resolve_checkpoint_path(text))
    if path.is_dir():
        resolve_checkpoint_path(text)  # raises: a folder that is not a run
    if is_model_file(text):
        if not path.is_file():
            raise InputError(f"model file not found: {text}")
        return NetworkRef(text, "model-file", path)
    return NetworkRef(text, "name")


@dataclass(frozen=True)
class OpenedNetwork:
    """A network ready to run, and what its inputs and outputs mean."""

    ref: str
    kind: str  # "checkpoint", "pretrained", "weights", "random", "backbone", "onnx", "onnx-int8", "openvino", "torchscript"
    document: Mapping[str, Any]  # a RunDocument (the checkpoint's own, or made here); an exported file's metadata
    module: Any = None  # the torch module (or TorchScript module) in eval mode on `device`
    session: Any = None  # cnncli.deploy.runtime.RuntimeModel for onnx / openvino
    weights_source: Mapping[str, Any] | None = None  # where the weights came from
    path: Path | None = None  # the file opened, when there is one
    spec: Mapping[str, Any] | None = None  # what a checkpoint stores to rebuild the network
    info: Any = None  # the registry's ModelInfo, when built from the registry
    descriptions: tuple[str, ...] | None = None  # the outputs' full labels (ImageNet's, with synonyms), if known
    device: str = "cpu"

    @property
    def input_size(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.document["input_size"])

    @property
    def mean(self) -> list[float]:
        return list(self.document["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.document["std"])

    @property
    def class_names(self) -> list[str]:
        return list(self.document.get("class_names") or [])

    @property
    def has_weights(self) -> bool:
        return self.kind != "random"


def open_network(ref: str, *, pretrained: bool = False, weights: str | None = None, device: str = "cpu",
                 num_classes: int | None = None, untrained: bool = False, exported: bool = False,
                 backbone: bool = False, threads: int | None = None) -> OpenedNetwork:
    """Open the network `ref` names (see the module's docstring for what each flag allows).

    `num_classes`: build a registry network with a `weights` file for that many classes.
    `threads`: for an exported file's runtime.
    """
    where = locate_network(ref)
    if where.kind in EXPORTED_KINDS:
        if pretrained or weights:
            raise InputError("--pretrained and --weights apply to registry names, not to an exported file")
        if not exported:
            raise InputError(f"{ref} is an exported file; this command takes a cnncli checkpoint, run "
                             "directory or registry name")
        return _open_exported(where, device, threads)
    if backbone:
        return _open_backbone(where, weights, pretrained, device)
    if where.kind == "checkpoint":
        if pretrained or weights:
            raise InputError("--pretrained and --weights apply to registry names; "
                             f"{ref} is a checkpoint with its own weights")
        from cnncli.checkpoint import load_model

        module, meta = load_model(where.path, device=device)
        return OpenedNetwork(where.text, "checkpoint", meta, module=module, path=where.path, spec=meta["model"],
                             weights_source={"kind": "checkpoint", "path": str(where.path)}, device=device)
    if pretrained and weights:
        raise InputError("pass either --pretrained or --weights, not both")
    if pretrained:
        # looked up on the package when called: a test may stand in for the sources
        from cnncli.engine import weights as W

        found = W.resolve_backbone(where.text, pretrained=True)
        info = found.info
        return _registry(where, "pretrained", found.model, found.spec, info, found.input_size, found.mean, found.std,
                         found.source, device, found.class_names)
    from cnncli.models.registry import build_model

    if weights:
        from cnncli.checkpoint import load_state_strict
        from cnncli.engine.weights import read_state_dict

        built = build_model(where.text, num_classes=num_classes)
        load_state_strict(built.module, read_state_dict(weights), weights)
        info = built.info
        return _registry(where, "weights", built.module, built.spec, info, info.input_size, info.mean, info.std,
                         {"kind": "file", "path": str(weights)}, device)
    if not untrained:
        raise InputError(f"'{ref}' is a registry name without weights: pass --pretrained (timm models) "
                         "or --weights FILE, or give a cnncli checkpoint")
    built = build_model(where.text, num_classes=num_classes)
    info = built.info
    return _registry(where, "random", built.module, built.spec, info, info.input_size, info.mean, info.std,
                     None, device)


def _registry(where: NetworkRef, kind: str, module, spec, info, input_size, mean, std, source, device,
              descriptions=None) -> OpenedNetwork:
    """A registry network's document: the registry's input size and mean/std (those of its
    weights when pretrained), ImageNet's class names for 1000 classes, where the weights came from."""
    from cnncli.checkpoint import build_document
    from cnncli.engine.weights.imagenet import class_names_for

    classes = int((spec or {}).get("num_classes") or info.num_classes)
    extra = {"pretrained_source": source} if source is not None else {"weights": "random (untrained)"}
    if kind in ("pretrained", "weights"):
        # predict prepares files as the weights were evaluated (timm's validate does the same for a
        # checkpoint file of a timm network): the shorter side, the centre crop, the config's resize
        from cnncli.data.stream import DEFAULT_CROP_PCT, weights_pipeline

        pipeline = weights_pipeline(info) or ({"kind": "stream", "crop_pct": DEFAULT_CROP_PCT}
                                              if kind == "pretrained" else None)
        if pipeline:
            extra["data_pipeline"] = pipeline
    doc = build_document(model=spec, num_classes=classes, class_names=class_names_for(classes),
                         input_size=input_size, mean=mean, std=std,
                         dataset="imagenet" if source is not None and classes == 1000 else None, extra=extra)
    return OpenedNetwork(where.text, kind, doc, module=module.to(device).eval(), weights_source=source,
                         path=where.path, spec=dict(spec), info=info,
                         descriptions=tuple(descriptions) if descriptions else None, device=device)


def _open_backbone(where: NetworkRef, weights, pretrained, device) -> OpenedNetwork:
    """finetune's network: weights from the first source that has them, the module as built
    (still in training mode, its own classifier on) on `device`."""
    from cnncli.checkpoint import build_document
    from cnncli.engine import weights as W

    found = W.resolve_backbone(where.text, weights, pretrained)
    doc = build_document(model=found.spec or {"name": where.text}, class_names=found.class_names,
                         input_size=found.input_size, mean=found.mean, std=found.std,
                         extra={"weights_source": found.source})
    return OpenedNetwork(where.text, "backbone", doc, module=found.model.to(device), weights_source=found.source,
                         path=where.path, spec=found.spec, info=found.info,
                         descriptions=tuple(found.class_names) if found.class_names else None, device=device)


def _open_exported(where: NetworkRef, device: str, threads: int | None) -> OpenedNetwork:
    if where.kind in ("onnx", "openvino"):
        from cnncli.deploy.runtime import open_runtime

        opened = open_runtime(where.path, threads)
        return OpenedNetwork(where.text, opened.kind, opened.meta, session=opened, path=where.path, device="cpu")
    import io
    import warnings

    import torch

    from cnncli.export import read_torchscript_meta

    if not where.path.is_file():
        raise InputError(f"file not found: {where.path}")
    data = where.path.read_bytes()
    try:
        meta = read_torchscript_meta(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
            module = torch.jit.load(io.BytesIO(data), map_location=device).eval()
    except Exception as e:  # noqa: BLE001 - not an archive cnncli wrote: say so in one line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise InputError(f"{where.path}: not a TorchScript file from 'cnncli export' ({reason})") from None
    if not isinstance(meta, dict) or not meta.get("input_size"):
        raise InputError(f"{where.path}: cnncli metadata without an input size")
    from cnncli.deploy.runtime import check_document

    check_document(where.path, meta)  # the checkpoint's checks, and the input's cost
    if not meta.get("class_names"):
        meta["class_names"] = [str(i) for i in range(int(meta.get("num_classes") or 0))]
    return OpenedNetwork(where.text, "torchscript", meta, module=module, path=where.path, device=device)
