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


# Adversarial losses, per example, from a discriminator's (or critic's) logits: [B] each.
ADVERSARIAL = ("non_saturating", "hinge", "wasserstein")


def discriminator_loss(kind: str, real_logits, fake_logits):
    """What the discriminator minimises: non_saturating (Goodfellow et al.'s cross-entropy, real 1 and fake 0),
    hinge (Lim & Ye; relu(1 - D(real)) + relu(1 + D(fake))) or wasserstein (the critic's D(fake) - D(real))."""
    if kind == "non_saturating":
        return jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)
    if kind == "hinge":
        return jax.nn.relu(1.0 - real_logits) + jax.nn.relu(1.0 + fake_logits)
    if kind == "wasserstein":
        return fake_logits - real_logits
    raise ValueError(f"unknown adversarial loss {kind!r}; one of {', '.join(ADVERSARIAL)}")


def generator_loss(kind: str, fake_logits):
    """What the generator minimises: -log D(fake) (non_saturating), or -D(fake) (hinge and wasserstein)."""
    if kind == "non_saturating":
        return jax.nn.softplus(-fake_logits)
    if kind in ("hinge", "wasserstein"):
        return -fake_logits
    raise ValueError(f"unknown adversarial loss {kind!r}; one of {', '.join(ADVERSARIAL)}")


def _input_gradients(critic, x):
    """d critic(x)_i / d x_i per example, flattened: [B, features]. The critic must treat examples independently
    (no BatchNorm), as the gradient penalties assume; a minibatch standard deviation's small cross terms are
    kept, as StyleGAN keeps them."""
    return jax.grad(lambda x: jnp.sum(critic(x)))(x).reshape(x.shape[0], -1)


def gradient_penalty(critic, real, fake, t):
    """WGAN-GP's (||grad critic(x)|| - 1)^2 per example at x = t real + (1 - t) fake, a point on the line between
    each real and fake example (`t` [B], uniform in [0, 1] in Gulrajani et al. 2017); its weight there is 10."""
    t = t.reshape((real.shape[0],) + (1,) * (real.ndim - 1)).astype(real.dtype)
    between = t * real + (1.0 - t) * jax.lax.stop_gradient(fake)
    norms = jnp.sqrt(jnp.sum(jnp.square(_input_gradients(critic, between)), axis=-1) + 1e-12)
    return jnp.square(norms - 1.0)


def r1_penalty(critic, real):
    """R1's ||grad D(x)||^2 per real example (Mescheder et al. 2018); the loss adds gamma / 2 times it."""
    return jnp.sum(jnp.square(_input_gradients(critic, real)), axis=-1)
