"""Orbax checkpoints of a program's state, whatever pytree it is: save, resume the newest complete one, and read
parts of another run's (its parameters, for fine-tuning and inference) onto any devices.

Every checkpoint carries a digest of each array (two position-weighted sums of its bits, computed where the
array lives), checked when it is read back: damaged bytes are an error, not a run that carries on with them.
"""

import os
import re
import shutil
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from bmjax import console
from bmjax.errors import UsageError

DIGESTS = "bmjax_digests"  # the checkpoint's custom metadata: {array path: [sum, weighted sum]}
SUPERSEDED = "superseded"  # checkpoints newer than --restore_step move here


class Checkpointer:
    """Checkpoints of one run, in WORKDIR/checkpoints; half-written saves are ignored by orbax."""

    def __init__(self, workdir: str, keep: int, restore_step: Optional[int] = None):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        if restore_step is not None:
            _supersede_after(self.directory, restore_step)
        self.manager = ocp.CheckpointManager(
            self.directory, item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state) -> None:
        tree = serialization.to_state_dict(state)
        self.manager.save(step, args=ocp.args.StandardSave(tree), custom_metadata={DIGESTS: digests(tree)})

    def restore(self, state, step: Optional[int] = None):
        """The checkpoint at `step` (default: newest) restored into the structure, shapes and shardings of `state`,
        its digests checked."""
        step = self.latest_step() if step is None else step
        target = serialization.to_state_dict(state)
        try:
            saved = self.manager.item_metadata(step)
        except Exception as e:
            raise self._unreadable(step, e) from None
        check_compatible(saved, target, f"{self.directory} (step {step})", "this run's program")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        _quiet_straggling_reads()
        try:
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax and tensorstore raise many types for damaged files
            raise self._unreadable(step, e) from None
        damaged = check_digests(restored, self.manager.metadata(step).custom_metadata)
        if damaged:
            raise self._unreadable(step, f"{damaged} does not match the digest saved with it")
        return serialization.from_state_dict(state, restored)

    def _unreadable(self, step: int, reason) -> UsageError:
        reason = reason if isinstance(reason, str) else _first_line(reason)
        earlier = [s for s in self.manager.all_steps() if s < step]
        fallback = (f"resume from checkpoint {max(earlier)} with --restore_step={max(earlier)}" if earlier else
                    "there is no earlier checkpoint: start again in a new --workdir")
        return UsageError(f"checkpoint {step} in {self.directory} is damaged ({reason}); {fallback}")

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def digests(tree) -> dict:
    """{path: [sum of the array's bits as uint32 words, their sum weighted by position]}, both modulo 2**32."""
    sums = _fingerprints(jax.tree.map(lambda x: x if isinstance(x, jax.Array) else np.asarray(x), tree))
    return {path: [int(v) for v in np.asarray(value.addressable_data(0))] for path, value in _flat(sums).items()}


def check_digests(tree, custom_metadata) -> Optional[str]:
    """The path of the first array of `tree` whose digest differs from the one saved (None: all match, or the
    checkpoint predates digests)."""
    saved = (custom_metadata or {}).get(DIGESTS)
    if not saved:
        return None
    ours = digests(tree)
    return next((path for path, value in ours.items() if path in saved and saved[path] != value), None)


@jax.jit
def _fingerprints(tree):
    def fingerprint(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if x.dtype == jnp.bool_:
            x = x.astype(jnp.uint8)
        words = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
        words = jax.lax.bitcast_convert_type(x, words).astype(jnp.uint32).reshape(-1)
        position = jnp.arange(1, words.size + 1, dtype=jnp.uint32)
        return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * position, dtype=jnp.uint32)])

    return jax.tree.map(fingerprint, tree)


def _supersede_after(directory: str, step: int) -> None:
    """--restore_step: moves the checkpoints newer than `step` into checkpoints/superseded/ (kept, not deleted)."""
    steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []
    if step not in steps:
        raise UsageError(f"--restore_step={step}: {directory} holds no checkpoint {step} (it has "
                         f"{', '.join(map(str, steps)) or 'none'})")
    newer = [s for s in steps if s > step]
    for s in newer:
        target = os.path.join(directory, SUPERSEDED, str(s))
        if os.path.exists(target):
            shutil.rmtree(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(directory, str(s)), target)
    if newer:
        console.say(f"resuming from checkpoint {step}: checkpoints {', '.join(map(str, newer))} moved to "
                    f"{os.path.join(directory, SUPERSEDED)}")


def read_saved(run_dir: str, keys: Optional[tuple[str, ...]] = None, *, step: Optional[int] = None,
               flag: str = "--restore_from"):
    """({key: subtree} of the top-level `keys` (default: all) a run's checkpoint holds, its step): whole arrays on
    this process's first device, whatever devices or mesh the run was saved from; the rest is not read."""
    directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
    with ocp.CheckpointManager(directory, item_handlers=ocp.PyTreeCheckpointHandler()) as manager:
        step = (manager.latest_step() if os.path.isdir(directory) else None) if step is None else step
        if step is None:
            raise UsageError(f"{flag}={run_dir} holds no checkpoint (looked in {directory}); pass the --workdir of "
                             "a run that saved one")
        _quiet_straggling_reads()
        try:
            saved = manager.item_metadata(step)
            saved = getattr(saved, "tree", saved)
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            wanted = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved[k])
                      for k in (saved if keys is None else keys) if k in saved}
            if not wanted:
                return {}, step
            restored = manager.restore(step, args=ocp.args.PyTreeRestore(
                item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted), partial_restore=True))
            damaged = check_digests(restored, manager.metadata(step).custom_metadata)
            reason = damaged and f"{damaged} does not match the digest saved with it"
        except Exception as e:  # orbax and tensorstore raise many types for damaged files
            reason = _first_line(e)
        if reason:
            earlier = [s for s in manager.all_steps() if s < step]
            fallback = f"; its checkpoint {max(earlier)} may be intact" if earlier else ""
            raise UsageError(f"{flag}={run_dir}: checkpoint {step} in {directory} is damaged ({reason}){fallback}")
    return restored, step


