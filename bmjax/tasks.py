"""Tasks: what a model's outputs are scored against, as a loss and as metric sums.

A task's `loss` gives, per example, a loss sum and the weight it carries (1 for
an example; its number of scored tokens for a sequence), so that a batch's loss is
sum(losses) / sum(weights) however the batch is split over devices or
micro-batches. `metric_sums` gives sums that add across batches and devices
(the compiled step can `psum` them), and `summarize` turns accumulated sums into
numbers on the host. `prepare` changes a batch on the device before the model
sees it (masked-LM corruption); it is the identity elsewhere.
"""

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from bmjax import losses, metrics
from bmjax.data import Dataset
from bmjax.errors import UsageError

TOP_K = 5  # classification with more classes than this also reports top-5 accuracy


class Task:
    def prepare(self, batch: dict, rng) -> dict:
        return batch


class Classification(Task):
    """Softmax cross-entropy over `num_classes` logits."""

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None):
        self.num_classes = num_classes
        self.num_outputs = num_classes
        self.class_names = tuple(class_names) if class_names else None

    def loss(self, outputs, labels):
        per_example = losses.softmax_cross_entropy(outputs, labels)
        return per_example, jnp.ones_like(per_example)

    def predictions(self, outputs):
        return jnp.argmax(outputs, axis=-1)

    def metric_sums(self, outputs, labels, example_losses, weights, mask):
        if labels.ndim == outputs.ndim:  # one-hot or soft labels
            labels = jnp.argmax(labels, axis=-1)
        sums = {
            "loss": jnp.sum(example_losses * mask),
            "count": jnp.sum(mask),
            "confusion": metrics.confusion_matrix(labels, self.predictions(outputs), self.num_classes, mask),
        }
        if self.num_classes > TOP_K:  # the label among the k highest logits
            top = lax.top_k(outputs, TOP_K)[1]
            sums[f"top_{TOP_K}_correct"] = jnp.sum(jnp.any(top == labels[..., None], axis=-1) * mask)
        return sums

    def summarize(self, sums, detailed: bool = False) -> dict:
        confusion = np.asarray(sums["confusion"], np.float64)
        summary = metrics.classification_summary(confusion)
        result = {"loss": float(sums["loss"] / sums["count"]), "accuracy": summary["accuracy"]}
        if f"top_{TOP_K}_correct" in sums:
            result[f"top_{TOP_K}_accuracy"] = float(np.float64(sums[f"top_{TOP_K}_correct"]) / np.float64(sums["count"]))
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
        per_example = losses.sigmoid_binary_cross_entropy(outputs, labels)
        return per_example, jnp.ones_like(per_example)

    def predictions(self, outputs):
        return (outputs.reshape(outputs.shape[0]) > 0).astype(jnp.int32)


class Regression(Task):
    """Squared error against targets standardised with the training split's mean and std.

    The model predicts standardised targets (so no layer must learn their scale);
    MSE, MAE and R² are reported in the targets' own units.
    """

    def __init__(self, target_mean: float = 0.0, target_std: float = 1.0, num_outputs: int = 1):
        self.target_mean, self.target_std = float(target_mean), float(target_std) or 1.0
        self.num_outputs = num_outputs

    def loss(self, outputs, targets):
        per_example = losses.squared_error(outputs, (targets - self.target_mean) / self.target_std)
        return per_example, jnp.ones_like(per_example)

    def metric_sums(self, outputs, targets, example_losses, weights, mask):
        # Centred on the training mean, so that float32 sums of squares keep R²'s precision.
        centred_predictions = outputs * self.target_std
        sums = metrics.regression_sums(centred_predictions, targets - self.target_mean, mask)
        return {"loss": jnp.sum(example_losses * mask), "examples": jnp.sum(mask), **sums}

    def summarize(self, sums, detailed: bool = False) -> dict:
        summary = metrics.regression_summary({k: np.float64(v) for k, v in sums.items()})
        return {"loss": float(sums["loss"] / sums["examples"]), **summary}


