"""What every `wds:` reader shares: constants, the split/source records, shard URLs, labels."""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnncli.errors import InputError

INDEX_NAME = "index.json"
INDEX_FORMAT = "cnncli-shards"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SPLITS = ("train", "val", "test")
MAX_SHARDS = 1_000_000
SHUFFLE_BUFFER = 1000  # samples a worker holds for its in-shard shuffle (bounded memory)


@dataclass
class ShardSplit:
    """The shards of one split and what is known of them without reading an image."""

    urls: list[str]
    count: int
    class_counts: list[int]


@dataclass
class ShardSource:
    """A `wds:` dataset: splits, class names, where the names and counts came from."""

    spec: str
    splits: dict[str, ShardSplit]
    class_names: list[str]
    counted_from: str  # "index" or "tar headers"
    index: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def sizes(self) -> dict[str, int]:
        return {name: s.count for name, s in self.splits.items()}



def is_wds(name: str) -> bool:
    return name.strip().lower().startswith("wds:")


def expand_pattern(pattern: str) -> list[str]:
    """Shard URLs of a brace pattern (webdataset's own expansion: `::`, `{a..b}`, `{x,y}`)."""
    from webdataset.shardlists import expand_urls

    try:
        urls = [u for u in expand_urls(pattern) if u]
    except Exception as e:  # noqa: BLE001 - braceexpand's errors on unbalanced braces
        raise InputError(f"wds: cannot expand the pattern '{pattern}': {e}") from None
    if not urls:
        raise InputError(f"wds: the pattern '{pattern}' names no shards")
    if len(urls) > MAX_SHARDS:
        raise InputError(f"wds: the pattern '{pattern}' names {len(urls):,} shards, more than {MAX_SHARDS:,}")
    return urls


def _is_local(url: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+]*:", url) or url.startswith("file:")


def _local_path(url: str) -> Path:
    return Path(url[5:] if url.startswith("file:") else url).expanduser()


def _check_local(urls: list[str], what: str) -> None:
    missing = [u for u in urls if _is_local(u) and not _local_path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{what}: shard {missing[0]} not found{more}")


def _open_stream(url: str):
    from webdataset.gopen import gopen

    try:
        return gopen(url, "rb")
    except Exception as e:  # noqa: BLE001 - gopen raises OSError, ValueError, or the pipe's own
        raise InputError(f"wds: cannot open {url}: {e}") from None


def _label(data: bytes, url: str, key: str) -> int:
    text = data.decode("utf-8", "replace").strip()
    if not text.isdigit() or len(text) > 9:
        raise InputError(f"wds: {url}: sample {key}: label '{text[:20]}' is not a class number")
    return int(text)



def tar_members(tar: tarfile.TarFile) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """(sample key, lower-case extension, member) of each regular member of a sample (webdataset's naming)."""
    from webdataset.tariterators import base_plus_ext

    for member in tar:
        if not member.isreg():
            continue
        key, ext = base_plus_ext(member.name)
        if key is not None:
            yield key, ext.lower(), member