def load_params(run_dir: str, params, model_state, seeds: Optional[int] = None, reinit: Optional[str] = None):
    """Parameters (and model state) of another run's newest checkpoint, for fine-tuning.

    Every parameter the other run has must have the shape it has here; parameters only this model has keep their
    initial values, as do those whose path (e.g. 'head/kernel', 'batch_stats/norm/mean') the regular expression
    `reinit` finds. With `seeds`, each of this run's seeds starts from the other run's parameters.
    """
    saved, step = read_saved(run_dir, ("params", "model_state"))
    where = f"--restore_from={run_dir} (step {step})"
    if reinit:
        saved = _without(saved, re.compile(reinit))
    ours, theirs = _shapes({"params": params, "model_state": model_state}), _shapes(saved)
    shared = [path for path in ours if path in theirs]
    if not shared:
        raise UsageError(f"{where} shares no array with this model (it has {', '.join(list(theirs)[:3])}, ...; this "
                         f"model {', '.join(list(ours)[:3])}, ...); fine-tune from a run of a model of this family")
    fresh = [path for path in ours if path not in theirs]
    console.say(f"restored {len(shared)} of {len(ours)} arrays from {where}"
                + (f"; {len(fresh)} start from their initialisation ({', '.join(fresh[:3])}"
                   f"{', ...' if len(fresh) > 3 else ''})" if fresh else ""))
    return (_merge(saved.get("params") or {}, params, where, "params", seeds),
            _merge(saved.get("model_state") or {}, model_state, where, "model_state", seeds), step)


def check_compatible(saved_metadata, state_tree, where: str, what: str) -> None:
    """UsageError naming the first array whose shape differs between a checkpoint and this run."""
    saved = _shapes(saved_metadata)
    ours = _shapes(state_tree)
    order = ("params", "model_state", "opt_state")  # name a layer before its optimizer slots
    for path in sorted(set(saved) | set(ours), key=lambda p: (next((i for i, o in enumerate(order)
                                                                     if p.startswith(o)), 3), p)):
        if saved.get(path) != ours.get(path):
            there = saved.get(path, "absent")
            here = ours.get(path, "absent")
            raise UsageError(f"the checkpoint in {where} does not fit {what}: {path} is {there} there and "
                             f"{here} here; use a new --workdir, or the flags that run used (its flags.txt)")


def _merge(theirs, ours, where: str, prefix: str, seeds: Optional[int] = None):
    """`ours` with every leaf that `theirs` also has replaced by theirs (shapes must agree, or differ by the seed
    axis alone)."""
    if not isinstance(ours, dict):
        shape = np.shape(theirs)
        if seeds and np.shape(ours) == (seeds,) + shape:
            theirs = np.broadcast_to(np.asarray(theirs), np.shape(ours))
        elif shape != np.shape(ours):
            layer = prefix.split("/", 1)[1].rsplit("/", 1)[0] + "/"
            raise UsageError(f"{where} does not fit this model: {prefix} is {shape} there and "
                             f"{np.shape(ours)} here; start that layer afresh with --reinit={layer} (a new "
                             "classifier, say), or fine-tune a model whose shared layers have the same shapes")
        return np.asarray(theirs, dtype=np.asarray(ours).dtype) if hasattr(ours, "dtype") else theirs
    return {k: _merge(theirs[k], v, where, f"{prefix}/{k}", seeds) if k in theirs else v for k, v in ours.items()}


_quieted = False


def _quiet_straggling_reads() -> None:
    """Once a read fails, TensorStore's other reads still in flight fail in turn and report it from its own
    threads, even as the failure is being reported: an asyncio loop already closed, an array index it could not
    read. They repeat that failure, so reads run with them silenced; every other error still reaches its hook."""
    global _quieted
    if _quieted:
        return
    _quieted = True

    def straggler(error) -> bool:
        text = str(error)
        return text == "Event loop is closed" or text.startswith("Encountered error while reading array index")

    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook
    sys.excepthook = lambda kind, error, trace: None if straggler(error) else excepthook(kind, error, trace)
    sys.unraisablehook = lambda unraisable: None if straggler(unraisable.exc_value) else unraisablehook(unraisable)


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _without(saved: dict, pattern: re.Pattern) -> dict:
    """`saved` ({"params": ..., "model_state": ...}) less the arrays whose path within it `pattern` finds."""
    def keep(tree, path):
        if not isinstance(tree, dict):
            return tree
        kept = {k: keep(v, f"{path}{k}/" if isinstance(v, dict) else f"{path}{k}") for k, v in tree.items()}
        return {k: v for k, v in kept.items() if not (isinstance(tree[k], dict) and not v)
                and (isinstance(tree[k], dict) or not pattern.search(f"{path}{k}"))}
    return {collection: keep(tree, "") for collection, tree in saved.items()}


def _shapes(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape) for path, leaf in leaves
            if hasattr(leaf, "shape")}


def _first_line(error: Exception) -> str:
    """An error's first line, without TensorStore's pointer to its details (a C++ method's repr)."""
    text = re.sub(r"\.?\s*See full TensorStore details:.*", "", str(error).strip(), flags=re.S)
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."
