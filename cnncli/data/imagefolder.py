"""`imagefolder:PATH`: one sub-folder per class of PNG / JPEG / WebP images, any size, gray or colour.

`load_dataset` reads folders through data/folders.py (the index, val/ as the validation split,
in memory or streamed), which uses this module's size and stacking helpers for the in-memory
kind; `load_image_folder` remains for callers that want one folder's images as tensors.

Layouts:
- `PATH/<class>/*.png`: everything is the pool for training; a test split is held out of it
  (stratified, fixed seed, `test_fraction`, 0.2 by default).
- `PATH/train/<class>/...` with `PATH/test/<class>/...` (or `val/`): the given test split is
  used as is (`PATH/train/` alone: the test split is held out of it as above).

Every image becomes uint8 of one common size and channel count, so the set fits the
in-memory (N, C, H, W) tensor the rest of the pipeline expects:
- channels: 3 if any image is in colour (gray ones are repeated), else 1; alpha is dropped.
- size: `image_size` (an int for a square, or (H, W)) when given. By default, the size all
  images share, or (if they differ) the median height and width; in both cases scaled down
  so that the longer side is at most 256 px (a folder of photos must not take gigabytes).
  Resizing is antialiased bilinear and does not keep the aspect ratio.

Hidden files are skipped; any other file in a class folder must be a readable image (a stray
`notes.txt` is an error naming it, rather than being silently dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from cnncli.data.splits import ImageData
from cnncli.data.transforms import IMAGE_EXTENSIONS, decode_image_file, resize_uint8
from cnncli.errors import InputError

MAX_DEFAULT_SIDE = 256
TEST_FOLDERS = ("test", "val")


def _visible(entries) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def _class_folders(root: Path) -> list[Path]:
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        raise InputError(f"imagefolder: {root} does not exist; give a folder with one sub-folder per class") from None
    except NotADirectoryError:
        raise InputError(f"imagefolder: {root} is a file; give a folder with one sub-folder per class") from None
    except OSError as e:
        raise InputError(f"imagefolder: cannot read {root}: {e.strerror or e}") from None
    folders = [p for p in _visible(entries) if p.is_dir()]
    if not folders:
        raise InputError(f"imagefolder: {root} has no class sub-folders; put each class's images in PATH/<class>/")
    return folders


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in _visible(folder.iterdir()) if p.is_file()]
    for path in files:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise InputError(
                f"imagefolder: {path} is not an image ({', '.join(IMAGE_EXTENSIONS)} expected); "
                f"move it out of the class folder"
            )
    if not files:
        raise InputError(f"imagefolder: class folder {folder} holds no images")
    return files


def _scan(root: Path, class_names: list[str] | None = None) -> tuple[list[str], list[Path], list[int]]:
    folders = _class_folders(root)
    names = [f.name for f in folders]
    if class_names is not None:
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise InputError(f"imagefolder: {root} has classes the training folder lacks: {', '.join(unknown)}")
    else:
        class_names = names
    index = {name: i for i, name in enumerate(class_names)}
    paths: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        files = _image_files(folder)
        paths += files
        labels += [index[folder.name]] * len(files)
    return class_names, paths, labels


def _default_size(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    heights = sorted(h for h, _ in sizes)
    widths = sorted(w for _, w in sizes)
    h, w = heights[len(heights) // 2], widths[len(widths) // 2]
    scale = min(1.0, MAX_DEFAULT_SIDE / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _parse_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, str):
        parts = image_size.lower().replace("x", ",").split(",")
        try:
            image_size = [int(p) for p in parts if p.strip()]
        except ValueError:
            raise InputError(f"image_size must be N or HxW, got '{image_size}'") from None
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    size = tuple(int(v) for v in image_size)
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"image_size must be N or HxW with positive sides, got {image_size}")
    return size  # type: ignore[return-value]


def _stack(images: list[torch.Tensor], size: tuple[int, int], channels: int) -> torch.Tensor:
    out = torch.empty((len(images), channels, *size), dtype=torch.uint8)
    for i, image in enumerate(images):  # decoded images differ in size: one at a time is unavoidable
        image = resize_uint8(image, *size)
        out[i] = image.expand(channels, -1, -1) if image.shape[0] != channels else image
    return out


def load_image_folder(
    path: str | Path,
    image_size: int | Sequence[int] | str | None = None,
) -> tuple[ImageData, ImageData | None]:
    """(train pool, given test split or None) of an image folder; see the module doc for layouts."""
    root = Path(path).expanduser()
    train_root, test_root = root, None
    if (root / "train").is_dir():
        train_root = root / "train"
        test_root = next((root / t for t in TEST_FOLDERS if (root / t).is_dir()), None)
    class_names, train_paths, train_labels = _scan(train_root)
    test_paths: list[Path] = []
    test_labels: list[int] = []
    if test_root is not None:
        _, test_paths, test_labels = _scan(test_root, class_names)

    decoded = [decode_image_file(p) for p in train_paths + test_paths]
    size = _parse_size(image_size) or _default_size([tuple(img.shape[1:]) for img in decoded])
    channels = 3 if any(img.shape[0] == 3 for img in decoded) else 1
    images = _stack(decoded, size, channels)
    labels = torch.tensor(train_labels + test_labels, dtype=torch.int64)
    n_train = len(train_paths)
    name = f"imagefolder:{root}"
    ids = [str(p) for p in train_paths + test_paths]
    train = ImageData(images[:n_train], labels[:n_train], class_names, name, str(train_root), ids[:n_train])
    test = None
    if test_root is not None:
        test = ImageData(images[n_train:], labels[n_train:], class_names, name, str(test_root), ids[n_train:])
    return train, test
