"""Looking inside a network: feature maps, filters, the seed's fig. 8, curves and confusion.

The computations live here (which layer, which activations, which filters); the drawing is
`cnncli.plots`. A network is named as everywhere else: a checkpoint or run directory, or a
registry name (random weights unless `--pretrained` or `--weights`: the filters of an
untrained network are noise, which is worth seeing once too).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from cnncli.errors import InputError

SEED_FILTER_SIZE = 7
SEED_MAX_SIDE = 640  # the seed's figure works on a photo of about 427x640


# ---------------------------------------------------------------------------- networks and layers

def open_network(model: str, pretrained: bool = False, weights: str | None = None):
    """(module, meta) on the CPU: a checkpoint / run dir, or a registry name (random weights
    unless pretrained or a weights file is given)."""
    from cnncli.engine.open import open_network as open_any

    opened = open_any(model, pretrained=pretrained, weights=weights, untrained=True)
    return opened.module, opened.document


def layer_names(model) -> list[str]:
    """Every named submodule, in forward-definition order ("features.0", "layer1.0.conv1", ...)."""
    return [name for name, _ in model.named_modules() if name]


def conv_layer_names(model) -> list[str]:
    import torch.nn as nn

    return [name for name, m in model.named_modules() if name and isinstance(m, nn.Conv2d)]


def find_layer(model, name: str):
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    convs = conv_layer_names(model)
    known = layer_names(model)
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    listed = (convs or known)[:12]
    more = f" (and {len(convs or known) - len(listed)} more; 'cnncli inspect' lists them all)" \
        if len(convs or known) > len(listed) else ""
    raise InputError(f"no layer '{name}' in this network; {hint}"
                     f"{'convolution ' if convs else ''}layers are: {', '.join(listed)}{more}")


def first_conv_layer(model) -> str:
    convs = conv_layer_names(model)
    if not convs:
        raise InputError("this network has no convolution layer; pass --layer NAME")
    return convs[0]


# ---------------------------------------------------------------------------- feature maps

def load_image(path: str | os.PathLike):
    """One image file as uint8 (C, H, W); InputError naming the file otherwise."""
    from cnncli.data.transforms import decode_image_file

    return decode_image_file(path)


def feature_maps(model, meta: dict[str, Any], image, layer: str):
    """The output of `layer` (C, H, W) for one uint8 image prepared as the metadata says."""
    import torch

    from cnncli.data.transforms import prepare_images

    module = find_layer(model, layer)
    captured = []

    def hook(_module, _inputs, out):
        captured.append(out[0] if isinstance(out, (tuple, list)) else out)

    handle = module.register_forward_hook(hook)
    try:
        batch = prepare_images([image], meta["input_size"], meta["mean"], meta["std"])
        with torch.inference_mode():
            model(batch)
    finally:
        handle.remove()
    if not captured:
        raise InputError(f"layer '{layer}' is not used in the forward pass; choose another layer")
    out = captured[0]
    if not torch.is_tensor(out):
        raise InputError(f"layer '{layer}' does not output a tensor")
    return out[0].float()


def render_feature_maps(model: str, image: str, layer: str | None = None, out: str | os.PathLike | None = None,
                        pretrained: bool = False, weights: str | None = None, max_maps: int = 64) -> Path:
    from cnncli.plots import plot_feature_maps

    net, meta = open_network(model, pretrained, weights)
    layer = layer or first_conv_layer(net)
    find_layer(net, layer)  # an unknown name fails before the image is read
    maps = feature_maps(net, meta, load_image(image), layer)
    out = out or f"feature-maps-{Path(image).stem}-{_slug(layer)}.png"
    title = f"{meta['model']['name']} {layer} on {Path(image).name}: {tuple(maps.shape)}"
    return plot_feature_maps(maps, out, title=title, max_maps=max_maps)


# ---------------------------------------------------------------------------- filters

def render_filters(model: str, layer: str | None = None, out: str | os.PathLike | None = None,
                   pretrained: bool = False, weights: str | None = None, max_filters: int = 64) -> Path:
    """The filters of a convolution layer (the first one by default; in colour on RGB input)."""
    import torch.nn as nn

    from cnncli.plots import plot_filters

    net, meta = open_network(model, pretrained, weights)
    layer = layer or first_conv_layer(net)
    module = find_layer(net, layer)
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 4:
        # a block named like its convolution (conv1_1 = conv + batch norm + ReLU): its one conv
        inner = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
        if len(inner) == 1:
            layer = f"{layer}.{inner[0][0]}"
            module, weight = inner[0][1], inner[0][1].weight
    if not isinstance(module, nn.Conv2d) and (weight is None or weight.dim() != 4):
        raise InputError(f"layer '{layer}' is not a convolution; convolution layers are: "
                         f"{', '.join(conv_layer_names(net)[:12])}")
    out = out or f"filters-{_slug(meta['model']['name'])}-{_slug(layer)}.png"
    shape = "x".join(str(v) for v in weight.shape)
    return plot_filters(weight, out, title=f"{meta['model']['name']} {layer} ({shape})",
                        max_filters=max_filters)


# ---------------------------------------------------------------------------- the seed's fig. 8

def seed_line_filters(size: int = SEED_FILTER_SIZE):
    """The seed's two filters (fig. 8): zeros except a middle column (vertical) or a middle
    row (horizontal) of ones; shape (2, 1, size, size), vertical first."""
    import torch

    if size < 1 or size % 2 == 0:
        raise InputError(f"the filter size must be a positive odd number, got {size}")
    filters = torch.zeros(2, 1, size, size)
    filters[0, 0, :, size // 2] = 1.0
    filters[1, 0, size // 2, :] = 1.0
    return filters


def seed_feature_maps(gray, size: int = SEED_FILTER_SIZE):
    """(vertical map, horizontal map, filters) of a gray float image (H, W) in [0, 1]:
    one convolution layer of two feature maps, 'same' padding, stride 1, no bias."""
    import torch.nn.functional as F

    filters = seed_line_filters(size)
    maps = F.conv2d(gray[None, None], filters, padding="same")[0]
    return maps[0], maps[1], filters


def render_seed_filters(image: str, out: str | os.PathLike | None = None,
                        size: int = SEED_FILTER_SIZE) -> Path:
    """The seed's fig. 8 on any image: the input in gray and its two feature maps."""
    from cnncli.data.transforms import prepare_images
    from cnncli.plots import plot_seed_filters

    img = load_image(image)
    h, w = img.shape[1:]
    scale = min(1.0, SEED_MAX_SIDE / max(h, w))
    target = (1, max(1, round(h * scale)), max(1, round(w * scale)))
    gray = prepare_images([img], target, mean=[0.0], std=[1.0])[0, 0]  # [0, 1], as the seed's figure
    vertical, horizontal, filters = seed_feature_maps(gray, size)
    out = out or f"line-filters-{Path(image).stem}.png"
    return plot_seed_filters(gray, vertical, horizontal, filters[0, 0], filters[1, 0], out)


