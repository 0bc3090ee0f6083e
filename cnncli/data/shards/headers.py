"""Class names and counts of shards without an index: one pass over the tar headers and `.cls` members."""

from __future__ import annotations

import tarfile

from cnncli.data.shards.source import (
    IMAGE_KEYS,
    INDEX_NAME,
    ShardSource,
    ShardSplit,
    _label,
    _open_stream,
    tar_members,
)
from cnncli.errors import InputError


def count_shard(url: str) -> tuple[int, dict[int, int]]:
    """(samples, count per class number) of one shard from its headers and `.cls` members."""
    images: set[str] = set()
    labels: dict[str, int] = {}
    stream = _open_stream(url)
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for key, ext, member in tar_members(tar):
                if ext in IMAGE_KEYS:
                    images.add(key)
                elif ext == "cls":
                    labels[key] = _label(tar.extractfile(member).read(65), url, key)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"wds: {url} is not a readable tar shard: {e}") from None
    finally:
        stream.close()
    per_class: dict[int, int] = {}
    for key in images:
        if key not in labels:
            raise InputError(f"wds: {url}: sample {key} has an image but no .cls label")
        per_class[labels[key]] = per_class.get(labels[key], 0) + 1
    return len(images), per_class


def _counted(spec: str, urls: dict[str, list[str]]) -> ShardSource:
    from cnncli.output import note

    note(f"wds:{spec}: no {INDEX_NAME}; counting samples from the tar headers of "
         f"{sum(len(u) for u in urls.values()):,} shards")
    counts: dict[str, tuple[int, dict[int, int]]] = {}
    for name, shard_urls in urls.items():
        total, per_class = 0, {}
        for url in shard_urls:
            n, classes = count_shard(url)
            total += n
            for c, k in classes.items():
                per_class[c] = per_class.get(c, 0) + k
        counts[name] = (total, per_class)
    if counts["train"][0] == 0:
        raise InputError(f"wds:{spec}: the train shards hold no samples")
    num_classes = max(max(pc, default=-1) for _, pc in counts.values()) + 1
    splits = {name: ShardSplit(urls[name], total, [pc.get(c, 0) for c in range(num_classes)])
              for name, (total, pc) in counts.items()}
    return ShardSource(spec, splits, [str(c) for c in range(num_classes)], "tar headers")

