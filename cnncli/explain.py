"""Why the network answered what it answered: class activation maps on the grad-cam package.

The maths is pytorch-grad-cam's (`pytorch_grad_cam`, the `explain` extra); this module gives
it cnncli's names and guarantees:

* networks open as for `predict` (checkpoint or run, registry name with --pretrained/--weights),
  and images are prepared exactly as the network's metadata says;
* the target layer is a row of `cnncli inspect`'s table: `auto` takes the last row whose output
  is still a spatial map of at least 2x2 before global pooling, a NAME must be a row with a
  spatial output, and the receptive field `inspect` reports for that row is the one drawn
  around the map's peak;
* the map comes back at the input image's own height x width, float32 in [0, 1]; a network
  that sees only a centre crop of a photo (a run trained on a streamed folder, a pretrained
  network: their eval transform) is given that crop, as `predict` gives it, and its map is zero
  outside it (`seen`: the crop's box in image pixels, drawn on the overlay);
* everything that can be refused (layer, target class, unreadable image) is refused before a
  file is written.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnncli.errors import CnnError, InputError

# cnncli's method names -> pytorch_grad_cam's classes
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
}
EXTRA_HINT = "pip install 'cnncli[explain]' (or: pip install grad-cam)"


def require_grad_cam():
    """The pytorch_grad_cam module, or one line naming the extra to install (exit 1)."""
    try:
        import pytorch_grad_cam
    except ImportError:
        raise CnnError(f"class activation maps need the grad-cam package: {EXTRA_HINT}") from None
    return pytorch_grad_cam


# ---------------------------------------------------------------------------- the target layer

@dataclass
class CamLayer:
    """A row of the inspect table that a map can be taken from."""

    name: str  # the row's name, as `cnncli inspect` prints it
    module: Any  # the nn.Module whose output is the row's output
    output_shape: list[int]  # (C, H, W)
    receptive_field: list[int] | None  # [h, w] in network-input pixels


def _is_spatial(row) -> bool:
    shape = row.output_shape
    return len(shape) == 3 and shape[1] >= 2 and shape[2] >= 2


def _is_global(row) -> bool:
    """Global pooling, or any row after which the map is gone (a vector, or 1x1)."""
    shape = row.output_shape
    return "Global" in row.type or len(shape) != 3 or (shape[1] == 1 and shape[2] == 1)


def cam_layers(model, input_size: Sequence[int]) -> list:
    """The rows of `inspect`'s table (cnncli.summary) for this network and input."""
    from cnncli.summary import summarize

    return summarize(model, input_size=tuple(int(v) for v in input_size)).rows


def resolve_layer(model, input_size: Sequence[int], layer: str = "auto") -> CamLayer:
    """The row named `layer` (or chosen by `auto`), mapped to its module; InputError otherwise."""
    rows = cam_layers(model, input_size)
    usable = [r for r in rows if _is_spatial(r)]
    if layer == "auto":
        chosen = None
        for row in rows:
            if _is_global(row) and chosen is not None:
                break
            if _is_spatial(row):
                chosen = row
        if chosen is None:
            raise InputError("this network has no layer with a spatial output of at least 2x2; "
                             "class activation maps need one")
    else:
        by_name = {r.name: r for r in rows}
        chosen = by_name.get(layer)
        listed = ", ".join(r.name for r in usable[-12:])
        more = f" (the last 12 of {len(usable)}; 'cnncli inspect' shows them all)" if len(usable) > 12 else ""
        if chosen is None:
            import difflib

            close = difflib.get_close_matches(layer, list(by_name), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise InputError(f"no layer '{layer}' in this network's 'cnncli inspect' table; {hint}"
                             f"layers with a spatial output: {listed}{more}")
        if not _is_spatial(chosen):
            shape = "x".join(str(v) for v in chosen.output_shape)
            raise InputError(f"layer '{layer}' has no spatial output (its output is {shape}); "
                             f"layers with a spatial output: {listed}{more}")
    modules = dict(model.named_modules())
    module = modules.get(chosen.name, model if chosen.depth == 0 else None)
    if module is None:  # pragma: no cover - the table and the module tree disagree
        raise CnnError(f"layer '{chosen.name}' of the table is not a module of the network")
    module = _output_module(model, module, input_size)
    return CamLayer(chosen.name, module, list(chosen.output_shape), chosen.receptive_field)


def _output_module(model, module, input_size):
    """The module whose output is the row's output: inspect folds an activation module that
    directly follows a layer into that layer's row (conv -> ReLU is one row), so the map is
    taken after the activation, as the row shows it."""
    import torch

    seen: dict = {"out": None, "next": None}

    def after_row(_m, _args, out):
        seen["out"] = out if seen["out"] is None else seen["out"]

    def before_any(m, args):
        if seen["out"] is not None and seen["next"] is None and m is not module:
            first = args[0] if args else None
            if first is seen["out"] and type(m).__module__ == "torch.nn.modules.activation":
                seen["next"] = m
            elif not any(True for _ in m.children()):
                seen["next"] = False  # another layer ran first: nothing to fold

    handles = [module.register_forward_hook(after_row)]
    handles += [m.register_forward_pre_hook(before_any) for m in model.modules() if m is not module]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *[int(v) for v in input_size]), device=_device_of(model)))
    finally:
        for h in handles:
            h.remove()
    return seen["next"] or module


