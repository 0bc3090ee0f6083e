"""`--max-samples N` (train, finetune, eval): a cap that keeps every class, and says when it is small.

The cap is stratified (`cnncli.data.splits.stratified_cap`): each class gets N // classes images
(the first N % classes one more). So an N below the number of classes leaves some classes
without a single image: training then never sees them, and an evaluation scores a subset of
the classes as if it were the whole. That is refused with one line (exit 2). A cap that keeps
every class but only a few images of some is allowed, with a one-line note.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnncli.errors import InputError

# below this many images in a class of the capped split, the figures say little (a note says so)
SMALL_PER_CLASS = 10


def check_capped_split(labels, class_names: Sequence[str], max_samples: int | None, split: str,
                       before=None, note: bool = True) -> None:
    """Refuse a cap under which a class of `split` has no image left, or the split none at all;
    note (on stderr) a cap that leaves fewer than SMALL_PER_CLASS images in a class.

    `before`: the split's labels before the cap, where known; then only the classes it had count
    (a class the data itself lacks is not the cap's doing). Without it, a class counts as taken
    by the cap only when N is below the number of classes (N >= classes keeps one of each)."""
    import torch

    if not max_samples:
        return

    def per_class(values):
        return torch.bincount(torch.as_tensor(values, dtype=torch.int64).reshape(-1), minlength=len(class_names))

    counts = per_class(labels)
    if int(counts.sum()) == 0:
        raise InputError(f"--max-samples {max_samples} leaves the {split} split empty")
    had = per_class(before) > 0 if before is not None else torch.ones(len(class_names), dtype=torch.bool)
    classes = int(had.sum())
    gone = [name for name, count, was in zip(class_names, counts.tolist(), had.tolist()) if was and count == 0]
    if gone and max_samples < classes:
        named = ", ".join(gone[:3]) + (f" and {len(gone) - 3} more" if len(gone) > 3 else "")
        raise InputError(f"--max-samples {max_samples} leaves no {split} image of {len(gone)} of the "
                         f"{classes} classes ({named}); give at least {classes}, one per class")
    smallest = int(counts[counts > 0].min())
    if note and smallest < SMALL_PER_CLASS:
        from cnncli.output import note as say

        say(f"--max-samples {max_samples}: {int(counts.sum())} {split} images, as few as {smallest} in a "
            f"class; figures from so few images say little")
