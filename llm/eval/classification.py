"""Classification metrics: accuracy, the confusion matrix, per-class and macro F1.

Macro-F1 is the unweighted mean of the per-class F1 scores (Sokolova & Lapalme 2009,
"A systematic analysis of performance measures for classification tasks"), so a classifier
that ignores a rare class is penalised as much as one that ignores a common one: the
figure to report beside accuracy on an unbalanced label set. A class that is never
predicted and never true has F1 0 here (scikit-learn's `zero_division=0`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """[C, C] counts: row = true class, column = predicted class."""
    true, pred = np.asarray(true, np.int64), np.asarray(pred, np.int64)
    for name, values in (("true", true), ("pred", pred)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{name} labels outside [0, {n_classes}): {np.unique(values)}")
    out = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(out, (true, pred), 1)
    return out


def f1_per_class(matrix: np.ndarray) -> np.ndarray:
    """[C] F1 = 2 tp / (2 tp + fp + fn) of each class; 0 where the denominator is 0."""
    tp = np.diag(matrix).astype(np.float64)
    denom = 2 * tp + (matrix.sum(0) - tp) + (matrix.sum(1) - tp)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def classification_metrics(
    true: np.ndarray, pred: np.ndarray, labels: Sequence[str]
) -> dict[str, object]:
    """accuracy, macro_f1, f1/<label> for each label, confusion ([C][C] list), examples."""
    if len(true) == 0:
        raise ValueError("classification metrics of no examples")
    matrix = confusion(true, pred, len(labels))
    f1 = f1_per_class(matrix)
    return {
        "accuracy": float(np.trace(matrix) / matrix.sum()),
        "macro_f1": float(f1.mean()),
        **{f"f1/{label}": float(v) for label, v in zip(labels, f1, strict=True)},
        "confusion": matrix.tolist(),
        "examples": int(matrix.sum()),
    }


def report(metrics: dict, labels: Sequence[str]) -> str:
    """Accuracy, macro-F1, per-class F1 and the confusion matrix as a small text table."""
    width = max(7, *(len(label) for label in labels))
    head = " " * width + " | " + " ".join(f"{label[:width]:>{width}}" for label in labels)
    lines = [
        f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
        f"over {metrics['examples']} examples",
        "per-class F1: " + ", ".join(f"{lab} {metrics[f'f1/{lab}']:.3f}" for lab in labels),
        "confusion (rows true, columns predicted):",
        head,
    ]
    for label, row in zip(labels, metrics["confusion"], strict=True):
        lines.append(f"{label[:width]:>{width}} | " + " ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
