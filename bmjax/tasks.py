"""Tasks: what a model's outputs are scored against, as a loss and as metric sums.

A task's `loss` gives one value per example; `metric_sums` gives sums that add
across batches and devices (so the compiled step can `psum` them), and
`summarize` turns accumulated sums into numbers on the host.
"""

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from bmjax import losses, metrics
from bmjax.data import Dataset
from bmjax.errors import UsageError


class Classification:
    """Softmax cross-entropy over `num_classes` logits."""

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None):
        self.num_classes = num_classes
        self.num_outputs = num_classes
        self.class_names = tuple(class_names) if class_names else None

    def loss(self, outputs, labels):
        return losses.softmax_cross_entropy(outputs, labels)

    def predictions(self, outputs):
        return jnp.argmax(outputs, axis=-1)

    def metric_sums(self, outputs, labels, per_example_loss, weights):
        if labels.ndim == outputs.ndim:  # one-hot or soft labels
            labels = jnp.argmax(labels, axis=-1)
        return {
            "loss": jnp.sum(per_example_loss * weights),
            "count": jnp.sum(weights),
            "confusion": metrics.confusion_matrix(labels, self.predictions(outputs), self.num_classes, weights),
        }

    def summarize(self, sums, detailed: bool = False) -> dict:
        confusion = np.asarray(sums["confusion"], np.float64)
        summary = metrics.classification_summary(confusion)
        result = {"loss": float(sums["loss"] / sums["count"]), "accuracy": summary["accuracy"]}
        if detailed:
            result.update({k: v for k, v in summary.items() if k != "accuracy"})
            result["confusion_matrix"] = confusion.astype(np.int64).tolist()
            result["classification_report"] = metrics.classification_report(confusion, self.class_names)
        return result


class Binary(Classification):
    """One logit per example and sigmoid binary cross-entropy; reported like two-class classification."""

    def __init__(self, class_names: Optional[Sequence[str]] = None):
        super().__init__(2, class_names)
        self.num_outputs = 1

    def loss(self, outputs, labels):
        return losses.sigmoid_binary_cross_entropy(outputs, labels)

    def predictions(self, outputs):
        return (outputs.reshape(outputs.shape[0]) > 0).astype(jnp.int32)


class Regression:
    """Squared error against targets standardised with the training split's mean and std.

    The model predicts standardised targets (so no layer must learn their scale);
    MSE, MAE and R² are reported in the targets' own units.
    """

    def __init__(self, target_mean: float = 0.0, target_std: float = 1.0, num_outputs: int = 1):
        self.target_mean, self.target_std = float(target_mean), float(target_std) or 1.0
        self.num_outputs = num_outputs

    def loss(self, outputs, targets):
        return losses.squared_error(outputs, (targets - self.target_mean) / self.target_std)

    def metric_sums(self, outputs, targets, per_example_loss, weights):
        # Centred on the training mean, so that float32 sums of squares keep R²'s precision.
        centred_predictions = outputs * self.target_std
        sums = metrics.regression_sums(centred_predictions, targets - self.target_mean, weights)
        return {"loss": jnp.sum(per_example_loss * weights), "examples": jnp.sum(weights), **sums}

    def summarize(self, sums, detailed: bool = False) -> dict:
        summary = metrics.regression_summary({k: np.float64(v) for k, v in sums.items()})
        return {"loss": float(sums["loss"] / sums["examples"]), **summary}


class LanguageModel:
    """Next-token cross-entropy over every position; reported as loss, token accuracy and perplexity."""

    def __init__(self, vocab_size: int):
        self.num_outputs = vocab_size

    def loss(self, logits, tokens):
        return jnp.mean(losses.softmax_cross_entropy(logits, tokens), axis=-1)  # one value per sequence

    def metric_sums(self, logits, tokens, per_example_loss, weights):
        correct = jnp.mean(jnp.argmax(logits, axis=-1) == tokens, axis=-1)
        return {"loss": jnp.sum(per_example_loss * weights), "count": jnp.sum(weights),
                "correct": jnp.sum(correct * weights)}

    def summarize(self, sums, detailed: bool = False) -> dict:
        loss = float(sums["loss"] / sums["count"])
        return {"loss": loss, "accuracy": float(sums["correct"] / sums["count"]), "perplexity": float(np.exp(loss))}


def create(name: str, dataset: Dataset):
    """The task `name` ('auto' follows the dataset) for a dataset."""
    info = dataset.info
    if name == "auto":
        name = info.task
    if name in ("classification", "binary") and info.task != "classification":
        raise UsageError(f"--task={name} needs a classification dataset; {info.name} is a {info.task} dataset "
                         "(use --task=regression)")
    if name == "classification":
        return Classification(info.num_classes, info.class_names)
    if name == "binary":
        if info.num_classes != 2:
            raise UsageError(f"--task=binary needs two classes; {info.name} has {info.num_classes} "
                             "(use --task=classification)")
        return Binary(info.class_names)
    if name == "language_model":
        if info.task != "language_model":
            raise UsageError(f"--task=language_model needs a text dataset; {info.name} is a {info.task} dataset")
        return LanguageModel(info.num_classes)
    if name == "regression":
        if info.task != "regression":
            raise UsageError(f"--task=regression needs a regression dataset; {info.name} is a classification "
                             "dataset")
        targets = dataset.train[np.arange(min(len(dataset.train), 100_000))]["y"]
        return Regression(np.mean(targets), np.std(targets))
    raise UsageError(f"unknown task {name!r}; choose auto, classification, binary, regression or language_model")
