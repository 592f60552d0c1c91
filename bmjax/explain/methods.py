"""Attribution methods as functions of a scalar `fn` (a class's logit) and one input `x` (no batch axis).

    attributions = integrated_gradients(fn, x, baseline=None, steps=64)
    completeness(fn, x, None, attributions)["relative_gap"]   # about 0: they sum to fn(x) - fn(baseline)

Grad-CAM and attention rollout combine what a model computed (an activation and its gradient, each layer's
attention weights); `bmjax.explain.explain` gathers those from a linen model.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

# Points of a path (noisy copies, interpolated inputs) whose gradients are computed together.
GRADIENT_BATCH = 16


def saliency(fn, x):
    """The gradient of `fn` at `x` (Simonyan et al. 2013)."""
    return jax.grad(fn)(x)


def gradients(fn, points, batch_size: int = GRADIENT_BATCH):
    """The gradient of `fn` at each of `points` [n, ...], `batch_size` points at a time."""
    return jax.lax.map(jax.grad(fn), points, batch_size=batch_size)


def smoothgrad(fn, x, *, samples: int = 32, noise: float = 0.15, rng=None):
    """The mean gradient of `fn` over `samples` copies of `x` with Gaussian noise added (Smilkov et al. 2017);
    the noise's standard deviation is `noise` times the input's range, max(x) - min(x)."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    sigma = noise * (jnp.max(x) - jnp.min(x))
    noisy = x + sigma * jax.random.normal(rng, (samples,) + x.shape, x.dtype)
    return gradients(fn, noisy).mean(axis=0)


def integrated_gradients(fn, x, baseline=None, steps: int = 64):
    """(x - baseline) times the mean gradient of `fn` along the straight path from `baseline` (default zeros) to
    `x` (Sundararajan et al. 2017), by the trapezoid rule over `steps` intervals. The attributions add up to
    fn(x) - fn(baseline), up to the rule's error (see `completeness`)."""
    baseline = jnp.zeros_like(x) if baseline is None else jnp.asarray(baseline, x.dtype)
    alphas = jnp.linspace(0.0, 1.0, steps + 1, dtype=x.dtype)
    path = baseline + alphas.reshape((-1,) + (1,) * x.ndim) * (x - baseline)
    weights = jnp.full(steps + 1, 1.0 / steps, x.dtype).at[jnp.array([0, steps])].multiply(0.5)
    mean_gradient = jnp.tensordot(weights, gradients(fn, path), axes=1)
    return (x - baseline) * mean_gradient


def completeness(fn, x, baseline, attributions) -> dict:
    """How far `attributions` are from adding up to fn(x) - fn(baseline): the gap, absolute and as a share of
    that difference."""
    baseline = jnp.zeros_like(x) if baseline is None else baseline
    difference = float(fn(x) - fn(baseline))
    total = float(jnp.sum(attributions))
    gap = abs(total - difference)
    return {"attribution_sum": total, "score_difference": difference, "gap": gap,
            "relative_gap": gap / abs(difference) if difference else float("inf") if gap else 0.0}


def grad_cam(activation, gradient):
    """Grad-CAM (Selvaraju et al. 2017) from a convolution's output [height, width, channels] and the class
    score's gradient with respect to it: ReLU(sum_k a_k A_k), where a_k is channel k's mean gradient."""
    channel_weights = gradient.mean(axis=(0, 1))
    return jax.nn.relu(jnp.einsum("hwk,k->hw", activation, channel_weights))


def attention_rollout(weights: Sequence, residual: float = 0.5, head_fusion: str = "mean"):
    """Attention rollout (Abnar & Zuidema 2020): each layer's attention [heads, n, n] fused over heads, mixed with
    the identity for the residual connection (A' = residual I + (1 - residual) A, rows renormalised) and
    multiplied through the layers, first layer rightmost. Row i of the [n, n] result: how token i's final state
    draws on the input tokens; each row sums to 1."""
    fuse = {"mean": jnp.mean, "max": jnp.max, "min": jnp.min}[head_fusion]
    n = weights[0].shape[-1]
    eye = jnp.eye(n, dtype=jnp.float32)
    rollout = eye
    for layer in weights:
        mixed = residual * eye + (1 - residual) * fuse(layer.astype(jnp.float32), axis=0)
        rollout = (mixed / mixed.sum(axis=-1, keepdims=True)) @ rollout
    return rollout


def normalized(values, eps: float = 1e-12):
    """`values` scaled so that the largest magnitude is 1 (zeros stay zeros)."""
    return values / jnp.maximum(jnp.max(jnp.abs(values)), eps)
