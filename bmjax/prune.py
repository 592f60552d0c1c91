"""Pruning while training: weight matrices driven to a sparsity, with masks kept in the optimizer state.

--prune=magnitude zeroes each matrix's smallest weights, its sparsity raised along the cubic schedule of Zhu & Gupta
(2017, "To prune, or not to prune"): s_t = s_f (1 - (1 - (t - t0) / (t1 - t0))^3), masks recomputed every
--prune_every_steps from t0 = --prune_start_step to t1 = --prune_end_step, fixed after. --prune=N:M keeps the N
largest of every M consecutive weights along a kernel's input dimension (its second-to-last axis: Dense (in, out),
Conv (..., in, out)), the layout of NVIDIA's sparse tensor cores; the same schedule ramps the pruned count of each
group from 0 to M - N. A pruned weight never grows back.

Pruned: `optim.weight_matrices` (ndim >= 2), except embedding tables and learned tokens (a name with "embed" or
"token"): a lookup multiplies nothing a sparse kernel could skip. Under N:M, a matrix whose input dimension M does not
divide stays dense (as NVIDIA's ASP skips it), with a warning.
"""

import functools
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bmjax import console, optim
from bmjax.errors import UsageError


def parse(prune: str):
    """(N, M) for an N:M pattern, None for magnitude pruning."""
    if prune == "magnitude":
        return None
    match = re.fullmatch(r"(\d+):(\d+)", prune)
    if not match:
        raise UsageError(f"--prune={prune} is not none, magnitude or N:M (e.g. 2:4)")
    n, m = int(match[1]), int(match[2])
    if not 0 < n < m:
        raise UsageError(f"--prune={prune} needs 0 < N < M (N of every M weights are kept), e.g. 2:4")
    return n, m


def validate(config) -> None:
    parse(config.prune)
    if not 0 <= config.prune_sparsity < 1:
        raise UsageError(f"--prune_sparsity must lie in [0, 1), got {config.prune_sparsity}")
    if config.prune_start_step is not None and config.prune_start_step < 0:
        raise UsageError(f"--prune_start_step must not be negative, got {config.prune_start_step}")
    if config.prune_every_steps is not None and config.prune_every_steps <= 0:
        raise UsageError(f"--prune_every_steps must be positive, got {config.prune_every_steps}")
    start, end = config.prune_start_step, config.prune_end_step
    if start is not None and end is not None and end < start:
        raise UsageError(f"--prune_end_step={end} comes before --prune_start_step={start}")
    if config.ema_decay:
        raise UsageError(f"--ema_decay={config.ema_decay} averages the weights, and the average of a pruned weight is "
                         f"not zero; drop --ema_decay or --prune")


class Schedule(NamedTuple):
    start: int
    end: int
    every: int

    def fraction(self, step):
        """Share of the final sparsity reached at `step`: 0 before the start, 1 from the end on, cubic between."""
        progress = jnp.clip((step - self.start) / max(self.end - self.start, 1), 0.0, 1.0)
        return jnp.where(step < self.start, 0.0, 1.0 - (1.0 - progress) ** 3)

    def updates_mask(self, step):
        return (step >= self.start) & (step <= self.end) & (((step - self.start) % self.every == 0) |
                                                              (step == self.end))


