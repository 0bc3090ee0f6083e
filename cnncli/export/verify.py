"""Proving an export: the inputs it is checked on, running the exported bytes by the runtime
that will run them elsewhere, and the bound the largest difference from PyTorch must meet."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

from cnncli.export.runtime import onnx_session

# Bounds on the largest absolute difference of the logits from the fp32 PyTorch network.
# fp32 exports should agree to rounding; rounded weights are judged relative to the size of
# the logits (a network with logits near 30 cannot be held to the same absolute figure as one
# near 1): fp16 keeps 11 significant bits, bf16 only 8.
FP32_TOLERANCE = 1e-4
RELATIVE_TOLERANCE = {"float16": 1e-2, "bfloat16": 6e-2}

# Datasets that load from disk in about a second, so verification can afford their test images;
# an image folder (decoding every file) or a generated set would cost more than the export.
QUICK_DATASETS = ("fashion-mnist", "fashion-mnist-mini", "cifar10")


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
    from cnncli.data.paths import recorded_dataset

    dataset = recorded_dataset(meta)
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
