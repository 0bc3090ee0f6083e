"""Per-image predictions of an evaluation: what `eval --predictions FILE.csv` writes, and what
`viz mistakes` and `compare` read back.

`PredictionCollector` is handed to `cnncli.engine.evaluate.evaluate` as its `on_batch` hook:
it keeps, for every image of the split, the top-5 classes with their probabilities, the
probability of the true class and the cross-entropy loss. Under torchrun each rank fills the
rows of its own shard and one sum over ranks puts the whole table on every rank.

The CSV has one row per image: `id` (the file path for an image folder, else the index in the
split), `dataset`, `split`, `true`, `predicted`, `prob_true`, `prob_predicted`, `loss` and
`top5` (class names, most probable first, separated by `|`).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnncli.errors import InputError

COLUMNS = ["id", "dataset", "split", "true", "predicted", "prob_true", "prob_predicted", "loss", "top5"]
TOP_K = 5


@dataclass
class Prediction:
    """One image's row."""

    id: str
    dataset: str
    split: str
    true: str
    predicted: str
    prob_true: float
    prob_predicted: float
    loss: float
    top5: list[str]

    @property
    def correct(self) -> bool:
        return self.true == self.predicted

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "dataset": self.dataset, "split": self.split, "true": self.true,
                "predicted": self.predicted, "prob_true": self.prob_true,
                "prob_predicted": self.prob_predicted, "loss": self.loss, "top5": list(self.top5)}


class PredictionCollector:
    """The `on_batch(index, logits, targets)` hook of `evaluate` that keeps every image's row."""

    def __init__(self, n: int, num_classes: int):
        import torch

        self.k = min(TOP_K, num_classes)
        self.top_index = torch.zeros(n, self.k, dtype=torch.int64)
        self.top_prob = torch.zeros(n, self.k, dtype=torch.float64)
        self.prob_true = torch.zeros(n, dtype=torch.float64)
        self.loss = torch.zeros(n, dtype=torch.float64)
        self.seen = torch.zeros(n, dtype=torch.int64)

    def __call__(self, index, logits, targets) -> None:
        import torch
        import torch.nn.functional as F

        logits = logits.float().cpu()
        targets = targets.cpu()
        if isinstance(index, slice):
            index = torch.arange(len(self.seen))[index]
        log_probs = F.log_softmax(logits, dim=1)
        top = log_probs.topk(self.k, dim=1)
        self.top_index[index] = top.indices
        self.top_prob[index] = top.values.double().exp()
        true_log = log_probs.gather(1, targets[:, None]).squeeze(1).double()
        self.prob_true[index] = true_log.exp()
        self.loss[index] = -true_log
        self.seen[index] = 1

    def gather(self) -> None:
        """Under torchrun: every rank gets the rows of all shards (each row is filled by one rank)."""
        from cnncli.engine import distributed

        if not distributed.context().enabled:
            return
        for t in (self.top_prob, self.prob_true, self.loss):
            distributed.all_reduce_sum(t)
        for name in ("top_index", "seen"):
            value = getattr(self, name).double()
            distributed.all_reduce_sum(value)
            setattr(self, name, value.round().long())

    def rows(self, labels, class_names: list[str], ids: list[str], dataset: str, split: str) -> list[Prediction]:
        names = list(class_names)

        def name(i: int) -> str:
            return names[i] if 0 <= i < len(names) else str(i)

        out = []
        for r, (label, top_i, top_p) in enumerate(zip(labels.tolist(), self.top_index.tolist(),
                                                     self.top_prob.tolist())):
            out.append(Prediction(id=str(ids[r]), dataset=dataset, split=split, true=name(label),
                                  predicted=name(top_i[0]), prob_true=float(self.prob_true[r]),
                                  prob_predicted=float(top_p[0]), loss=float(self.loss[r]),
                                  top5=[name(i) for i in top_i]))
        return out


def to_csv(rows: list[Prediction]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in rows:
        writer.writerow([p.id, p.dataset, p.split, p.true, p.predicted, f"{p.prob_true:.6g}",
                         f"{p.prob_predicted:.6g}", f"{p.loss:.6g}", "|".join(p.top5)])
    return buf.getvalue()


def write_predictions(path: str | os.PathLike, rows: list[Prediction]) -> Path:
    """The CSV, written atomically under the output-path policy (cnncli.outputs)."""
    from cnncli.outputs import PREDICTIONS_CSV, write_file

    return write_file(path, to_csv(rows).encode("utf-8"), PREDICTIONS_CSV, "--predictions")


def read_predictions(path: str | os.PathLike) -> list[Prediction]:
    """Rows of a predictions CSV that `eval --predictions` wrote; InputError naming what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a predictions CSV") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it as a predictions CSV ({e})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{path} is not a predictions CSV from 'cnncli eval --predictions' "
                         f"(missing column(s): {', '.join(missing)})")
    rows = []
    for line, rec in enumerate(reader, 2):
        try:
            rows.append(Prediction(id=rec["id"], dataset=rec["dataset"], split=rec["split"], true=rec["true"],
                                   predicted=rec["predicted"], prob_true=float(rec["prob_true"]),
                                   prob_predicted=float(rec["prob_predicted"]), loss=float(rec["loss"]),
                                   top5=[c for c in (rec["top5"] or "").split("|") if c]))
        except (TypeError, ValueError):
            raise InputError(f"{path}: line {line} has a value that is not a number") from None
    if not rows:
        raise InputError(f"{path} has no predictions")
    return rows
