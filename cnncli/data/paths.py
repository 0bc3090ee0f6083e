"""A dataset named by its path alone: `--data photos/` as Ultralytics' `data=path` or Keras'
`image_dataset_from_directory(path)` take it.

`dataset_name(name)` gives the prefixed name the rest of cnncli reads: an existing folder is
`imagefolder:PATH`, or `wds:PATH` when it holds what `cnncli datasets pack` writes (an
`index.json` or `train-*.tar` shards); an existing `.csv` file is `csv:FILE`, a `.tar` file
`wds:FILE`. Every other name comes back unchanged, so a registered name (`fashion-mnist`)
always means the registered dataset, whatever folders the working directory holds. Only the
file system's metadata is read. This module imports nothing of cnncli: every door of the data
package can call it first.
"""

from __future__ import annotations

from pathlib import Path

KNOWN_PREFIXES = ("imagefolder:", "csv:", "wds:", "synthetic:")


def dataset_name(name: str, registered: tuple[str, ...] = ()) -> str:
    """`name` with its kind prefixed where it is a bare path to a folder or file (module doc);
    names in `registered` (lower case) and names already prefixed are returned as given."""
    raw = name.strip()
    if not raw or raw.lower() in registered or raw.lower().startswith(KNOWN_PREFIXES):
        return name
    path = Path(raw).expanduser()
    try:
        if path.is_dir():
            shards = (path / "index.json").is_file() or any(path.glob("train-*.tar"))
            return f"{'wds' if shards else 'imagefolder'}:{raw}"
        if path.is_file():
            suffix = path.suffix.lower()
            if suffix == ".csv":
                return f"csv:{raw}"
            if suffix == ".tar":
                return f"wds:{raw}"
    except OSError:  # a name too long for a path, a folder we may not read: not a path then
        return name
    return name


def looks_like_path(name: str) -> bool:
    """Whether a name that is no dataset was meant as a path (for the error message)."""
    raw = name.strip()
    return "/" in raw or "\\" in raw or raw.startswith((".", "~")) or raw.lower().endswith((".csv", ".tar"))


def absolute_name(name: str) -> str | None:
    """`imagefolder:photos` -> `imagefolder:/abs/photos` (also csv:, wds:) when that path exists
    here; None for other names and for patterns. A run records it beside the name as given, so
    that a later command in another folder still finds the data (`recorded_dataset`)."""
    head, sep, rest = name.strip().partition(":")
    if not sep or head.lower() not in ("imagefolder", "csv", "wds") or not rest:
        return None
    path = Path(rest).expanduser()
    try:
        return f"{head.lower()}:{path.resolve()}" if path.exists() else None
    except OSError:
        return None


def recorded_dataset(meta) -> str | None:
    """The dataset a run records: its name as given, or, where that is a relative path that does
    not exist from here, the absolute one recorded with it (`absolute_name`)."""
    name = meta.get("dataset") if hasattr(meta, "get") else None
    source = (meta.get("data_source") or {}) if hasattr(meta, "get") else {}
    absolute = source.get("absolute") if isinstance(source, dict) else None
    if not name or not absolute or absolute == name:
        return name
    rest = dataset_name(str(name)).partition(":")[2]
    try:
        here = bool(rest) and Path(rest).expanduser().exists()
    except OSError:
        here = False
    return name if here else absolute


def dataset_label(name: str) -> str:
    """A short name for default run and study folders: a folder's or file's own name
    (`photos/`, `imagefolder:~/data/photos` -> `photos`, `csv:labels.csv` -> `labels`), else the
    name before any options (`synthetic:size=32` -> `synthetic`)."""
    canonical = dataset_name(name)
    head, sep, rest = canonical.strip().partition(":")
    if sep and head.lower() in ("imagefolder", "csv", "wds") and rest:
        path = Path(rest.rstrip("/\\") or rest)
        stem = path.stem if head.lower() == "csv" or path.suffix.lower() == ".tar" else path.name
        if stem and not any(c in stem for c in "{}|*?"):
            return stem
    return head
