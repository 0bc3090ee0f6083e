"""`--skip-bad-images` over a whole run: the samples dropped, summed over the ranks and the resumes.

A streaming split (data/stream.py) lists in `split.skipped` the samples its passes dropped in
this process: under torchrun each rank sees only its own shard, and a resumed run only what
happened since the resume. `SkipTally.sync()` (a collective: every rank calls it at the same
point) sums the counts of all ranks (all_reduce) and adds what the run recorded before it was
resumed; the result is the run document's `skipped_images`:

    {"count": 3, "by_split": {"train": 2, "val": 1, "test": 0}, "first": ["a/b.jpg: cannot ...", ...]}

`count` counts drops: a file that does not decode is dropped by every pass that meets it (once
per epoch in train, once per validation), so it counts once each time. `first` lists up to
FIRST distinct messages (rank 0's first, then the others', then the earlier sessions').
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from cnncli.engine import distributed

SPLITS = ("train", "val", "test")
FIRST = 20


def gather_skipped(local: list[str]) -> tuple[int, list[str]]:
    """(drops summed over the ranks, up to FIRST distinct messages); a collective under torchrun."""
    ctx = distributed.context()
    if not ctx.enabled:
        return len(local), _distinct(local)
    import torch.distributed as dist

    count = distributed.all_reduce_sum(torch.tensor([len(local)], dtype=torch.int64))
    firsts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(firsts, _distinct(local))
    return int(count), _distinct([m for part in firsts for m in (part or [])])


def _distinct(messages) -> list[str]:
    return list(dict.fromkeys(str(m) for m in messages))[:FIRST]


class SkipTally:
    """The run's drops so far (see the module doc) for a StreamingSplits `data`."""

    def __init__(self, data):
        self.data = data
        self.before: dict[str, Any] = {}
        self.record: dict[str, Any] = {}

    def resume_from(self, recorded: Mapping[str, Any] | None) -> None:
        """What the run recorded before this session (its train state's `skipped_images`)."""
        if not isinstance(recorded, Mapping):
            return
        by_split = recorded.get("by_split") if isinstance(recorded.get("by_split"), Mapping) else {}
        counts = {s: int(by_split.get(s, 0) or 0) for s in SPLITS}
        if not any(counts.values()) and int(recorded.get("count", 0) or 0):  # a record without by_split
            counts["train"] = int(recorded["count"])
        first = recorded.get("first") if isinstance(recorded.get("first"), list) else []
        self.before = {"by_split": counts, "first": [str(m) for m in first]}
        self.record = self._total(dict.fromkeys(SPLITS, 0), [])

    def _total(self, counts: dict[str, int], first: list[str]) -> dict[str, Any]:
        before = self.before.get("by_split", {})
        by_split = {s: counts[s] + int(before.get(s, 0)) for s in SPLITS}
        total = sum(by_split.values())
        if not total:
            return {}
        return {"count": total, "by_split": by_split, "first": _distinct([*first, *self.before.get("first", [])])}

    def sync(self) -> dict[str, Any]:
        """The run's drops over all ranks and sessions, for its document (every rank together);
        {"skipped_images": ...} or {} when nothing was dropped."""
        ctx = distributed.context()
        local = {s: list(getattr(getattr(self.data, s, None), "skipped", None) or []) for s in SPLITS}
        counts = torch.tensor([len(local[s]) for s in SPLITS], dtype=torch.int64)
        distributed.all_reduce_sum(counts)
        messages = _distinct(m for s in SPLITS for m in local[s])
        if ctx.enabled:
            import torch.distributed as dist

            parts: list[Any] = [None] * ctx.world_size
            dist.all_gather_object(parts, messages)
            messages = [m for part in parts for m in (part or [])]
        self.record = self._total(dict(zip(SPLITS, (int(c) for c in counts))), messages)
        return {"skipped_images": self.record} if self.record else {}

    @property
    def count(self) -> int:
        return int(self.record.get("count", 0))

    def report(self) -> None:
        """The line at the end of a run that dropped samples (rank 0 alone prints)."""
        if not self.record or not distributed.context().is_main:
            return
        from cnncli import output

        parts = ", ".join(f"{n} in {s}" for s, n in self.record["by_split"].items() if n)
        sessions = " and its earlier sessions" if self.before.get("by_split") and any(
            self.before["by_split"].values()) else ""
        output.note(f"skipped {self.count} image(s) that could not be decoded (--skip-bad-images; {parts}, "
                    f"over all ranks{sessions}; a file counts once per pass that met it), first: "
                    f"{self.record['first'][0] if self.record['first'] else '?'}")
