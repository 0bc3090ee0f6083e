"""`wds:SPEC` parsing: a pack folder or its index.json, brace patterns (local or `pipe:`), `{split}`, `train=;val=;test=`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from cnncli.data.shards.headers import _counted
from cnncli.data.shards.source import (
    INDEX_FORMAT,
    INDEX_NAME,
    SPLITS,
    ShardSource,
    ShardSplit,
    _check_local,
    _is_local,
    _local_path,
    expand_pattern,
    is_wds,
)
from cnncli.errors import InputError


def read_index(path: Path) -> dict[str, Any]:
    """A pack's index.json, checked for what the reader relies on."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"wds: {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"wds: {path} is not a readable JSON index: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise InputError(f"wds: {path} is not an index written by 'cnncli datasets pack'")
    names, splits = doc.get("class_names"), doc.get("splits")
    if not isinstance(names, list) or not names or not isinstance(splits, dict) or "train" not in splits:
        raise InputError(f"wds: {path} lacks class_names or a train split")
    for name, split in splits.items():
        if name not in SPLITS or not isinstance(split, dict) or not isinstance(split.get("shards"), list):
            raise InputError(f"wds: {path}: split '{name}' is not one of {', '.join(SPLITS)} with a shard list")
        if not isinstance(split.get("count"), int) or split["count"] < 0:
            raise InputError(f"wds: {path}: split '{name}' has no sample count")
    return doc


def _from_index(spec: str, path: Path) -> ShardSource:
    doc = read_index(path)
    folder = path.parent
    splits = {}
    for name in SPLITS:
        if name not in doc["splits"]:
            continue
        entry = doc["splits"][name]
        urls = [str(folder / s) if _is_local(s) and not os.path.isabs(s) else s for s in entry["shards"]]
        _check_local(urls, f"wds:{spec}")
        counts = entry.get("class_counts") or [0] * len(doc["class_names"])
        splits[name] = ShardSplit(urls, entry["count"], [int(c) for c in counts])
    return ShardSource(spec, splits, [str(c) for c in doc["class_names"]], "index", doc)


def _split_patterns(spec: str) -> dict[str, str]:
    if re.match(r"^\s*(train|val|test)\s*=", spec):
        patterns = {}
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            key, eq, value = part.partition("=")
            key = key.strip().lower()
            if not eq or key not in SPLITS or not value.strip():
                raise InputError(f"wds: '{part}' must be train=PATTERN, val=PATTERN or test=PATTERN")
            patterns[key] = value.strip()
        if "train" not in patterns:
            raise InputError("wds: train=PATTERN is required (val= and test= are optional)")
        return patterns
    if "{split}" in spec:
        found = {"train": spec.replace("{split}", "train")}
        for name in ("val", "test"):
            found[name] = spec.replace("{split}", name)
        return found
    return {"train": spec}


def _split_urls(patterns: dict[str, str], spec: str) -> dict[str, list[str]]:
    """Shard URLs per split. With `{split}`, the val and test shards are those of the range
    that exist (their splits are smaller than train's); train's must all exist."""
    urls = {s: expand_pattern(p) for s, p in patterns.items()}
    if "{split}" in spec:
        for name in ("val", "test"):
            urls[name] = [u for u in urls[name] if not _is_local(u) or _local_path(u).is_file()]
            if not urls[name]:
                del urls[name]
    for u in urls.values():
        _check_local(u, f"wds:{spec}")
    return urls


def open_source(name: str) -> ShardSource:
    """The `wds:SPEC` dataset named on the command line (see the module doc)."""
    spec = name.strip()[4:].strip() if is_wds(name) else name.strip()
    if not spec:
        raise InputError("wds needs shards: --data wds:FOLDER (from 'cnncli datasets pack') or wds:PATTERN")
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            return _from_index(spec, path / INDEX_NAME)
        tars = sorted(p.name for p in path.glob("*.tar"))
        by_split = {s: [str(path / t) for t in tars if t.startswith(f"{s}-")] for s in SPLITS}
        if not by_split["train"]:
            raise InputError(f"wds:{spec}: no {INDEX_NAME} and no train-*.tar shards in the folder")
        return _counted(spec, {s: u for s, u in by_split.items() if u})
    if path.suffix == ".json" and path.is_file():
        return _from_index(spec, path)
    urls = _split_urls(_split_patterns(spec), spec)
    indexed = _beside_index(spec, urls)
    return indexed or _counted(spec, urls)


def _beside_index(spec: str, urls: dict[str, list[str]]) -> ShardSource | None:
    """The pack index in the shards' folder, when it describes exactly these shards."""
    first = urls["train"][0]
    if not _is_local(first):
        return None
    index_path = _local_path(first).parent / INDEX_NAME
    if not index_path.is_file():
        return None
    try:
        source = _from_index(spec, index_path)
    except InputError:
        return None
    splits = {}
    for name, wanted in urls.items():
        names = sorted(Path(u).resolve() for u in wanted)
        match = [s for s in source.splits.values() if sorted(Path(u).resolve() for u in s.urls) == names]
        if not match:
            return None
        splits[name] = ShardSplit(wanted, match[0].count, match[0].class_counts)
    return ShardSource(spec, splits, source.class_names, "index", source.index)