def _device_of(model):
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------- the target class

def resolve_target(target: str | int | None, class_names: Sequence[str]) -> int | None:
    """None for `top` (the predicted class), else the class index for a name or a number."""
    if target is None or str(target) == "top":
        return None
    names = list(class_names)
    text = str(target).strip()
    if text in names:
        return names.index(text)
    lowered = [n.lower() for n in names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < len(names):
            return index
        raise InputError(f"--target {text}: the network has classes 0 to {len(names) - 1}")
    import difflib

    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(names[:10]) + (f" ... ({len(names)} in all)" if len(names) > 10 else "")
    raise InputError(f"--target '{text}' is not a class of this network{hint} (classes: {shown}; "
                     "or give an index, or 'top')")


# ---------------------------------------------------------------------------- one map

@dataclass
class CamResult:
    """One image's class activation map and what it was taken for."""

    cam: Any  # numpy float32 (H, W) at the image's own size, values in [0, 1]
    index: int  # the target class
    class_name: str
    prob: float  # the network's probability of the target class
    predicted: dict[str, Any]  # {"class", "index", "prob"} of the top class
    layer: str
    method: str
    receptive_field: list[int] | None  # in network-input pixels
    box: list[float] | None  # [x0, y0, x1, y1] in image pixels: the receptive field of the peak
    extras: dict[str, Any] = field(default_factory=dict)
    seen: list[int] | None = None  # [x0, y0, x1, y1]: the centre crop the network saw (None: all of it)


class Explainer:
    """A network with one grad-cam method on one layer, ready for many images."""

    def __init__(self, model, meta: dict[str, Any], method: str = "gradcam", layer: str = "auto"):
        if method not in METHODS:
            raise InputError(f"unknown method '{method}'; choose one of: {', '.join(METHODS)}")
        grad_cam = require_grad_cam()
        for m in model.modules():  # an in-place activation would rewrite the saved activations
            if isinstance(getattr(m, "inplace", None), bool):
                m.inplace = False
        for p in model.parameters():  # frozen layers still pass gradients back to the target layer
            p.requires_grad_(True)
        self.model = model.eval()
        self.meta = meta
        self.method = method
        self.input_size = [int(v) for v in meta["input_size"]]
        self.layer = resolve_layer(model, self.input_size, layer)
        self.class_names = list(meta.get("class_names") or [])
        pipeline = meta.get("data_pipeline") if hasattr(meta, "get") else None
        self.crop_pct = None  # the centre crop of a streaming eval transform (data/stream.py), if any
        if isinstance(pipeline, Mapping) and pipeline.get("kind") == "stream":
            from cnncli.data.stream import DEFAULT_CROP_PCT

            self.crop_pct = float(pipeline.get("crop_pct") or DEFAULT_CROP_PCT)
        self.interpolation = (pipeline or {}).get("interpolation") if self.crop_pct else None
        self.cam = getattr(grad_cam, METHODS[method])(model=model, target_layers=[self.layer.module])
        if method == "scorecam":
            self.cam.batch_size = 32

    def explain(self, image, target: int | None = None, network_image=None) -> CamResult:
        """The map of one uint8 (C, H, W) image, for `target` (None: the predicted class).

        `network_image`: what the network is given, where the caller has it (`explain_files`: the
        file through predict's decoder); else the image through the eval transform."""
        import numpy as np
        import torch
        import torch.nn.functional as F
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        from cnncli.data.transforms import prepare_images

        h, w = int(image.shape[-2]), int(image.shape[-1])
        seen = self.seen_box(h, w)
        x0, y0, x1, y1 = seen or (0, 0, w, h)
        if network_image is None and seen is not None:  # resized, then cropped: predict's pixels
            from cnncli.data.stream import PhotoTransform, StreamConfig, interpolation_of

            size, channels = int(self.input_size[1]), int(self.input_size[0])
            network_image = PhotoTransform(StreamConfig(size=size, channels=channels, crop_pct=self.crop_pct,
                                                        interpolation=interpolation_of(self.interpolation))).apply(image, 0)
        batch = prepare_images([image if network_image is None else network_image], self.input_size,
                               self.meta["mean"], self.meta["std"], device=_device_of(self.model))
        targets = None if target is None else [ClassifierOutputTarget(int(target))]
        # ScoreCAM draws a tqdm bar per image on stderr: noise in a command's output
        quiet = contextlib.redirect_stderr(io.StringIO()) if self.method == "scorecam" else contextlib.nullcontext()
        with torch.enable_grad(), quiet:
            maps = self.cam(input_tensor=batch, targets=targets)
        logits = self.cam.outputs.detach().float().cpu()
        if logits.dim() != 2:
            raise CnnError(f"the network's output has shape {tuple(logits.shape)}, not one score per class")
        probs = torch.softmax(logits, dim=1)[0]
        top = int(probs.argmax())
        index = top if target is None else int(target)
        cam_in = torch.from_numpy(np.ascontiguousarray(maps[0], dtype=np.float32))
        part = F.interpolate(cam_in[None, None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0, 0]
        cam = np.zeros((h, w), dtype=np.float32)
        cam[y0:y1, x0:x1] = part.clamp_(0.0, 1.0).numpy()
        box = self._peak_box(cam_in.numpy(), y1 - y0, x1 - x0)
        if box is not None:
            box = [round(box[0] + x0, 2), round(box[1] + y0, 2), round(box[2] + x0, 2), round(box[3] + y0, 2)]
        return CamResult(cam=cam, index=index, class_name=self._name(index), prob=float(probs[index]),
                         predicted={"class": self._name(top), "index": top, "prob": float(probs[top])},
                         layer=self.layer.name, method=self.method,
                         receptive_field=self.layer.receptive_field, box=box, seen=seen)

    def seen_box(self, h: int, w: int) -> list[int] | None:
        """[x0, y0, x1, y1] of an h x w image that the eval transform's centre crop keeps: the
        shorter side resized to size / crop_pct, size x size in the middle (torchvision's Resize(int)
        and CenterCrop), in the image's own pixels; None where the network sees the whole image."""
        if self.crop_pct is None:
            return None
        import math

        size = int(self.input_size[1])
        resize_to = max(size, int(math.floor(size / self.crop_pct)))
        nh, nw = (resize_to, int(resize_to * w / h)) if h <= w else (int(resize_to * h / w), resize_to)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        y0, x0 = round(top * h / nh), round(left * w / nw)
        y1, x1 = max(y0 + 1, round((top + size) * h / nh)), max(x0 + 1, round((left + size) * w / nw))
        return [x0, y0, min(w, x1), min(h, y1)]

    def _name(self, index: int) -> str:
        return self.class_names[index] if index < len(self.class_names) else str(index)

    def _peak_box(self, cam_in, h: int, w: int) -> list[float] | None:
        """The receptive field of the layer's unit at the map's peak, in image pixels."""
        import numpy as np

        rf = self.layer.receptive_field
        if rf is None or not np.isfinite(cam_in).all():
            return None
        in_h, in_w = cam_in.shape
        py, px = np.unravel_index(int(np.argmax(cam_in)), cam_in.shape)
        lh, lw = self.layer.output_shape[1], self.layer.output_shape[2]
        cy = (int(py * lh / in_h) + 0.5) * in_h / lh  # centre of the unit's cell, input pixels
        cx = (int(px * lw / in_w) + 0.5) * in_w / lw
        y0, y1 = max(0.0, cy - rf[0] / 2), min(float(in_h), cy + rf[0] / 2)
        x0, x1 = max(0.0, cx - rf[1] / 2), min(float(in_w), cx + rf[1] / 2)
        sy, sx = h / in_h, w / in_w
        return [round(x0 * sx, 2), round(y0 * sy, 2), round(x1 * sx, 2), round(y1 * sy, 2)]


def mass_in(cam, box: Sequence[int]) -> float:
    """The share of a map's total that lies in [x0, y0, x1, y1) (pixels): how much of the
    explanation falls on a region."""
    import numpy as np

    cam = np.asarray(cam, dtype=np.float64)
    total = cam.sum()
    if total <= 0:
        return 0.0
    x0, y0, x1, y1 = (int(v) for v in box)
    return float(cam[y0:y1, x0:x1].sum() / total)


# ---------------------------------------------------------------------------- files

def open_explainer(model: str, method: str = "gradcam", layer: str = "auto", pretrained: bool = False,
                   weights: str | None = None, device: str = "cpu") -> Explainer:
    """An Explainer for a checkpoint / run, or a registry name with pretrained weights or a file."""
    from cnncli.engine.device import resolve_device
    from cnncli.predict import load_network

    if str(model).endswith(".onnx"):
        raise InputError("explain needs the PyTorch network (maps come from its gradients and "
                         "activations); give the checkpoint or run the ONNX file was exported from")
    if method not in METHODS:
        raise InputError(f"unknown method '{method}'; choose one of: {', '.join(METHODS)}")
    require_grad_cam()
    net, meta = load_network(model, pretrained=pretrained, weights=weights, device=str(resolve_device(device)))
    if not meta.get("class_names"):
        meta["class_names"] = [str(i) for i in range(int(meta.get("num_classes") or 0))]
    return Explainer(net, meta, method=method, layer=layer)


@dataclass
class Explained:
    """One image's files and its JSON line."""

    path: str
    result: CamResult
    overlay: Path
    map: Path | None

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {"path": self.path, "class": r.class_name, "index": r.index, "prob": r.prob,
                "predicted": r.predicted, "layer": r.layer, "method": r.method,
                "receptive_field": r.receptive_field, "box": r.box, "seen": r.seen, "overlay": str(self.overlay),
                "map": str(self.map) if self.map is not None else None}


def output_paths(images: Sequence[str], out_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(overlay PNG, map .npy) per image: `<stem>.cam.png` / `<stem>.cam.npy` in out_dir, with
    `-2`, `-3`, ... when two images share a stem."""
    out_dir = Path(out_dir)
    used: dict[str, int] = {}
    paths = []
    for image in images:
        stem = Path(image).stem or "image"
        used[stem] = used.get(stem, 0) + 1
        name = stem if used[stem] == 1 else f"{stem}-{used[stem]}"
        paths.append((out_dir / f"{name}.cam.png", out_dir / f"{name}.cam.npy"))
    return paths


def explain_files(explainer: Explainer, images: Sequence[str], out_dir: str | os.PathLike = ".",
                  target: str | None = None, save_maps: bool = False) -> Iterator[Explained]:
    """Overlays (and maps) for image files. Everything is checked before the first file is
    written: the target class, every image (decoded once here), the output paths."""
    from cnncli.data.transforms import decode_image_file
    from cnncli.outputs import NPY, PNG, check_file, check_folder, write_file

    index = resolve_target(target, explainer.class_names)
    for path in images:  # an unreadable or too large image is one line and exit 2, before any file
        check_image_cost(path, decode_image_file(path))
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder; choose another --out")
    paths = output_paths(images, out_dir)
    if out_dir.is_dir():  # what is already there is checked before anything is drawn
        for overlay, map_path in paths:
            check_file(overlay, PNG)
            if save_maps:
                check_file(map_path, NPY)
    check_folder(out_dir)
    warned = False
    for path, (overlay, map_path) in zip(images, paths):
        network_image = None
        if explainer.crop_pct is None:
            image = decode_image_file(path)
        else:  # decoded as predict decodes it (EXIF on every format; a large JPEG at DCT scale)
            from cnncli.data.stream import decode_photo, photo_for_network

            image = decode_photo(path)
            network_image = photo_for_network(path, explainer.input_size, explainer.crop_pct, explainer.interpolation)
        result = explainer.explain(image, index, network_image)
        if not warned and not result.cam.any():
            from cnncli import output

            warned = True
            output.warn(f"{path}: the {explainer.method} map on {explainer.layer.name} is zero everywhere (its "
                        "channel weights cancel out, as with a dense layer on a flattened map); "
                        "try --method layercam or scorecam")
        plot_overlay(image, result, overlay, title_name=Path(path).name)
        saved = None
        if save_maps:
            saved = write_file(map_path, _npy_bytes(result.cam), NPY)
        yield Explained(str(path), result, overlay, saved)


MAX_PIXELS = 25_000_000  # the map, its overlay and their float copies: ~50 bytes a pixel
BYTES_PER_PIXEL = 50


def check_image_cost(path, image) -> None:
    """Refuse an image whose map and overlay would cost more than MAX_PIXELS allows, saying the price."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    if h * w > MAX_PIXELS:
        from cnncli.output import human_bytes

        raise InputError(f"{path}: {w}x{h} pixels: its map and overlay at that size would take about "
                         f"{human_bytes(h * w * BYTES_PER_PIXEL)}; explain takes images of up to "
                         f"{MAX_PIXELS // 1_000_000} megapixels, resize it first")


def _npy_bytes(array) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


# ---------------------------------------------------------------------------- the picture

def image_for_display(image):
    """uint8 (C, H, W) tensor -> float (H, W, 3) numpy in [0, 1]."""
    import numpy as np

    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    array = array.astype(np.float32) / 255.0
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    return np.transpose(array[:3], (1, 2, 0))


def draw_overlay(ax, image, result: CamResult, title: str | None = None) -> None:
    """The image, the map over it (jet, half transparent) and the peak's receptive field box."""
    from matplotlib.patches import Rectangle

    shown = image_for_display(image)
    small = max(shown.shape[:2]) < 128
    ax.imshow(shown, interpolation="nearest" if small else "antialiased")
    ax.imshow(result.cam, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0,
              interpolation="nearest" if small else "antialiased")
    if result.box is not None:
        x0, y0, x1, y1 = result.box
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white",
                               linewidth=1.5, linestyle="--"))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def overlay_array(image, cam, alpha: float = 0.45):
    """uint8 (H, W, 3): the image (gray made RGB) with the map over it in matplotlib's jet."""
    import numpy as np
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0), bytes=True)[..., :3].astype(np.float32)
    shown = image_for_display(image) * np.float32(255 * (1 - alpha))
    return np.round(shown + np.float32(alpha) * heat).astype(np.uint8)