def schedule(config, total_steps: int) -> Schedule:
    """The pruning window: the flags, or 10% to 75% of the run with a mask update each 1% of it."""
    start = round(0.1 * total_steps) if config.prune_start_step is None else config.prune_start_step
    end = max(round(0.75 * total_steps), start) if config.prune_end_step is None else config.prune_end_step
    if end < start:
        raise UsageError(f"--prune_start_step={start} comes after the default --prune_end_step={end} (75% of the "
                         f"run's {total_steps} steps); set --prune_end_step")
    if end >= total_steps:
        console.warn(f"pruning ends at step {end}, not before the run's {total_steps} steps: the final sparsity is "
                     f"not reached; lower --prune_end_step")
    every = config.prune_every_steps or max(total_steps // 100, 1)
    return Schedule(start, end, every)


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def prunable(params):
    """Mask of the leaves pruning acts on."""
    matrices = optim.weight_matrices(params)
    return jax.tree_util.tree_map_with_path(
        lambda path, is_matrix: bool(is_matrix) and not re.search(r"embed|token", _name(path[-1:]), re.I), matrices)


def _least(count, low: int, high: int, target):
    """The least integer x in [low, high] with count(x) >= target (count rising in x), by bisection."""

    def halve(bounds):
        low, high = bounds
        middle = low + (high - low) // 2
        enough = count(middle) >= target
        return jnp.where(enough, low, middle + 1), jnp.where(enough, middle, high)

    return jax.lax.while_loop(lambda b: b[0] < b[1], halve, (jnp.int32(low), jnp.int32(high)))[0]


def magnitude_mask(w, sparsity):
    """Keeps all but the round(sparsity * size) smallest magnitudes of `w` (of equal ones, the first go).

    Selection by bisection (on the magnitudes' float bits, which order as integers, then on positions among ties):
    a few dozen passes over `w`, where XLA's CPU sort of a large matrix takes a hundred times longer."""
    pruned = jnp.minimum(jnp.round(sparsity * w.size).astype(jnp.int32), w.size - 1)
    bits = jax.lax.bitcast_convert_type(jnp.abs(w).astype(jnp.float32).ravel(), jnp.int32)
    threshold = _least(lambda t: jnp.sum(bits <= t), 0, jnp.iinfo(jnp.int32).max, pruned)
    below, tied, position = bits < threshold, bits == threshold, jnp.arange(w.size)
    ties_cut = pruned - jnp.sum(below)
    last = _least(lambda i: jnp.sum(tied & (position <= i)), 0, w.size - 1, ties_cut)
    cut = below | (tied & (position <= last) & (ties_cut > 0))
    return ~cut.reshape(w.shape)


def n_m_mask(w, keep, m):
    """Keeps the `keep` largest magnitudes of every m consecutive weights along the second-to-last axis."""
    groups = jnp.moveaxis(jnp.abs(w), -2, -1)
    groups = groups.reshape(*groups.shape[:-1], -1, m)
    # A weight's rank in its group: how many beat it (larger, or as large and earlier); 0 for the largest.
    mine, other, order = groups[..., :, None], groups[..., None, :], jnp.arange(m)
    rank = ((other > mine) | ((other == mine) & (order < order[:, None]))).sum(-1)
    return jnp.moveaxis((rank < keep).reshape(*groups.shape[:-2], -1), -1, -2)


class PruneState(NamedTuple):
    count: jax.Array  # updates made so far: the step of the parameters this state goes with
    masks: optax.Params  # True where a weight is kept; a scalar True for leaves that are not pruned


@functools.cache
def _warn_once(message: str) -> None:
    console.warn(message)


def transformation(pattern, sparsity: float, window: Schedule) -> optax.GradientTransformation:
    """Turns each update into one after which pruned weights are exactly zero: params + update is params + the
    inner update where kept, 0 where pruned; the masks are recomputed on those weights as `window` says."""

    def layers(params):
        selected = prunable(params)
        if pattern is not None:
            dense = [_name(p) for p, (w, s) in _flat(params, selected) if s and w.shape[-2] % pattern[1]]
            if len(dense) == sum(jax.tree.leaves(selected)):
                raise UsageError(f"--prune={pattern[0]}:{pattern[1]}: no weight matrix has an input dimension that "
                                 f"{pattern[1]} divides; choose another M")
            if dense:
                _warn_once(f"--prune={pattern[0]}:{pattern[1]} leaves {', '.join(dense)} dense: its input dimension "
                           f"is not a multiple of {pattern[1]}")
            selected = jax.tree.map(lambda w, s: s and w.shape[-2] % pattern[1] == 0, params, selected)
        return selected

    def new_mask(w, fraction):
        if pattern is None:
            return magnitude_mask(w, sparsity * fraction)
        n, m = pattern
        return n_m_mask(w, m - jnp.round(fraction * (m - n)), m)

    def init(params):
        masks = jax.tree.map(lambda w, s: jnp.ones(w.shape if s else (), bool), params, layers(params))
        return PruneState(jnp.zeros((), jnp.int32), masks)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("pruning needs the parameters: pass them to update()")
        selected = layers(params)
        weights = jax.tree.map(lambda w, u, keep: jnp.where(keep, w + u, 0), params, updates, state.masks)
        step = state.count + 1  # of the parameters this update makes

        def recompute(weights):
            fraction = window.fraction(step)
            return jax.tree.map(lambda w, keep, s: new_mask(w, fraction) & keep if s else keep,
                                weights, state.masks, selected)

        masks = jax.lax.cond(window.updates_mask(step), recompute, lambda _: state.masks, weights)
        updates = jax.tree.map(lambda w, u, keep: jnp.where(keep, u, -w), params, updates, masks)
        return updates, PruneState(step, masks)

    return optax.GradientTransformation(init, update)


def _flat(params, selected):
    """[(path, (weight, is_selected))] of every leaf."""
    return [(path, (w, s)) for (path, w), s in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                                   jax.tree.leaves(selected))]


def chain(config, optimizer: optax.GradientTransformation, total_steps: int) -> optax.GradientTransformation:
    """`optimizer`, then the pruning --prune asks for."""
    validate(config)
    return optax.chain(optimizer, transformation(parse(config.prune), config.prune_sparsity,
                                                 schedule(config, total_steps)))


def report(params) -> dict:
    """The sparsity reached: the share of zeros among the prunable weights, overall and per matrix."""
    per_layer, zeros, total = {}, 0, 0
    for path, (w, selected) in _flat(params, prunable(params)):
        if selected:
            w = jax.device_get(w)
            count = int((w == 0).sum())
            per_layer[_name(path)] = count / w.size
            zeros, total = zeros + count, total + w.size
    return {"sparsity": zeros / total if total else 0.0, "sparsity_per_layer": per_layer}
