"""Orbax checkpoints of a program's state, whatever pytree it is: save, resume the newest complete one, and read
parts of another run's (its parameters, for fine-tuning and inference) onto any devices."""

import os
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from bmjax.errors import UsageError


class Checkpointer:
    """Checkpoints of one run, in WORKDIR/checkpoints; half-written saves are ignored by orbax."""

    def __init__(self, workdir: str, keep: int):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory, item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(serialization.to_state_dict(state)))

    def restore(self, state, step: Optional[int] = None):
        """The checkpoint at `step` (default: newest) restored into the structure, shapes and shardings of `state`."""
        step = self.latest_step() if step is None else step
        target = serialization.to_state_dict(state)
        try:
            saved = self.manager.item_metadata(step)
        except Exception as e:
            raise self._unreadable(step, e) from None
        check_compatible(saved, target, f"{self.directory} (step {step})", "this run's program")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax and tensorstore raise many types for damaged files
            raise self._unreadable(step, e) from None
        return serialization.from_state_dict(state, restored)

    def _unreadable(self, step: int, error: Exception) -> UsageError:
        return UsageError(f"checkpoint {step} in {self.directory} cannot be read ({_first_line(error)}); move "
                          f"{os.path.join(self.directory, str(step))} away to resume from the one before")

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
        try:
            saved = manager.item_metadata(step)
            saved = getattr(saved, "tree", saved)
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            wanted = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved[k])
                      for k in (saved if keys is None else keys) if k in saved}
            restored = manager.restore(step, args=ocp.args.PyTreeRestore(
                item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted), partial_restore=True))
        except Exception as e:
            raise UsageError(f"checkpoint {step} in {directory} cannot be read ({_first_line(e)}); pass a run whose "
                             "checkpoints are intact") from None
    return restored, step


def load_params(run_dir: str, params, model_state, seeds: Optional[int] = None):
    """Parameters (and model state) of another run's newest checkpoint, for fine-tuning.

    Every parameter the other run has must have the shape it has here; parameters only this model has keep their
    initial values. With `seeds`, each of this run's seeds starts from the other run's parameters.
    """
    saved, step = read_saved(run_dir, ("params", "model_state"))
    where = f"--restore_from={run_dir} (step {step})"
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
            raise UsageError(f"{where} does not fit this model: {prefix} is {shape} there and "
                             f"{np.shape(ours)} here; fine-tune a model whose shared layers have the same shapes")
        return np.asarray(theirs, dtype=np.asarray(ours).dtype) if hasattr(ours, "dtype") else theirs
    return {k: _merge(theirs[k], v, where, f"{prefix}/{k}", seeds) if k in theirs else v for k, v in ours.items()}


def _shapes(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape) for path, leaf in leaves
            if hasattr(leaf, "shape")}


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__
