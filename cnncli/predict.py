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
    tta: str = "none"  # test-time augmentation (cnncli.engine.tta): none, flip, multicrop

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [])

    def probabilities(self, images: Sequence) -> Any:
        """uint8 (C, H, W) images of any size -> softmax probabilities (N, K) on the CPU."""
        import torch

        from cnncli.data.transforms import prepare_images

        size, mean, std = self.meta["input_size"], self.meta["mean"], self.meta["std"]
        batch = prepare_images(list(images), size, mean, std, device=self.device)
        with torch.inference_mode():
            if self.tta != "none":
                from cnncli.data.transforms import prepare_batch
                from cnncli.engine.tta import average_probabilities, black_fill

                fill = black_fill(lambda b: prepare_batch(b, size, mean, std), batch.device)
                return average_probabilities(self.forward, batch, self.tta, fill).cpu()
            logits = self.forward(batch)
        return torch.softmax(logits.float(), dim=1).cpu()

    def decode(self, path: str):
        pipeline = self.meta.get("data_pipeline") if hasattr(self.meta, "get") else None
        if isinstance(pipeline, Mapping) and pipeline.get("kind") == "stream":
            # trained on a streaming dataset: the run's eval transform (shorter side, center crop)
            from cnncli.data.stream import photo_for_network

            return photo_for_network(path, self.meta["input_size"], pipeline.get("crop_pct"), pipeline.get("interpolation"))
        from cnncli.data.transforms import decode_image_file

        return decode_image_file(path)


@dataclass
class RuntimePredictor(Predictor):
    """An ONNX or OpenVINO file, run with numpy in and out: no torch anywhere."""

    def probabilities(self, images: Sequence) -> Any:
        from cnncli.deploy.preprocess import prepare_arrays, softmax

        batch = prepare_arrays(list(images), self.meta["input_size"], self.meta["mean"], self.meta["std"])
        if self.tta != "none":
            from cnncli.engine.tta import numpy_probabilities

            return numpy_probabilities(self.forward, batch, self.tta, self.meta["input_size"],
                                       self.meta["mean"], self.meta["std"])
        return softmax(self.forward(batch))

    def decode(self, path: str):
        from cnncli.deploy.preprocess import decode_image_array, photo_array_for_network

        pipeline = self.meta.get("data_pipeline") if hasattr(self.meta, "get") else None
        if isinstance(pipeline, Mapping) and pipeline.get("kind") == "stream":  # as Predictor.decode
            return photo_array_for_network(path, self.meta["input_size"], pipeline.get("crop_pct"),
                                           pipeline.get("interpolation"))
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
    tta: str = "none",
) -> Predictor:
    """A predictor for MODEL_OR_FILE: a checkpoint / run dir, an exported file or a registry name
    (opened through `cnncli.engine.open.open_network`); `tta`: test-time augmentation."""
    from cnncli.engine.open import EXPORTED_KINDS, locate_network, open_network
    from cnncli.engine.tta import check_tta

    tta = check_tta(tta)
    kind = locate_network(model).kind
    if kind in ("onnx", "openvino"):  # before anything that imports torch
        opened = open_network(model, pretrained=pretrained, weights=weights, exported=True, threads=threads)
        return RuntimePredictor(forward=opened.session.run, meta=opened.document, source=opened.kind,
                                device="cpu", model=opened.session.handle, tta=tta)
    from cnncli.engine.device import resolve_device, set_threads

    if kind in EXPORTED_KINDS and (pretrained or weights):
        open_network(model, pretrained=pretrained, weights=weights, exported=True)  # raises: one line
    set_threads(threads)
    dev = str(resolve_device(device))
    opened = open_network(model, pretrained=pretrained, weights=weights, device=dev, exported=True)
    source = {"pretrained": "pretrained", "weights": "pretrained"}.get(opened.kind, opened.kind)
    return Predictor(forward=opened.module, meta=opened.document, source=source, device=dev, model=opened.module,
                     tta=tta)


def load_network(model: str, pretrained: bool = False, weights: str | None = None,
                 device: str = "cpu"):
    """(torch module in eval mode, meta) for a checkpoint / run dir or a registry name with
    weights (`open_network`'s module and document)."""
    from cnncli.engine.open import open_network

    opened = open_network(model, pretrained=pretrained, weights=weights, device=device)
    return opened.module, opened.document


def class_names_for(num_classes: int) -> list[str]:
    """ImageNet-1k's class names (timm's table, its first synonym) for 1000 classes; else numbers."""
    from cnncli.engine.weights.imagenet import class_names_for as names_for

    return names_for(num_classes)


# ---------------------------------------------------------------------------- finding the files

def _is_image_name(path: Path) -> bool:
    from cnncli.data.formats import IMAGE_EXTENSIONS  # torch-free, every reader's list

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
                from cnncli.data.formats import IMAGE_EXTENSIONS

                raise InputError(f"no image files ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) in folder {arg}")
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