class TokenPrediction(Task):
    """Cross-entropy at every scored token: next-token language modelling, masked-LM pretraining, text-to-text.

    The targets `y` are token ids [batch, len]. Tokens equal to `pad_id` are not scored. With `masking`
    (masked LM), `prepare` corrupts the input tokens and scores only the corrupted positions. Reported as
    loss per token, token accuracy and perplexity; with `exact_match`, also the share of sequences whose
    scored tokens are all right (for text-to-text, the accuracy of greedy decoding).
    """

    def __init__(self, vocab_size: int, pad_id: Optional[int] = None, masking: Optional[dict] = None,
                 exact_match: bool = False):
        self.num_outputs = vocab_size
        self.pad_id, self.masking, self.exact_match = pad_id, masking, exact_match

    def prepare(self, batch, rng):
        if not self.masking:
            return batch
        from bmjax.data.text import mask_tokens

        x = batch["x"]
        tokens = x["tokens"] if isinstance(x, dict) else x
        masked, weights = mask_tokens(tokens, rng, vocab_size=self.num_outputs, **self.masking)
        x = {**x, "tokens": masked} if isinstance(x, dict) else masked
        return {**batch, "x": x, "y": {"targets": tokens, "weights": weights}}

    def _targets_and_weights(self, y):
        if isinstance(y, dict):
            return y["targets"], y["weights"]
        if self.pad_id is None:
            return y, jnp.ones(y.shape, jnp.float32)
        return y, (y != self.pad_id).astype(jnp.float32)

    def loss(self, logits, y):
        targets, weights = self._targets_and_weights(y)
        per_token = losses.softmax_cross_entropy(logits, targets)
        return jnp.sum(per_token * weights, axis=-1), jnp.sum(weights, axis=-1)

    def metric_sums(self, logits, y, example_losses, weights, mask):
        targets, token_weights = self._targets_and_weights(y)
        right = (jnp.argmax(logits, axis=-1) == targets) * token_weights
        sums = {"loss": jnp.sum(example_losses * mask), "count": jnp.sum(weights * mask),
                "correct": jnp.sum(jnp.sum(right, axis=-1) * mask)}
        if self.exact_match:
            all_right = jnp.all(right == token_weights, axis=-1)
            sums.update(sequences=jnp.sum(mask), exact=jnp.sum(all_right * mask))
        return sums

    def summarize(self, sums, detailed: bool = False) -> dict:
        loss = float(sums["loss"] / sums["count"])
        result = {"loss": loss, "accuracy": float(sums["correct"] / sums["count"]), "perplexity": float(np.exp(loss))}
        if self.exact_match:
            result["exact_match"] = float(sums["exact"] / sums["sequences"])
        return result


class Reconstruction(Task):
    """An autoencoder's outputs against its own inputs: squared error per pixel, plus the model's own loss terms.

    The model returns {"reconstruction", "auxiliary_loss" (per example, e.g. a VQ-VAE's codebook and commitment
    terms), "code_counts" (optional, [batch, codes]: how often each discrete code was used)}; `prepare` makes the
    input its target. Reported as loss, mean squared error, PSNR (peak 1), and with code counts the codebook's
    perplexity (exp of the entropy of code use; the number of codes in equal use) and the codes used.
    """

    def __init__(self, channels: int):
        self.num_outputs = channels

    def prepare(self, batch, rng):
        return {**batch, "y": batch["x"]}

    def _squared_error(self, outputs, targets):
        reconstruction = outputs["reconstruction"].reshape(targets.shape)
        return jnp.mean(jnp.square(reconstruction - targets).reshape(targets.shape[0], -1), axis=-1)

    def loss(self, outputs, targets):
        per_example = self._squared_error(outputs, targets) + outputs.get("auxiliary_loss", 0.0)
        return per_example, jnp.ones_like(per_example)

    def metric_sums(self, outputs, targets, example_losses, weights, mask):
        sums = {"loss": jnp.sum(example_losses * mask), "count": jnp.sum(mask),
                "squared_error": jnp.sum(self._squared_error(outputs, targets) * mask)}
        if "code_counts" in outputs:
            sums["code_counts"] = jnp.sum(outputs["code_counts"] * mask[:, None], axis=0)
        return sums

    def summarize(self, sums, detailed: bool = False) -> dict:
        count = np.float64(sums["count"])
        mse = float(np.float64(sums["squared_error"]) / count)
        result = {"loss": float(np.float64(sums["loss"]) / count), "mse": mse,
                  "psnr": float(-10 * np.log10(max(mse, 1e-12)))}
        if "code_counts" in sums:
            counts = np.asarray(sums["code_counts"], np.float64)
            shares = counts / max(counts.sum(), 1.0)
            used = shares[shares > 0]
            result.update(code_perplexity=float(np.exp(-np.sum(used * np.log(used)))), codes_used=int(len(used)))
        return result


def create(name: str, dataset: Dataset, mask_rate: float = 0.15):
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
    if name in ("language_model", "masked_lm", "seq2seq"):
        if info.task != name:
            raise UsageError(f"--task={name} needs text read for it; {info.name} was read as a {info.task} dataset")
        vocab_size = info.vocab_size or info.num_classes
        if name == "language_model":
            return TokenPrediction(vocab_size)
        tokenizer = dataset.tokenizer
        if name == "seq2seq":
            return TokenPrediction(vocab_size, pad_id=tokenizer.pad_id, exact_match=True)
        masking = dict(mask_id=tokenizer.mask_id, special_ids=tuple(tokenizer.special_ids), rate=mask_rate)
        return TokenPrediction(vocab_size, pad_id=tokenizer.pad_id, masking=masking)
    if name == "reconstruction":
        shape = tuple(info.feature_shape)
        if len(shape) not in (2, 3):
            raise UsageError(f"--task=reconstruction reproduces images, and {info.name}'s examples have shape {shape}; "
                             "choose an image dataset")
        return Reconstruction(shape[2] if len(shape) == 3 else 1)
    if name == "regression":
        if info.task != "regression":
            raise UsageError(f"--task=regression needs a regression dataset; {info.name} is a classification "
                             "dataset")
        targets = dataset.train[np.arange(min(len(dataset.train), 100_000))]["y"]
        return Regression(np.mean(targets), np.std(targets))
    raise UsageError(f"unknown task {name!r}; choose auto, classification, binary, regression, reconstruction, "
                     "language_model, masked_lm or seq2seq")
