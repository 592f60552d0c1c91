"""Metrics as sums inside the compiled step (they add across batches and devices), numbers on the host.

`classification_report` prints what scikit-learn's `classification_report` prints,
computed from a confusion matrix alone.
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels, predictions, num_classes: int, weights=None):
    """[C, C] float32 counts, rows true class, columns predicted; `weights` weight each example."""
    truth = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if weights is not None:
        truth = truth * weights.astype(jnp.float32)[:, None]
    return truth.T @ jax.nn.one_hot(predictions, num_classes, dtype=jnp.float32)


def regression_sums(predictions, targets, weights=None):
    """Weighted sums from which MSE, MAE and R² follow; over all output elements."""
    predictions = predictions.reshape(predictions.shape[0], -1).astype(jnp.float32)
    targets = targets.reshape(predictions.shape).astype(jnp.float32)
    w = jnp.ones(predictions.shape[0], jnp.float32) if weights is None else weights.astype(jnp.float32)
    w = jnp.broadcast_to(w[:, None], predictions.shape)
    error = predictions - targets
    return {"count": jnp.sum(w), "sum_squared_error": jnp.sum(w * error ** 2),
            "sum_abs_error": jnp.sum(w * jnp.abs(error)), "sum_target": jnp.sum(w * targets),
            "sum_target_sq": jnp.sum(w * targets ** 2)}


def _divide(numerator, denominator):
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division default)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64),
                     where=denominator != 0)


def classification_summary(confusion) -> dict:
    """Accuracy, per-class precision/recall/F1/support and their macro and support-weighted averages."""
    confusion = np.asarray(confusion, np.float64)
    true_positives = np.diag(confusion)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = _divide(true_positives, predicted)
    recall = _divide(true_positives, support)
    # F1 from counts as scikit-learn computes it: 2PR/(P+R) rounds differently (0.12500000000000003 vs 0.125)
    f1 = _divide(2 * true_positives, support + predicted)
    total = support.sum()
    summary = {"accuracy": float(true_positives.sum() / total) if total else 0.0,
               "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
               "support": support.astype(np.int64).tolist()}
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        summary[f"macro_{name}"] = float(values.mean())
        summary[f"weighted_{name}"] = float((values * support).sum() / total) if total else 0.0
    return summary


def regression_summary(sums) -> dict:
    """MSE, MAE and R² (1 - SSE/SST, SST = Σy² - (Σy)²/n) from `regression_sums` totals."""
    n = float(sums["count"])
    if n == 0:
        return {"mse": float("nan"), "mae": float("nan"), "r2": float("nan")}
    total_variation = float(sums["sum_target_sq"]) - float(sums["sum_target"]) ** 2 / n
    sse = float(sums["sum_squared_error"])
    if total_variation > 0:
        r2 = 1.0 - sse / total_variation
    else:  # constant targets: 1 for a perfect fit, else 0, as scikit-learn's r2_score
        r2 = 1.0 if sse == 0 else 0.0
    return {"mse": sse / n, "mae": float(sums["sum_abs_error"]) / n, "r2": r2}


def classification_report(confusion, target_names: Optional[Sequence[str]] = None, digits: int = 2) -> str:
    """The text of `sklearn.metrics.classification_report`, character for character."""
    summary = classification_summary(confusion)
    if target_names is None:
        target_names = range(len(summary["support"]))  # labels 0..C-1, as scikit-learn names them
    names = [str(n) for n in target_names]
    headers = ["precision", "recall", "f1-score", "support"]
    averages = ["macro avg", "weighted avg"]
    width = max(max(len(n) for n in names), len(averages[-1]), digits)
    report = ("{:>{width}s} " + " {:>9}" * len(headers)).format("", *headers, width=width) + "\n\n"
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    for i, name in enumerate(names):
        report += row.format(name, summary["precision"][i], summary["recall"][i], summary["f1"][i],
                             summary["support"][i], width=width, digits=digits)
    report += "\n"
    total = int(sum(summary["support"]))
    report += ("{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
        "accuracy", "", "", summary["accuracy"], total, width=width, digits=digits)
    for average in averages:
        key = average.split()[0]
        report += row.format(average, summary[f"{key}_precision"], summary[f"{key}_recall"],
                             summary[f"{key}_f1"], total, width=width, digits=digits)
    return report


def frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """The Frechet (2-Wasserstein) distance between two Gaussians, ||mean_a - mean_b||^2 + tr(cov_a + cov_b -
    2 (cov_a cov_b)^(1/2)) (Dowson & Landau 1982): FID's formula, in whatever feature space the moments come from."""
    import warnings

    from scipy import linalg

    with warnings.catch_warnings():  # features that never fire (ReLU's) make the product singular: harmless here
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # a singular product: nudge both away from it, as FID's reference code does
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    return float(np.sum(np.square(mean_a - mean_b)) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real))
