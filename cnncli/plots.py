"""Pictures as PNG files: training curves, confusion matrices, feature maps and filters.

Everything is drawn on a bare `matplotlib.figure.Figure` with the Agg canvas, never through
pyplot, so no window is ever opened, no global figure state leaks between calls, and the
module works on a machine without a display. Each function writes its PNG atomically
(`cnncli.fileio`) and returns the path. Arrays may be numpy arrays or torch tensors; this
module never imports torch itself.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnncli.errors import InputError
from cnncli.outputs import PNG, write_file

DPI = 100


def _figure(width: float, height: float):
    # Imported here so that `import cnncli.plots` costs nothing until something is drawn.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return write_file(out_path, buf.getvalue(), PNG)


def _to_numpy(array: Any):
    import numpy as np

    if hasattr(array, "detach"):  # a torch tensor, possibly on a GPU or in half precision
        array = array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def _series(history: Sequence[dict], key: str) -> tuple[list, list]:
    """(epochs, values) for the epochs that have a finite value under `key`."""
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(row.get("epoch", i + 1))
            ys.append(float(value))
    return xs, ys


def plot_curves(history: Sequence[dict], out_path: str | os.PathLike, title: str | None = None) -> Path:
    """Loss and top-1 accuracy per epoch, training and validation side by side.

    `history` is the list of per-epoch records (metrics.jsonl rows) with keys `epoch`,
    `train_loss`, `train_top1`, `val_loss`, `val_top1`; missing or non-finite values
    (no validation split, a diverged epoch) are left out rather than drawn as zero.
    """
    if not history:
        raise InputError("no epochs to plot: the run has no metrics yet")
    fig = _figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    drawn = 0
    for ax, metric, label in ((ax_loss, "loss", "loss"), (ax_acc, "top1", "top-1 accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            xs, ys = _series(history, f"{split}_{metric}")
            if xs:
                ax.plot(xs, ys, style, markersize=3, label=split)
                drawn += 1
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    if not drawn:
        raise InputError("no epochs with train/val loss or top-1 to plot")
    if title:
        fig.suptitle(title)
    return _save(fig, out_path)


def plot_lr_find(doc: dict, out_path: str | os.PathLike, title: str | None = None) -> Path:
    """The learning-rate range test: smoothed loss against the learning rate (log axis), the
    raw losses faint behind it, each suggestion marked where it was read off the curve.

    `doc` is `LrFindResult.to_dict()` (points: [{lr, loss, raw_loss}], suggestions: {name: {lr, at_lr, loss}})."""
    points = doc.get("points") or []
    if not points:
        raise InputError("no learning-rate points to plot")
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    lrs = [p["lr"] for p in points]
    ax.plot(lrs, [p["raw_loss"] for p in points], color="0.75", linewidth=0.8, label="loss")
    ax.plot(lrs, [p["loss"] for p in points], color="C0", linewidth=1.8, label="smoothed loss")
    for (name, s), colour in zip((doc.get("suggestions") or {}).items(), ("C1", "C2", "C3", "C4")):
        ax.plot([s["at_lr"]], [s["loss"]], "o", color=colour, markersize=7, label=f"{name}: {s['lr']:.2e}")
        ax.axvline(s["lr"], color=colour, linestyle=":", linewidth=1)
    smooth = [p["loss"] for p in points]
    low, high = min(smooth), max(smooth[:-5] or smooth)  # the raw losses' spikes do not set the scale
    pad = 0.1 * (high - low) or 0.1 * abs(high) or 0.1
    ax.set_ylim(low - pad, high + 2 * pad)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best")
    if title:
        ax.set_title(title)
    return _save(fig, out_path)


def plot_confusion(
    matrix: Sequence[Sequence[float]],
    class_names: Sequence[str] | None,
    out_path: str | os.PathLike,
    normalize: bool = False,
    title: str | None = None,
) -> Path:
    """A confusion matrix (rows: true class, columns: predicted class) as a heat map.

    With `normalize` each row is divided by its total, so the diagonal reads as per-class
    recall. Counts are written in the cells while the matrix is small enough to read them.
    """
    import numpy as np

    m = _to_numpy(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise InputError(f"a confusion matrix must be square and non-empty, got shape {tuple(m.shape)}")
    n = m.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(n)]
    if len(names) != n:
        raise InputError(f"{len(names)} class names for a {n}x{n} confusion matrix")
    if normalize:
        totals = m.sum(axis=1, keepdims=True)
        m = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    side = min(max(4.0, 0.45 * n + 2), 30.0)
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=(1.0 if normalize else max(float(m.max()), 1.0)))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
    if n <= 20:
        threshold = (m.max() if m.size else 0) / 2
        for i in range(n):
            for j in range(n):
                text = f"{m[i, j]:.2f}" if normalize else f"{int(round(m[i, j]))}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > threshold else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("confusion matrix (row-normalized)" if normalize else "confusion matrix"))
    return _save(fig, out_path)


def _grid(count: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def plot_feature_maps(
    maps: Any,
    out_path: str | os.PathLike,
    title: str | None = None,
    max_maps: int = 64,
) -> Path:
    """The feature maps of one layer for one image, (C, H, W), as a grid of gray images.

    Each map is scaled to its own range, since a map's pattern, not its absolute level, is
    what the picture is for; at most `max_maps` are drawn (the first ones).
    """
    a = _to_numpy(maps)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 1:  # a vector (after a dense layer): draw it as one row
        a = a[None, None, :]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"feature maps must be (channels, height, width), got shape {tuple(a.shape)}")
    shown = min(a.shape[0], max_maps)
    rows, cols = _grid(shown)
    fig = _figure(1.6 * cols, 1.6 * rows + (0.4 if title else 0))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < shown:
            ax.imshow(a[k], cmap="gray", interpolation="nearest")
            ax.set_title(str(k), fontsize=7)
    suffix = f" (first {shown} of {a.shape[0]})" if shown < a.shape[0] else ""
    if title or suffix:
        fig.suptitle((title or "feature maps") + suffix)
    return _save(fig, out_path)


def plot_filters(
    weight: Any,
    out_path: str | os.PathLike,
    title: str | None = None,
    max_filters: int = 64,
) -> Path:
    """Convolution filters (out, in, kh, kw) as a grid.

    Filters that see three input channels (a first layer on colour images) are drawn in
    colour, all filters sharing one scale so that their colours compare; otherwise each
    filter's input channels are averaged into one gray image.
    """
    import numpy as np

    w = _to_numpy(weight)
    if w.ndim != 4:
        raise InputError(f"filters must be a 4-d convolution weight (out, in, kh, kw), got shape {tuple(w.shape)}")
    total = w.shape[0]
    shown = min(total, max_filters)
    w = w[:shown]
    colour = w.shape[1] == 3
    if colour:
        lo, hi = float(w.min()), float(w.max())
        images = [np.transpose((f - lo) / (hi - lo if hi > lo else 1.0), (1, 2, 0)) for f in w]
    else:
        images = [f.mean(axis=0) for f in w]
    rows, cols = _grid(shown)
    fig = _figure(1.2 * cols, 1.2 * rows + (0.4 if title else 0))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < shown:
            if colour:
                ax.imshow(images[k], interpolation="nearest")
            else:
                ax.imshow(images[k], cmap="gray", interpolation="nearest")
    fig.suptitle((title or "filters") + (f" (first {shown} of {total})" if shown < total else ""))
    return _save(fig, out_path)


def plot_seed_filters(
    image: Any,
    vertical_map: Any,
    horizontal_map: Any,
    vertical_filter: Any,
    horizontal_filter: Any,
    out_path: str | os.PathLike,
) -> Path:
    """The seed's fig. 8: the two feature maps on top (with their filters), the input below."""
    img = _to_numpy(image)
    aspect = img.shape[0] / max(img.shape[1], 1)  # height / width
    fig = _figure(10, 9 * aspect + 1.2)
    grid = fig.add_gridspec(2, 4, height_ratios=[4, 5], width_ratios=[1, 0.22, 1, 0.22])
    for col, (fmap, filt, name) in enumerate(((vertical_map, vertical_filter, "vertical"),
                                              (horizontal_map, horizontal_filter, "horizontal"))):
        ax = fig.add_subplot(grid[0, 2 * col])
        ax.imshow(_to_numpy(fmap), cmap="gray")
        ax.set_title(f"feature map, {name} filter", fontsize=9)
        ax.set_axis_off()
        ax_f = fig.add_subplot(grid[0, 2 * col + 1])
        ax_f.imshow(_to_numpy(filt), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax_f.set_title("filter", fontsize=8)
        ax_f.set_xticks([])
        ax_f.set_yticks([])
    ax_in = fig.add_subplot(grid[1, :])
    ax_in.imshow(img, cmap="gray")
    ax_in.set_title("input", fontsize=9)
    ax_in.set_axis_off()
    return _save(fig, out_path)
