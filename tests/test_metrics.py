"""Metrics against scikit-learn: confusion matrices, summaries, and the report text itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk

from bmjax import metrics

rng = np.random.default_rng(1)


def test_confusion_matrix_matches_sklearn_and_respects_weights():
    labels, predictions = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    got = jax.jit(metrics.confusion_matrix, static_argnums=2)(labels, predictions, 4)
    np.testing.assert_array_equal(got, sk.confusion_matrix(labels, predictions, labels=range(4)))
    mask = np.arange(300) < 200
    padded = metrics.confusion_matrix(labels, predictions, 4, jnp.asarray(mask, jnp.float32))
    np.testing.assert_array_equal(padded, sk.confusion_matrix(labels[:200], predictions[:200], labels=range(4)))
    halves = metrics.confusion_matrix(labels[:150], predictions[:150], 4) + \
        metrics.confusion_matrix(labels[150:], predictions[150:], 4)
    np.testing.assert_array_equal(halves, got)


def test_classification_summary_matches_sklearn_including_a_never_predicted_class():
    labels = rng.integers(0, 5, 400)
    predictions = np.where(rng.random(400) < 0.6, np.minimum(labels, 3), rng.integers(0, 4, 400))  # never 4
    summary = metrics.classification_summary(sk.confusion_matrix(labels, predictions, labels=range(5)))
    p, r, f, s = sk.precision_recall_fscore_support(labels, predictions, labels=range(5), zero_division=0)
    np.testing.assert_allclose(summary["precision"], p)
    np.testing.assert_allclose(summary["recall"], r)
    np.testing.assert_allclose(summary["f1"], f)
    np.testing.assert_array_equal(summary["support"], s)
    assert summary["precision"][4] == 0.0
    assert summary["accuracy"] == pytest.approx(sk.accuracy_score(labels, predictions))
    for average in ("macro", "weighted"):
        p, r, f, _ = sk.precision_recall_fscore_support(labels, predictions, average=average, zero_division=0)
        assert (summary[f"{average}_precision"], summary[f"{average}_recall"], summary[f"{average}_f1"]) == \
            pytest.approx((p, r, f))


def test_regression_summary_matches_sklearn():
    targets = rng.normal(150, 70, 200).astype(np.float32)
    predictions = (targets + rng.normal(0, 40, 200)).astype(np.float32)
    first = metrics.regression_sums(jnp.asarray(predictions[:120, None]), jnp.asarray(targets[:120]))
    second = metrics.regression_sums(jnp.asarray(predictions[120:, None]), jnp.asarray(targets[120:]))
    sums = {k: np.float64(first[k]) + np.float64(second[k]) for k in first}
    summary = metrics.regression_summary(sums)
    assert summary["mse"] == pytest.approx(sk.mean_squared_error(targets, predictions), rel=1e-5)
    assert summary["mae"] == pytest.approx(sk.mean_absolute_error(targets, predictions), rel=1e-5)
    assert summary["r2"] == pytest.approx(sk.r2_score(targets, predictions), rel=1e-4)


def test_regression_sums_count_elements_and_skip_padding():
    predictions, targets = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
    mask = np.arange(30) < 20
    sums = metrics.regression_sums(jnp.asarray(predictions), jnp.asarray(targets), jnp.asarray(mask))
    assert float(sums["count"]) == 60
    summary = metrics.regression_summary(sums)
    assert summary["mse"] == pytest.approx(sk.mean_squared_error(targets[:20], predictions[:20]), rel=1e-5)
    assert summary["mae"] == pytest.approx(sk.mean_absolute_error(targets[:20], predictions[:20]), rel=1e-5)
    flat_r2 = sk.r2_score(targets[:20].ravel(), predictions[:20].ravel())
    assert summary["r2"] == pytest.approx(flat_r2, rel=1e-4)


def test_r2_of_constant_targets_follows_sklearn():
    targets = np.full(8, 2.0)
    for predictions in (targets, targets + 1):
        summary = metrics.regression_summary(metrics.regression_sums(jnp.asarray(predictions), jnp.asarray(targets)))
        assert summary["r2"] == sk.r2_score(targets, predictions)


@pytest.mark.parametrize("num_classes, names, digits, missing", [
    (3, None, 2, None),
    (10, [f"class_{i}" for i in range(10)], 2, None),
    (4, None, 4, 3),
    (2, ["malignant", "a rather long benign class name"], 3, None),
])
def test_report_is_sklearns_text(num_classes, names, digits, missing):
    labels, predictions = rng.integers(0, num_classes, 250), rng.integers(0, num_classes, 250)
    if missing is not None:  # a class with no support and no predictions
        labels[labels == missing] = 0
        predictions[predictions == missing] = 1
    confusion = sk.confusion_matrix(labels, predictions, labels=range(num_classes))
    expected = sk.classification_report(labels, predictions, labels=range(num_classes), target_names=names,
                                        digits=digits, zero_division=0)
    assert metrics.classification_report(confusion, names, digits) == expected


def test_report_rounds_f1_as_sklearn_does():
    # tp=1, support 5, predicted 11: 2PR/(P+R) is 0.12500000000000003 ("0.13") where sklearn has 0.125 ("0.12")
    labels = np.array([0] * 5 + [1] * 20)
    predictions = np.array([0] + [1] * 4 + [0] * 10 + [1] * 10)
    confusion = sk.confusion_matrix(labels, predictions)
    summary = metrics.classification_summary(confusion)
    assert summary["f1"][0] == sk.f1_score(labels, predictions, average=None)[0] == 0.125
    assert metrics.classification_report(confusion) == sk.classification_report(labels, predictions)
    names = np.array(["benign", "malignant"])
    assert metrics.classification_report(confusion, names, 4) == \
        sk.classification_report(labels, predictions, target_names=names, digits=4)
