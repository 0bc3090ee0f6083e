"""`show_dataset`: a labelled grid of samples per class (PNG), and sample files to try `predict` on.

Samples are K images of each class of one split, chosen at random with a fixed seed (the same
images every time). A named dataset uses the splits training uses (val held out of train with
the default fraction and seed); `imagefolder:PATH` and `csv:FILE` use the splits their index
records (`cnncli.data.index`) and decode only the chosen files.

The grid: one row per class, its name on the left in a column of LABEL_WIDTH pixels, then K
cells of `cell_side` pixels with PAD pixels around each. Small images are enlarged by a whole
factor (nearest neighbour: the pixels stay visible) up to CELL_MAX px; larger ones are
shrunk to fit. Exported files are the images as stored (no resizing), named by class:
`<class>-1.png`, `<class>-2.png`, ... with the class name made file-safe (`T-shirt/top` ->
`t-shirt-top-1.png`).

Photos (`imagefolder:`, `csv:` and `wds:` sources, which train through the streaming path's
crops at the network's size) are shown as the photos themselves: each is decoded when its cell
is drawn, at the smallest JPEG scale that still fills the cell (PIL draft), and shrunk to a
thumbnail with its aspect ratio kept, so the grid never holds full-size photos and never shows
the 224 px center crops a streaming split's `images` give; a note on stderr says which view it
is. Exported photos are the full-size images, decoded one at a time.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

from cnncli.errors import InputError

LABEL_WIDTH = 120
PAD = 4
CELL_MAX = 96
MAX_PER_CLASS = 100
MAX_GRID_BYTES = 256 * 2**20
SPLIT_CHOICES = ("train", "val", "test")


def cell_side(image_sides: list[int]) -> int:
    """The side of a grid cell for samples whose longer sides are `image_sides`."""
    side = max(image_sides)
    return side * max(1, CELL_MAX // side) if side <= CELL_MAX else CELL_MAX


def grid_size(classes: int, per_class: int, cell: int) -> tuple[int, int]:
    """(width, height) in pixels of the grid PNG."""
    return LABEL_WIDTH + per_class * (cell + PAD) + PAD, classes * (cell + PAD) + PAD


def class_slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "class"


def _choose(positions_by_class: list[list[int]], per_class: int, seed: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    chosen = []
    for positions in positions_by_class:
        take = min(per_class, len(positions))
        picked = rng.choice(len(positions), size=take, replace=False) if take else []
        chosen.append([positions[int(k)] for k in sorted(picked)])
    return chosen


class Photo:
    """One photo of a folder, CSV or shard source, decoded on demand (see the module doc)."""

    def __init__(self, decode, name: str):
        self._decode, self.name = decode, name  # decode(min_side or None) -> uint8 (C, H, W)

    def load(self, min_side: int | None = None):
        from cnncli.data.photo_decode import BadImage

        try:
            return self._decode(min_side)
        except BadImage as e:
            raise InputError(f"{e.id}: {e.reason}") from None

    def thumbnail(self, side: int):
        """The photo with its longer side at most `side` px, aspect ratio kept (never enlarged)."""
        from torchvision.transforms.v2.functional import resize

        image = self.load(min_side=side)
        h, w = image.shape[1:]
        if max(h, w) <= side:
            return image
        scale = side / max(h, w)
        return resize(image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)


def _file_photo(path: str) -> Photo:
    from cnncli.data.photo_decode import decode_photo

    return Photo(lambda min_side: decode_photo(path, min_side), str(path))


def _source_photo(source, i: int) -> Photo:
    """Sample i of a streaming split's source (data/stream.py), as its file or shard stores it."""
    from cnncli.data.stream import FileSource, decode_photo_data

    base, j = source, i
    while hasattr(base, "base") and hasattr(base, "positions"):
        base, j = base.base, int(base.positions[j])
    if isinstance(base, FileSource):
        return _file_photo(base.ids[j])
    if hasattr(base, "read"):  # tar shards: the member's bytes
        return Photo(lambda min_side: decode_photo_data(base.read(j), base.ids[j], min_side), base.ids[j])
    return Photo(lambda _min_side: base.load(j), base.ids[j])


def _as_tensor(image, side: int | None = None):
    """A sample as uint8 (C, H, W): a tensor as it is, a photo as its thumbnail (or in full)."""
    if not isinstance(image, Photo):
        return image
    return image.thumbnail(side) if side else image.load()


def sample_images(
    name: str, split: str = "train", per_class: int = 8, data_dir: str | os.PathLike | None = None, seed: int = 0
) -> tuple[list[str], list[list[Any]]]:
    """(class names, per class a list of samples) of one split: uint8 (C, H, W) tensors, or
    `Photo`s for a folder, CSV or shard source (decoded when drawn or exported)."""
    from cnncli.data.index import index_source, is_index_source
    from cnncli.data.registry import canonical_dataset_name

    name = canonical_dataset_name(name)
    if split not in SPLIT_CHOICES:
        raise InputError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got '{split}'")
    if not 1 <= per_class <= MAX_PER_CLASS:
        raise InputError(f"--per-class must be between 1 and {MAX_PER_CLASS}, got {per_class}")
    if is_index_source(name):
        index = index_source(name)
        if split not in index.split_names():
            raise InputError(f"{name} has no {split} split (it has: {', '.join(index.split_names())}); "
                             f"choose one with --split")
        by_class: list[list[int]] = [[] for _ in index.class_names]
        for k in index.select(split):
            by_class[index.labels[k]].append(k)
        chosen = _choose(by_class, per_class, seed)
        _price(len(index.class_names), per_class)
        return index.class_names, [[_file_photo(index.paths[k]) for k in ks] for ks in chosen]

    from cnncli.data.registry import load_dataset

    data = load_dataset(name, data_dir=data_dir)
    part = {"train": data.train, "val": data.val, "test": data.test}[split]
    if len(part) == 0:
        raise InputError(f"{name} has no {split} images; choose another --split")
    _price(part.num_classes, per_class)
    labels = part.labels.tolist()
    by_class = [[] for _ in part.class_names]
    for k, label in enumerate(labels):
        by_class[label].append(k)
    chosen = _choose(by_class, per_class, seed)
    if getattr(part, "streaming", False):  # wds shards: the photos, not the split's eval crops
        return list(part.class_names), [[_source_photo(part.src, k) for k in ks] for ks in chosen]
    return list(part.class_names), [[part.images[k] for k in ks] for ks in chosen]


