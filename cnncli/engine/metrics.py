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
