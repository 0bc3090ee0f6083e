"""Epoch orders: the seeds by (seed, epoch, slot), the bounded in-shard shuffle, the per-rank shard order."""

from __future__ import annotations

import random
from collections.abc import Iterator


def _slot_seed(seed: int, epoch: int, slot: int = -1) -> int:
    # a plain integer mix: random.Random(int) is the same in every process (no hash salt)
    return (seed * 1_000_003 + epoch) * 1_000_033 + slot + 1


def _buffer_shuffle(items: Iterator, rng: random.Random, size: int) -> Iterator:
    """A bounded shuffle: hold `size` items, emit a random one as each new one arrives."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def shard_order(groups, epoch: int, seed: int, rank: int, world: int):
    """This rank's sample order for an epoch: shards shuffled by (seed, epoch), samples shuffled
    within each shard, the whole cut into `world` equal runs, so each rank reads its own shards
    (two ranks share at most the shard at a boundary) and every sample is used once."""
    import torch

    n = len(groups)
    gen = torch.Generator().manual_seed(_slot_seed(seed, epoch))
    shard_rank = torch.randperm(int(groups.max()) + 1 if n else 1, generator=gen)
    within = torch.randperm(n, generator=gen)
    order = torch.argsort(shard_rank[groups] * n + within)
    per_rank = n // world
    return order[rank * per_rank:(rank + 1) * per_rank]

