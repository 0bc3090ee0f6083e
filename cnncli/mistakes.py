"""`cnncli viz mistakes`: the test images with the highest loss, as one gallery.

The rows come from a run (evaluated here, as `eval --predictions` would) or from a predictions
CSV; each image is found by its id: a file path (image folders), or an index into the data set
and split the row names. With `cam`, each image carries its class activation map for the class
the network answered (`cnncli.explain`), which shows what it took for that class.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from cnncli.errors import InputError

DEFAULT_TOP = 16
MAX_TOP = 100  # pictures in one gallery: beyond this a cell is too small to read


def highest_loss(rows: list, top: int) -> list:
    """The `top` rows of highest loss, highest first (ties in input order)."""
    if top < 1:
        raise InputError(f"--top must be 1 or more, got {top}")
    order = sorted(range(len(rows)), key=lambda i: (-rows[i].loss, i))
    return [rows[i] for i in order[:top]]


def _run_of(source: Path) -> str | None:
    """The run a predictions CSV sits in (its folder holds model.safetensors), if any."""
    folder = source if source.is_dir() else source.parent
    return str(folder) if (folder / "model.safetensors").exists() else None


def collect_rows(source: str | os.PathLike, split: str = "test", data: str | None = None,
                 data_dir: str | None = None, device: str = "auto") -> tuple[list, str | None, int]:
    """(prediction rows, the run they come from or None, the run's seed)."""
    from cnncli.checkpoint import is_checkpoint_ref, read_meta, resolve_checkpoint_path

    path = Path(source)
    if is_checkpoint_ref(str(source)):
        from cnncli.engine.eval_run import evaluate_checkpoint

        rows: list = []
        evaluate_checkpoint(str(source), data=data, split=split, data_dir=data_dir, device=device,
                            predictions=rows)
        seed = int(read_meta(resolve_checkpoint_path(source)).get("seed") or 0)
        return rows, str(source), seed
    if path.is_dir():
        raise InputError(f"{path} is a folder without model.safetensors: give a run or a predictions CSV")
    from cnncli.engine.predictions import read_predictions

    run = _run_of(path)
    seed = int(read_meta(resolve_checkpoint_path(run)).get("seed") or 0) if run else 0
    return read_predictions(path), run, seed


def load_images(rows: list, data_dir: str | None = None, seed: int = 0) -> list:
    """The uint8 (C, H, W) image of each row: its file, or its index in the row's data set."""
    from cnncli.data.transforms import decode_image_file

    splits: dict[tuple[str, str], Any] = {}
    images = []
    for row in rows:
        if not row.id.isdigit():
            images.append(decode_image_file(row.id))
            continue
        key = (row.dataset, row.split)
        if key not in splits:
            from cnncli.engine.eval_run import _load_split

            splits[key] = _load_split(row.dataset, row.split, data_dir, False, seed)[0]
        subset = splits[key]
        index = int(row.id)
        if index >= len(subset.labels):
            raise InputError(f"image {index} is not in the {row.split} split of {row.dataset} "
                             f"({len(subset.labels)} images): is this CSV from another data set?")
        images.append(subset.images[index])
    return images


def render_mistakes(source: str | os.PathLike, out: str | os.PathLike | None = None, top: int = DEFAULT_TOP,
                    cam: bool = False, method: str = "gradcam", layer: str = "auto", model: str | None = None,
                    split: str = "test", data: str | None = None, data_dir: str | None = None,
                    device: str = "auto") -> Path:
    """Draw the gallery; returns the PNG's path (default: mistakes.png beside the source)."""
    if not 1 <= top <= MAX_TOP:
        raise InputError(f"--top must be between 1 and {MAX_TOP}, got {top}")
    explainer = None
    rows, run, seed = collect_rows(source, split=split, data=data, data_dir=data_dir, device=device)
    if cam:
        from cnncli.explain import open_explainer

        network = model or run
        if network is None:
            raise InputError(f"--cam needs the network: {source} is not inside a run; pass --model RUN")
        explainer = open_explainer(network, method=method, layer=layer, device=device)
    chosen = highest_loss(rows, top)
    images = load_images(chosen, data_dir=data_dir, seed=seed)
    base = Path(source) if Path(source).is_dir() else Path(source).parent
    out = Path(out) if out is not None else base / "mistakes.png"
    if out.exists() and not out.is_file():
        raise InputError(f"{out} exists and is not a file; choose another --out")
    maps = [None] * len(images)
    if explainer is not None:
        from cnncli.explain import check_image_cost

        for row, img in zip(chosen, images):
            check_image_cost(row.id, img)
        maps = [explainer.explain(img) for img in images]
    title = f"{len(chosen)} highest-loss images of {chosen[0].dataset} ({chosen[0].split})"
    if explainer is not None:
        title += f", {method} on {explainer.layer.name}"
    return plot_gallery(images, chosen, maps, out, title=title)


def plot_gallery(images: list, rows: list, maps: list, out_path: str | os.PathLike, title: str = "") -> Path:
    """A grid of images titled true / predicted (probability) / loss; maps drawn over them."""
    from cnncli.explain import draw_overlay, image_for_display
    from cnncli.plots import _figure, _save

    n = len(images)
    cols = min(n, 4 if n <= 8 else 6)
    grid_rows = math.ceil(n / cols)
    fig = _figure(2.3 * cols, 2.5 * grid_rows + 0.4)
    fig.set_layout_engine("constrained")  # photos of any aspect ratio: no caption over the image above
    for i, (image, row, cam) in enumerate(zip(images, rows, maps)):
        ax = fig.add_subplot(grid_rows, cols, i + 1)
        caption = (f"true {row.true}\npred {row.predicted} ({row.prob_predicted:.2f})\n"
                   f"loss {row.loss:.2f}")
        if cam is not None:
            draw_overlay(ax, image, cam, title=caption)
        else:
            shown = image_for_display(image)
            ax.imshow(shown, interpolation="nearest" if max(shown.shape[:2]) < 128 else "antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(caption, fontsize=8, color="black" if row.correct else "darkred")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_path)