# ---------------------------------------------------------------------------- curves and confusion

def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a run (metrics.jsonl), skipping a torn last line."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl" if run_dir.is_dir() else run_dir
    if not path.exists():
        raise InputError(f"{path} not found; is {run_dir} a cnncli run directory?")
    if path.suffix == ".safetensors":
        raise InputError(f"{path} is a checkpoint; 'viz curves' takes its run directory (or metrics.jsonl)")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise InputError(f"{path} is {path.stat().st_size / 2**20:.0f} MiB; a run's metrics.jsonl is a few "
                         f"KiB (the limit is {MAX_TEXT_BYTES >> 20} MiB)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a metrics.jsonl file (not text); give a run directory") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}: line {i} is not JSON") from None
        if isinstance(row, dict):
            # a value that is not a number is not drawn (plots._series); the x axis must be epochs
            epoch = row.get("epoch", len(rows) + 1)
            if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch):
                raise InputError(f"{path}: line {i}: 'epoch' must be a number, got {epoch!r:.40}")
            rows.append(row)
    if not rows:
        raise InputError(f"{path} has no epochs yet")
    return rows


def render_curves(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """The run's curves, by default to RUN/curves-viz.png: curves.png is the run's own picture,
    which only the run rewrites."""
    from cnncli.plots import plot_curves

    history = read_history(run_dir)
    base = Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent
    return plot_curves(history, out or base / "curves-viz.png", title=_run_title(base))


def _run_title(run_dir: Path) -> str:
    """The title the run gave its own curves ('lenet5 on fashion-mnist'), else the folder's name."""
    import tomllib

    try:
        config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        config = {}
    model, data = config.get("model"), config.get("data")
    return f"{model} on {data}" if isinstance(model, str) and isinstance(data, str) else run_dir.name


MAX_TEXT_BYTES = 64 << 20  # a metrics.jsonl or eval.json read whole: far above any real one


def _check_counts(matrix, where) -> None:
    """A confusion matrix is a square table of counts: whole numbers from 0, refused otherwise."""
    n = len(matrix)
    for i, row in enumerate(matrix):
        if not isinstance(row, list) or len(row) != n:
            raise InputError(f"{where}: the confusion matrix must be square ({n} rows of {n} counts); "
                             f"row {i + 1} is not")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0 or v != int(v):
                raise InputError(f"{where}: confusion[{i}][{j}] is {v!r:.40}; a confusion matrix holds "
                                 "counts (whole numbers from 0)")


def read_confusion(source: str | os.PathLike) -> tuple[list[list[float]], list[str], str]:
    """(matrix, class names, title) from an `eval --json` document or a run directory."""
    source = Path(source)
    if source.is_dir():
        candidates = [source / "eval.json", source / "test_eval.json"]
        doc_path = next((c for c in candidates if c.exists()), None)
        if doc_path is None:
            raise InputError(f"{source} has no eval.json; write one with "
                             f"'cnncli eval {source} --json > {source}/eval.json'")
    else:
        doc_path = source
    try:
        if doc_path.stat().st_size > MAX_TEXT_BYTES:
            raise InputError(f"{doc_path} is {doc_path.stat().st_size / 2**20:.0f} MiB, not an 'eval --json' "
                             f"document (the limit is {MAX_TEXT_BYTES >> 20} MiB)")
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"file not found: {doc_path}") from None
    except RecursionError:
        raise InputError(f"{doc_path} is not an 'eval --json' document (nested too deeply)") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{doc_path} is not a JSON document (expected the output of 'cnncli eval --json')") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("confusion"), list):
        raise InputError(f"{doc_path} has no 'confusion' matrix (expected the output of 'cnncli eval --json')")
    per_class = doc.get("per_class") if isinstance(doc.get("per_class"), list) else []
    names = doc.get("class_names") or [p.get("class") for p in per_class if isinstance(p, dict)]
    if not isinstance(names, list):
        raise InputError(f"{doc_path}: 'class_names' must be a list of names")
    _check_counts(doc["confusion"], doc_path)
    title = " ".join(str(doc[k]) for k in ("model", "dataset", "split") if doc.get(k))
    return doc["confusion"], [str(n) for n in names] or None, title


def render_confusion(source: str | os.PathLike, out: str | os.PathLike | None = None,
                     normalize: bool = False) -> Path:
    from cnncli.plots import plot_confusion

    matrix, names, title = read_confusion(source)
    base = Path(source) if Path(source).is_dir() else Path(source).parent
    # confusion.png is a run's own (drawn for its loggers): this one says it is viz's
    return plot_confusion(matrix, names, out or base / "confusion-viz.png", normalize=normalize,
                          title=f"confusion matrix: {title}" if title else None)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
