"""Class imbalance: loss weights per class (`--class-weights`) and the epoch's order (`--sampler`).

- `--class-weights auto`: inverse class frequency, normalised so that the weighted mean over the
  training images is 1 (n / (classes * count), scikit-learn's "balanced"); the loss keeps its
  scale and a balanced dataset gets weight 1 everywhere.
- `--class-weights FILE`: a JSON object `{"class name": weight}` or a CSV of `name,weight`
  rows (a header row is allowed); every class of the dataset must be there, each weight a
  finite number > 0, and no other names.
- `--sampler balanced`: each epoch draws as many images as the training set has, with
  replacement: a class uniformly, then one of its images uniformly.

The epoch's order is a pure function of (labels, seed, sampler): the trainer seeds it with
(seed, epoch), so a resumed run draws the same batches.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from cnncli.errors import InputError

if TYPE_CHECKING:
    import torch

MAX_WEIGHTS_FILE_BYTES = 16 * 2**20  # a name and a number per class: far more than any dataset has


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    import torch

    return torch.bincount(labels.long().flatten(), minlength=num_classes)[:num_classes]


def auto_class_weights(labels: torch.Tensor, num_classes: int) -> list[float]:
    """n / (classes * count) per class; a class without training images gets 1 (it is never a target)."""
    import torch

    counts = class_counts(labels, num_classes).double()
    n = float(counts.sum())
    weights = torch.where(counts > 0, n / (num_classes * counts.clamp(min=1)), torch.ones_like(counts))
    return [float(w) for w in weights]


IMBALANCED = 5.0  # largest / smallest class from which train says how to even them out


def imbalance(counts, class_names: list[str]) -> dict | None:
    """The largest and smallest class among those with images, and their ratio (None: no classes)."""
    pairs = [(int(c), n) for c, n in zip(counts, class_names) if int(c) > 0]
    if not pairs:
        return None
    (big, big_name), (small, small_name) = max(pairs), min(pairs)
    return {"largest": {"class": big_name, "images": big}, "smallest": {"class": small_name, "images": small},
            "ratio": round(big / small, 2)}


def note_imbalance(labels: torch.Tensor, class_names: list[str], spec: str | None, sampler: str | None,
                   enabled: bool = True) -> None:
    """One note when the training classes differ by IMBALANCED or more and nothing evens them out."""
    if not enabled or spec is not None or sampler == "balanced":
        return
    found = imbalance(class_counts(labels, len(class_names)).tolist(), class_names)
    if found and found["ratio"] >= IMBALANCED:
        from cnncli.output import note

        note(f"the classes are imbalanced: {found['largest']['class']} has {found['largest']['images']:,} training "
             f"images, {found['smallest']['class']} {found['smallest']['images']:,} ({found['ratio']:g}x); "
             "--class-weights auto or --sampler balanced weigh them evenly")


def read_class_weights(path: str | Path, class_names: list[str] | None) -> list[float]:
    """The weights of a JSON or CSV file, in the order of `class_names`; checked (see the module doc).

    Without `class_names` (before the data is loaded) only the file itself is checked."""
    path = Path(path)
    where = f"--class-weights {path}"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{where}: no such file (give 'auto' or a JSON/CSV file of class name -> weight)") from None
    except OSError as e:
        raise InputError(f"{where}: cannot read it: {e.strerror or e}") from None
    if not path.is_file():
        raise InputError(f"{where}: not a file")
    if size > MAX_WEIGHTS_FILE_BYTES:
        raise InputError(f"{where}: {size:,} bytes is not a class-weights file "
                         f"(at most {MAX_WEIGHTS_FILE_BYTES:,})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{where}: cannot read it as UTF-8 text: {e}") from None
    pairs = _parse(text, where)
    names = set(class_names or ())
    seen: dict[str, float] = {}
    for name, raw in pairs:
        if class_names is not None and name not in names:
            raise InputError(f"{where}: '{name}' is not a class of the dataset (its classes: "
                             f"{', '.join(class_names)})")
        if name in seen:
            raise InputError(f"{where}: '{name}' is given twice")
        seen[name] = _weight(raw, name, where)
    if class_names is None:
        return list(seen.values())
    missing = [n for n in class_names if n not in seen]
    if missing:
        raise InputError(f"{where}: no weight for {len(missing)} class{'es' if len(missing) > 1 else ''}: "
                         f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    return [seen[n] for n in class_names]


def _parse(text: str, where: str) -> list[tuple[str, object]]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise InputError(f"{where}: not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise InputError(f"{where}: the JSON must be an object of class name -> weight")
        return [(str(k), v) for k, v in doc.items()]
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    except csv.Error as e:
        raise InputError(f"{where}: not a valid CSV: {e}") from None
    if rows and len(rows[0]) == 2 and _number(rows[0][1]) is None and rows[0][1].strip():
        rows = rows[1:]  # a header row such as "class,weight"
    pairs = []
    for i, row in enumerate(rows, 1):
        if len(row) != 2:
            raise InputError(f"{where}: CSV row {i} has {len(row)} fields; each row is: class name,weight")
        pairs.append((row[0].strip(), row[1].strip()))
    return pairs


def _number(raw: object) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return float(raw)
    try:
        return float(str(raw))
    except ValueError:
        return None


def _weight(raw: object, name: str, where: str) -> float:
    value = _number(raw)
    if value is None or not math.isfinite(value) or value <= 0:
        raise InputError(f"{where}: the weight of '{name}' must be a finite number > 0, got {raw!r}")
    return value


def check_class_weights(spec: str | None) -> None:
    """A `--class-weights FILE` is readable and its weights are good (the names wait for the data)."""
    if spec not in (None, "auto"):
        read_class_weights(spec, None)


def resolve_class_weights(spec: str | None, labels: torch.Tensor, class_names: list[str],
                          resume_dir: str | Path | None = None) -> list[float] | None:
    """`--class-weights` as one weight per class in the loss (None: unweighted).

    A resumed run takes the weights its state recorded, whatever the file says now (or wherever
    it is now: the recipe names it relative to where the run started)."""
    if spec is None:
        return None
    state = Path(resume_dir) / "train_state.safetensors" if resume_dir is not None else None
    if state is not None and state.exists():
        from cnncli.checkpoint import read_meta

        recorded = read_meta(state).get("class_weights")
        if isinstance(recorded, dict) and set(recorded) == set(class_names):
            return [float(recorded[n]) for n in class_names]
    if spec == "auto":
        return auto_class_weights(labels, len(class_names))
    return read_class_weights(spec, class_names)


def epoch_order(labels: torch.Tensor, seed: int, sampler: str = "random") -> torch.Tensor:
    """The training images' indices for one epoch, drawn from a generator seeded with `seed`.

    random: a permutation (each image once). balanced: len(labels) draws with replacement,
    each class equally likely, each image of a class equally likely within it.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    if sampler == "balanced":  # a class uniformly, then an image of it uniformly (any n: no multinomial cap)
        labels = labels.long().flatten()
        counts = torch.bincount(labels)
        present = torch.nonzero(counts).flatten()
        by_class = torch.argsort(labels, stable=True)  # image indices grouped by class, in class order
        starts = torch.cumsum(counts, 0) - counts
        drawn = present[torch.randint(len(present), (n,), generator=generator)]
        offset = (torch.rand(n, generator=generator, dtype=torch.float64) * counts[drawn]).long()
        return by_class[starts[drawn] + offset.clamp(max=counts[drawn] - 1)]
    return torch.randperm(n, generator=generator)