def plot_overlay(image, result: CamResult, out_path: str | os.PathLike, title_name: str = "") -> Path:
    """One overlay PNG, titled with class, probability, layer and method, the peak's receptive
    field drawn as a box. Drawn with Pillow, at the image's own size (small images enlarged by
    a whole factor, pixels kept sharp): a matplotlib figure costs more than the map itself."""
    from PIL import Image, ImageDraw, ImageFont

    from cnncli.outputs import PNG, write_file

    picture = Image.fromarray(overlay_array(image, result.cam))
    h, w = picture.height, picture.width
    factor = max(1, -(-256 // max(h, w)))
    if factor > 1:
        picture = picture.resize((w * factor, h * factor), Image.NEAREST)
    rf = "x".join(str(v) for v in result.receptive_field) if result.receptive_field else "?"
    lines = [f"{title_name + ': ' if title_name else ''}{result.class_name} (p={result.prob:.3f})",
             f"{result.method} on {result.layer}, receptive field {rf}"
             + (", centre crop (black box)" if result.seen is not None else "")]
    font_size = max(11, min(20, picture.width // 28))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    bar = int(font_size * 1.3) * len(lines) + 8
    canvas = Image.new("RGB", (picture.width, picture.height + bar), "white")
    canvas.paste(picture, (0, bar))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, 4 + i * int(font_size * 1.3)), line, fill="black", font=font)
    if result.seen is not None:  # the centre crop the network saw: the map is zero outside it
        x0, y0, x1, y1 = (v * factor for v in result.seen)
        draw.rectangle([x0, y0 + bar, max(x0, x1 - 1), max(y0, y1 - 1) + bar], outline="black",
                       width=max(1, picture.width // 300))
    if result.box is not None:
        x0, y0, x1, y1 = (v * factor for v in result.box)
        draw.rectangle([x0, y0 + bar, max(x0, x1 - 1), max(y0, y1 - 1) + bar], outline="white",
                       width=max(1, picture.width // 200))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return write_file(out_path, buf.getvalue(), PNG)
