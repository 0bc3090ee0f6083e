"""`cnncli compare A B`: two runs (or a run and a file exported from it) on the same images.

Both sides are evaluated on one split of one data set (A's, unless `data` says otherwise),
loaded once with A's seed (a generated data set draws its test images from the seed), each
side preparing the images as its own metadata says. The result says what
differs in the recorded configuration, how every metric moved (B - A), how each class's F1
moved, the difference of the confusion matrices, and which images flipped: right in A and
wrong in B, or the other way round. A run against its own ONNX export flips nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnncli.errors import InputError

# metadata keys that are results, not configuration
_NOT_CONFIG = {"metrics"}


@dataclass
class Side:
    ref: str
    meta: dict[str, Any]
    source: str  # "checkpoint" or "onnx"
    doc: dict[str, Any]  # metrics, per class, confusion
    predictions: list  # cnncli.engine.predictions.Prediction per image


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"recipe": {"lr": 0.1}} -> {"recipe.lr": 0.1}; lists stay values."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """The configuration keys whose values differ, with both values (None: absent)."""
    fa = flatten({k: v for k, v in a.items() if k not in _NOT_CONFIG})
    fb = flatten({k: v for k, v in b.items() if k not in _NOT_CONFIG})
    return [{"key": k, "a": fa.get(k), "b": fb.get(k)}
            for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def _evaluate_side(ref: str, predictor, subset, class_names, data: str, split: str, batch_size: int) -> Side:
    import torch

    from cnncli.data.transforms import prepare_batch
    from cnncli.engine.evaluate import evaluate
    from cnncli.engine.metrics import averages, confused_pairs
    from cnncli.engine.predictions import PredictionCollector

    meta = predictor.meta
    network = predictor.model if isinstance(predictor.model, torch.nn.Module) else _forward_module(predictor.forward)
    device = predictor.device

    def prepare(batch):
        return prepare_batch(batch, meta["input_size"], meta["mean"], meta["std"], device)

    if getattr(subset, "streaming", False):  # decoded in DataLoader workers with this side's eval transform
        from cnncli.data.stream import StreamConfig, own_eval

        size = [int(v) for v in meta["input_size"]]
        subset.configure(StreamConfig(size=size[1], channels=size[0], **own_eval(meta)))

    collector = PredictionCollector(len(subset.labels), len(class_names))
    result = evaluate(network, subset.images, subset.labels, prepare, len(class_names), class_names,
                      batch_size=batch_size, device=device, shard=False, on_batch=collector)
    doc = result.to_dict()
    doc.update(averages(doc["per_class"]))
    doc["confused_pairs"] = confused_pairs(doc["confusion"], class_names)
    rows = collector.rows(subset.labels, class_names, subset.ids, data, split)
    return Side(ref, meta, predictor.source, doc, rows)


def _forward_module(fn):
    import torch

    class Forward(torch.nn.Module):
        """A plain function (onnxruntime's or OpenVINO's session: numpy in, numpy out) where
        evaluate expects a module."""

        def __init__(self):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            import numpy as np

            return torch.as_tensor(np.asarray(self.fn(x.detach().cpu().numpy())))

    return Forward()


def compare_runs(a: str, b: str, data: str | None = None, split: str = "test", data_dir: str | None = None,
                 batch_size: int = 512, device: str = "auto", threads: int | None = None,
                 max_samples: int | None = None) -> dict[str, Any]:
    """The comparison document of two runs / checkpoints / exported files."""
    from cnncli.engine.eval_run import SPLITS, _first_per_class, _load_split
    from cnncli.predict import open_predictor

    if split not in SPLITS:
        raise InputError(f"--split must be one of {', '.join(SPLITS)}; got '{split}'")
    pa = open_predictor(a, device=device, threads=threads)
    pb = open_predictor(b, device=device, threads=threads)
    from cnncli.data.paths import recorded_dataset

    data = data or recorded_dataset(pa.meta) or recorded_dataset(pb.meta)
    if not data:
        raise InputError(f"neither {a} nor {b} records its dataset; pass --data NAME")
    names_a, names_b = pa.class_names, pb.class_names
    if names_a != names_b:
        raise InputError(f"{a} and {b} do not have the same classes ({names_a[:3]}... vs {names_b[:3]}...); "
                         "compare networks trained for the same classes")
    from cnncli.data.registry import canonical_dataset_name
    from cnncli.data.stream import trained_streaming

    photos = canonical_dataset_name(data).partition(":")[0].lower() in ("imagefolder", "csv")
    stream = True if photos and (trained_streaming(pa.meta) or trained_streaming(pb.meta)) else None  # each side's own crop
    subset, class_names, _ = _load_split(data, split, data_dir, False, int(pa.meta.get("seed") or 0), stream)
    if class_names != names_a:
        raise InputError(f"'{data}' has classes {class_names[:3]}..., but {a} was trained on "
                         f"{names_a[:3]}...: the classes do not match")
    if subset.ids is None:
        subset.ids = [str(i) for i in range(len(subset.labels))]
    if max_samples:
        from cnncli.engine.sample_cap import check_capped_split

        uncapped, subset = subset.labels, _first_per_class(subset, max_samples)
        check_capped_split(subset.labels, class_names, max_samples, split, before=uncapped)
    side_a = _evaluate_side(a, pa, subset, class_names, data, split, batch_size)
    side_b = _evaluate_side(b, pb, subset, class_names, data, split, batch_size)
    return comparison(side_a, side_b, class_names, data, split)


def comparison(side_a: Side, side_b: Side, class_names: list[str], data: str, split: str) -> dict[str, Any]:
    """The document: configuration diff, metric deltas, per-class F1 deltas, confusion
    difference (B - A) and the flipped images."""
    da, db = side_a.doc, side_b.doc
    metrics = []
    for key, value_a, value_b in [
        ("top1", da["top1"], db["top1"]), ("top5", da["top5"], db["top5"]), ("loss", da["loss"], db["loss"]),
        ("macro_f1", da["macro"]["f1"], db["macro"]["f1"]),
        ("weighted_f1", da["weighted"]["f1"], db["weighted"]["f1"]),
    ]:
        metrics.append({"metric": key, "a": value_a, "b": value_b, "delta": value_b - value_a})
    per_class = [{"class": pa["class"], "f1_a": pa["f1"], "f1_b": pb["f1"], "delta": pb["f1"] - pa["f1"],
                  "support": pa["support"]}
                 for pa, pb in zip(da["per_class"], db["per_class"])]
    confusion_delta = [[vb - va for va, vb in zip(ra, rb)] for ra, rb in zip(da["confusion"], db["confusion"])]
    fixed, broken, changed = [], [], 0
    for ra, rb in zip(side_a.predictions, side_b.predictions):
        if ra.predicted != rb.predicted:
            changed += 1
        if ra.correct != rb.correct:
            entry = {"id": ra.id, "true": ra.true, "a": ra.predicted, "b": rb.predicted,
                     "prob_a": ra.prob_predicted, "prob_b": rb.prob_predicted}
            (fixed if rb.correct else broken).append(entry)
    return {
        "a": {"ref": side_a.ref, "source": side_a.source, "model": side_a.meta.get("model", {}).get("name")},
        "b": {"ref": side_b.ref, "source": side_b.source, "model": side_b.meta.get("model", {}).get("name")},
        "dataset": data, "split": split, "n": da["n"], "class_names": class_names,
        "config_diff": config_diff(side_a.meta, side_b.meta),
        "metrics": metrics,
        "per_class_f1": per_class,
        "confusion_delta": confusion_delta,
        "changed_predictions": changed,
        "flipped": {"to_wrong": broken, "to_right": fixed},
    }