def _price(classes: int, per_class: int) -> None:
    width, height = grid_size(classes, per_class, CELL_MAX)
    need = width * height * 3
    if need > MAX_GRID_BYTES:
        raise InputError(f"a grid of {classes} classes x {per_class} images is {width}x{height} pixels "
                         f"({need / 2**20:.0f} MiB), more than {MAX_GRID_BYTES // 2**20} MiB; "
                         f"lower --per-class")


def _to_pil(image):
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0], "L") if array.shape[2] == 1 else Image.fromarray(array, "RGB")


def _check_target(path: Path, flag: str = "--out") -> None:
    from cnncli.outputs import PNG, check_file

    check_file(path, PNG, flag)


def render_grid(class_names: list[str], samples: list[list[Any]], out: str | os.PathLike) -> Path:
    """Draw the labelled grid (see the module doc) and write it atomically as a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    from cnncli.outputs import PNG, write_file

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out must be a .png file, got {out}")
    _check_target(out)
    samples = [[_as_tensor(img, CELL_MAX) for img in row] for row in samples]
    sides = [max(img.shape[1:]) for row in samples for img in row] or [CELL_MAX]
    cell = cell_side(sides)
    per_class = max([len(row) for row in samples] + [1])
    canvas = Image.new("RGB", grid_size(len(class_names), per_class, cell), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, (label, row) in enumerate(zip(class_names, samples)):
        top = PAD + r * (cell + PAD)
        text = label
        while text and draw.textlength(text, font=font) > LABEL_WIDTH - 2 * PAD:
            text = text[:-1]
        if text != label:
            text = text[:-1] + "…"
        box = draw.textbbox((0, 0), text or " ", font=font)
        draw.text((PAD, top + (cell - (box[3] - box[1])) // 2 - box[1]), text, fill="black", font=font)
        for c, image in enumerate(row):
            picture = _to_pil(image).convert("RGB")
            w, h = picture.size
            if max(w, h) <= cell:
                factor = max(1, cell // max(w, h))
                picture = picture.resize((w * factor, h * factor), Image.Resampling.NEAREST)
            else:
                scale = cell / max(w, h)
                picture = picture.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                         Image.Resampling.LANCZOS)
            left = LABEL_WIDTH + c * (cell + PAD)
            canvas.paste(picture, (left + (cell - picture.width) // 2, top + (cell - picture.height) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return write_file(out, buffer.getvalue(), PNG)


def export_samples(class_names: list[str], samples: list[list[Any]], folder: str | os.PathLike) -> list[Path]:
    """Write every sample as `<class>-<n>.png` in `folder` (created if needed); the paths written."""
    from cnncli.outputs import PNG, check_folder, write_file

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--export {folder} exists and is not a folder; choose another path")
    slugs = [class_slug(n) for n in class_names]
    taken = {s for s in slugs if slugs.count(s) == 1}
    slugs = [s if s in taken else f"{s}-{i}" for i, s in enumerate(slugs)]  # two names, one slug
    targets = [folder / f"{slug}-{k + 1}.png" for slug, row in zip(slugs, samples) for k in range(len(row))]
    if folder.is_dir():
        for target in targets:
            _check_target(target, "--export")
    check_folder(folder, "--export")
    written = []
    images = [img for row in samples for img in row]
    for target, image in zip(targets, images):
        buffer = io.BytesIO()
        _to_pil(_as_tensor(image)).save(buffer, format="PNG")  # a photo in full, one at a time
        written.append(write_file(target, buffer.getvalue(), PNG, "--export"))
    return written


def show_dataset(
    name: str,
    split: str = "train",
    per_class: int = 8,
    out: str | os.PathLike | None = None,
    export: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Sample, draw the grid (to `out`, or a name made from the dataset when neither `out` nor
    `export` is given) and export; {"grid": path or None, "exported": [paths]}."""
    if out is not None and Path(out).suffix.lower() != ".png":
        raise InputError(f"--out must be a .png file, got {out}")
    class_names, samples = sample_images(name, split, per_class, data_dir, seed)
    photos = any(isinstance(img, Photo) for row in samples for img in row)
    if photos and (out is not None or export is None):  # a grid is drawn: say which view it is
        from cnncli.output import note

        note(f"{name}: the photos themselves, as {CELL_MAX} px thumbnails with their aspect ratio kept "
             "(training sees random crops of them at the network's size)")
    if out is None and export is None:
        out = f"{class_slug(name.partition(':')[0])}-{split}.png"
    grid = render_grid(class_names, samples, out) if out is not None else None
    exported = export_samples(class_names, samples, export) if export is not None else []
    return {"grid": str(grid) if grid else None, "exported": [str(p) for p in exported]}
