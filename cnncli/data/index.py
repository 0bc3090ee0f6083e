"""An index of image files: (path, label, split) for every image, built without decoding any.

Two sources, named as on the command line:
- `imagefolder:PATH`: `PATH/<class>/*` (every image in split "train"), or `PATH/train/<class>/*`
  with optional `PATH/val/<class>/*` and `PATH/test/<class>/*`.
- `csv:FILE`: a CSV file with a header row naming the columns `path` and `label` (and optionally
  `split`: train, val or test; empty means train). Relative paths are relative to the CSV's folder.

Class names are sorted (numerically when every label is an integer) and shared by all splits,
so a label means the same class everywhere. Only names and directory entries are read: the
index of a million files costs its paths, not its pixels, and readers (check, show, a
streaming loader) decode what they need, when they need it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cnncli.data.formats import IMAGE_EXTENSIONS  # noqa: F401 - what every reader decodes (data/formats.py)
from cnncli.errors import InputError

SPLITS = ("train", "val", "test")
# An index holds a path string per image; beyond this many rows it is refused before it is built.
MAX_INDEX_ROWS = 20_000_000


@dataclass
class ImageIndex:
    """Image files with their labels and splits, in a fixed order (split, class, file name)."""

    paths: list[str]
    labels: list[int]
    splits: list[str]
    class_names: list[str]
    source: str  # the name it was built from: imagefolder:PATH or csv:FILE
    root: str  # the folder paths are shown relative to
    # files that were listed but are not images by their extension (reported, not indexed)
    other_files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def split_names(self) -> list[str]:
        """The splits present, in the order train, val, test."""
        present = set(self.splits)
        return [s for s in SPLITS if s in present]

    def select(self, split: str) -> list[int]:
        """Positions of the entries of one split."""
        return [i for i, s in enumerate(self.splits) if s == split]

    def class_counts(self) -> dict[str, list[int]]:
        """Per split, the number of images of each class (in class_names order)."""
        counts = {s: [0] * len(self.class_names) for s in self.split_names()}
        for label, split in zip(self.labels, self.splits):
            counts[split][label] += 1
        return counts


class PathTable(Sequence[str]):
    """Strings packed in one buffer (UTF-8 bytes and an int64 array of offsets): `table[i]` is a
    new str. A list of a million paths is a million objects whose reference counts a forked
    DataLoader worker writes as it reads them (copying their pages, once per worker); this is
    two objects, read-only."""

    def __init__(self, strings: Sequence[str]):
        import numpy as np

        encoded = [str(s).encode("utf-8", "surrogateescape") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._data = b"".join(encoded)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        i = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= i < n:
            raise IndexError(f"path index {i} out of range ({n})")
        return self._data[int(self._offsets[i]):int(self._offsets[i + 1])].decode("utf-8", "surrogateescape")

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PathTable({len(self)} paths, {len(self._data):,} bytes)"


class PickedPaths(Sequence[str]):
    """`paths[positions[i]]` for each i, computed when read (a subset's ids, no list of its own)."""

    def __init__(self, paths: Sequence[str], positions):
        self.paths, self.positions = paths, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.paths[int(self.positions[i])]

    __eq__ = PathTable.__eq__
    __hash__ = None  # type: ignore[assignment]


def is_index_source(name: str) -> bool:
    """Whether a dataset name is one that `index_source` builds (imagefolder:PATH or csv:FILE)."""
    head = name.strip().partition(":")[0].lower()
    return head in ("imagefolder", "csv")


def index_source(name: str) -> ImageIndex:
    """The index of `imagefolder:PATH` or `csv:FILE`."""
    head, sep, rest = name.strip().partition(":")
    kind = head.lower()
    if kind not in ("imagefolder", "csv") or not sep or not rest:
        raise InputError(f"'{name}' is not imagefolder:PATH or csv:FILE")
    return index_image_folder(rest) if kind == "imagefolder" else index_csv(rest)


def _entries(folder: Path, what: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except FileNotFoundError:
        raise InputError(f"{what}: {folder} does not exist") from None
    except NotADirectoryError:
        raise InputError(f"{what}: {folder} is a file, not a folder") from None
    except OSError as e:
        raise InputError(f"{what}: cannot read {folder}: {e.strerror or e}") from None


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def index_image_folder(path: str | os.PathLike) -> ImageIndex:
    """The index of an image folder (layouts in the module doc); files are listed, never opened."""
    root = Path(path).expanduser()
    what = f"imagefolder:{path}"
    top = _entries(root, what)
    split_dirs = {e.name: Path(e.path) for e in top if e.name in SPLITS and e.is_dir()}
    if "train" in split_dirs:
        layout = [(s, split_dirs[s]) for s in SPLITS if s in split_dirs]
    else:
        layout = [("train", root)]
    found: list[tuple[str, str, list[str]]] = []  # (split, class, files)
    other: list[str] = []
    total = 0
    for split, folder in layout:
        class_dirs = [e for e in _entries(folder, what) if e.is_dir()]
        if not class_dirs:
            raise InputError(f"{what}: {folder} has no class sub-folders; put each class's images in "
                             f"PATH/<class>/ or PATH/train|val|test/<class>/ (here {folder}/<class>/)")
        for entry in class_dirs:
            files = []
            for f in _entries(Path(entry.path), what):
                if not f.is_file():
                    continue
                (files if _is_image_name(f.name) else other).append(f.path)
            total += len(files)
            if total > MAX_INDEX_ROWS:
                raise InputError(f"{what}: more than {MAX_INDEX_ROWS:,} images; index a part of it")
            found.append((split, entry.name, files))
    class_names = _sorted_classes({c for _, c, _ in found})
    number = {c: i for i, c in enumerate(class_names)}
    paths, labels, splits = [], [], []
    for split, cls, files in found:
        paths += files
        labels += [number[cls]] * len(files)
        splits += [split] * len(files)
    if not paths:
        raise InputError(f"{what}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return ImageIndex(paths, labels, splits, class_names, f"imagefolder:{path}", str(root), other)


def _sorted_classes(names) -> list[str]:
    names = list(names)
    if names and all(n.strip().lstrip("-").isdigit() for n in names):
        return sorted(names, key=lambda n: int(n))
    return sorted(names)


def index_csv(file: str | os.PathLike) -> ImageIndex:
    """The index of a CSV file with columns path, label[, split] (a header row names them)."""
    csv_path = Path(file).expanduser()
    what = f"csv:{file}"
    try:
        handle = open(csv_path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{what}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{what}: is a folder; give a CSV file with columns path,label[,split]") from None
    except OSError as e:
        raise InputError(f"{what}: cannot read: {e.strerror or e}") from None
    base = csv_path.parent
    rows: list[tuple[str, str, str]] = []
    with handle:
        try:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise InputError(f"{what}: empty file; the first row must name the columns path,label[,split]")
            columns = [h.strip().lower() for h in header]
            if "path" not in columns or "label" not in columns:
                raise InputError(f"{what}: the header row must name the columns path and label (and "
                                 f"optionally split); got {','.join(header)[:200]}")
            ip, il = columns.index("path"), columns.index("label")
            isp = columns.index("split") if "split" in columns else None
            for line_no, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue  # blank lines
                if len(row) < len(columns):
                    raise InputError(f"{what}: line {line_no} has {len(row)} columns, the header {len(columns)}")
                image, label = row[ip].strip(), row[il].strip()
                split = row[isp].strip().lower() if isp is not None else ""
                split = split or "train"
                if not image or not label:
                    raise InputError(f"{what}: line {line_no} has an empty path or label")
                if split not in SPLITS:
                    raise InputError(f"{what}: line {line_no}: split '{split}' is not one of "
                                     f"{', '.join(SPLITS)}")
                rows.append((image, label, split))
                if len(rows) > MAX_INDEX_ROWS:
                    raise InputError(f"{what}: more than {MAX_INDEX_ROWS:,} rows; index a part of it")
        except csv.Error as e:
            raise InputError(f"{what}: not a valid CSV file: {e}") from None
        except UnicodeDecodeError:
            raise InputError(f"{what}: not a UTF-8 text file") from None
    if not rows:
        raise InputError(f"{what}: no rows after the header")
    class_names = _sorted_classes({label for _, label, _ in rows})
    number = {c: i for i, c in enumerate(class_names)}
    order = sorted(range(len(rows)), key=lambda i: (SPLITS.index(rows[i][2]), number[rows[i][1]]))
    paths = [str(base / rows[i][0]) if not os.path.isabs(rows[i][0]) else rows[i][0] for i in order]
    return ImageIndex(
        paths,
        [number[rows[i][1]] for i in order],
        [rows[i][2] for i in order],
        class_names,
        f"csv:{file}",
        str(base),
    )
