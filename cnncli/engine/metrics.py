"""Classification metrics from a confusion matrix (rows: true class, columns: predicted)."""

from __future__ import annotations

from typing import Any


def per_class_report(confusion: list[list[int]], class_names: list[str]) -> list[dict[str, Any]]:
    """Precision, recall and F1 per class; 0.0 where a ratio has no denominator (as sklearn)."""
    n = len(confusion)
    report = []
    for c in range(n):
        tp = confusion[c][c]
        predicted = sum(confusion[r][c] for r in range(n))
        actual = sum(confusion[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report.append({"class": class_names[c] if c < len(class_names) else str(c),
                       "precision": precision, "recall": recall, "f1": f1, "support": actual})
    return report


def confusion_update(confusion, targets, predictions, num_classes: int):
    """Add a batch to a (num_classes, num_classes) int64 tensor, without a Python loop."""
    import torch

    index = targets.to(torch.int64) * num_classes + predictions.to(torch.int64)
    confusion += torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)
    return confusion


def averages(per_class: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Macro (every class counts the same) and weighted (by support) precision, recall and F1,
    as sklearn's classification_report computes them."""
    total = sum(p["support"] for p in per_class)
    out = {}
    for kind in ("macro", "weighted"):
        weights = [1.0 / len(per_class) if per_class else 0.0] * len(per_class) if kind == "macro" \
            else [p["support"] / total if total else 0.0 for p in per_class]
        out[kind] = {key: sum(w * p[key] for w, p in zip(weights, per_class))
                     for key in ("precision", "recall", "f1")}
    return out


def confused_pairs(confusion: list[list[int]], class_names: list[str], top: int = 5) -> list[dict[str, Any]]:
    """The `top` most frequent mistakes (true class, predicted class, count), most frequent first;
    ties in the order of the matrix."""
    pairs = [(confusion[t][p], t, p) for t in range(len(confusion)) for p in range(len(confusion[t]))
             if t != p and confusion[t][p] > 0]
    pairs.sort(key=lambda e: (-e[0], e[1], e[2]))

    def name(i: int) -> str:
        return class_names[i] if i < len(class_names) else str(i)

    return [{"true": name(t), "predicted": name(p), "count": int(c)} for c, t, p in pairs[:top]]
