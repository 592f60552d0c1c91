"""Per-example losses and weight penalties (jittable)."""

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits, labels):
    """Cross-entropy per example; `labels` are class ids, or one-hot/soft distributions shaped like `logits`."""
    if labels.ndim == logits.ndim:
        return optax.softmax_cross_entropy(logits, labels)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def sigmoid_binary_cross_entropy(logits, labels):
    """Binary cross-entropy per example from one logit each ([B] or [B, 1]); labels 0/1."""
    logits = logits.reshape(logits.shape[0])
    return optax.sigmoid_binary_cross_entropy(logits, labels.reshape(logits.shape).astype(logits.dtype))


def squared_error(predictions, targets):
    """Squared error per example, averaged over output dimensions."""
    predictions = predictions.reshape(predictions.shape[0], -1)
    targets = targets.reshape(predictions.shape).astype(predictions.dtype)
    return jnp.mean(jnp.square(predictions - targets), axis=-1)


def _weights(params):
    return [p for p in jax.tree.leaves(params) if p.ndim >= 2]


def l1_penalty(params):
    """Sum of |w| over weight matrices and kernels (biases and norm scales are not penalised)."""
    return sum(jnp.sum(jnp.abs(w)) for w in _weights(params))


def l2_penalty(params):
    """Sum of w² over weight matrices and kernels."""
    return sum(jnp.sum(jnp.square(w)) for w in _weights(params))
