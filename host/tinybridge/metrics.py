"""Classification metrics over predicted and true labels."""
import numpy as np


def classification_metrics(labels, predictions, num_classes):
    """accuracy, precision, recall, f1, n, average, confusion, per_class.

    Two classes: binary metrics of class 1 (the positive class, e.g. "person" in Visual Wake
    Words). More: macro averages over the classes that occur in `labels` or `predictions`.
    A class never predicted has precision 0, one never present recall 0 (as scikit-learn's
    zero_division=0). confusion[t][p] counts true label t predicted as p. per_class: lists of
    each class's precision, recall, f1 and support (its true count).
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError("labels and predictions must be two sequences of the same length")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0)
    if num_classes == 2:
        average, chosen = "binary", np.array([1])
    else:
        average, chosen = "macro", np.flatnonzero((predicted > 0) | (actual > 0))
    n = int(labels.size)
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "precision": float(precision[chosen].mean()) if chosen.size else 0.0,
        "recall": float(recall[chosen].mean()) if chosen.size else 0.0,
        "f1": float(f1[chosen].mean()) if chosen.size else 0.0,
        "n": n,
        "average": average,
        "confusion": confusion.tolist(),
        "per_class": {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
                      "support": actual.tolist()},
    }
