"""Preprocessing: feature scaling fitted on the training split only, one-hot labels, images to floats."""

import jax
import jax.numpy as jnp
import numpy as np

from bmjax.errors import UsageError

NORMALIZATIONS = ("none", "minmax", "standardize")


def fit_normalizer(train_x: np.ndarray, method: str):
    """(shift, scale) from the training features, so that (x - shift) / scale is normalised."""
    if method not in NORMALIZATIONS:
        raise UsageError(f"unknown normalization {method!r}; choose one of: {', '.join(NORMALIZATIONS)}")
    x = train_x.astype(np.float64)
    if method == "standardize":
        shift, scale = x.mean(axis=0), x.std(axis=0)
    elif method == "minmax":
        shift, scale = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
    else:
        shift, scale = np.zeros(x.shape[1:]), np.ones(x.shape[1:])
    scale = np.where(scale > 0, scale, 1.0)  # constant features stay finite
    return shift.astype(np.float32), scale.astype(np.float32)


def apply_normalizer(x: np.ndarray, normalizer) -> np.ndarray:
    """(x - shift) / scale as float32."""
    shift, scale = normalizer
    return ((x - shift) / scale).astype(np.float32)


def one_hot(labels, num_classes: int) -> np.ndarray:
    """[..., num_classes] float32 rows with a 1 at each label."""
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels)]


def to_float(x):
    """Model inputs (an array or a dict of them) with uint8 images scaled to [0, 1] floats; other arrays (float
    features, token ids) unchanged (jittable)."""
    return jax.tree.map(lambda a: a.astype(jnp.float32) / 255.0 if a.dtype == jnp.uint8 else a, x)
