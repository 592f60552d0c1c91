"""Orbax checkpoints of the train state: save, resume the newest complete one, reuse another run's params."""

import os
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

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
        self.manager.save(step, args=ocp.args.StandardSave(_savable(state)))

    def restore(self, state, step: Optional[int] = None):
        """The checkpoint at `step` (default: newest) restored into the structure, shapes and shardings of `state`."""
        step = self.latest_step() if step is None else step
        try:
            saved = self.manager.item_metadata(step)
        except Exception as e:
            raise self._unreadable(step, e) from None
        check_compatible(saved, _savable(state), f"{self.directory} (step {step})", "this run's model and optimizer")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(state))
        try:
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax and tensorstore raise many types for damaged files
            raise self._unreadable(step, e) from None
        return state.replace(**restored)

    def _unreadable(self, step: int, error: Exception) -> UsageError:
        return UsageError(f"checkpoint {step} in {self.directory} cannot be read ({_first_line(error)}); move "
                          f"{os.path.join(self.directory, str(step))} away to resume from the one before")

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(run_dir: str, params, model_state):
    """Parameters (and model state) of another run's newest checkpoint, for fine-tuning.

    Every parameter the other run has must have the shape it has here; parameters
    only this model has keep their initial values.
    """
    directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
    step = ocp.CheckpointManager(directory).latest_step() if os.path.isdir(directory) else None
    if step is None:
        raise UsageError(f"--restore_from={run_dir} holds no checkpoint (looked in {directory}); "
                         "pass the --workdir of a run that saved one")
    with ocp.CheckpointManager(directory) as manager:
        saved = manager.restore(step, args=ocp.args.StandardRestore())
    restored = {}
    for name, ours in (("params", params), ("model_state", model_state)):
        theirs = saved.get(name) or {}
        restored[name] = _merge(theirs, ours, f"--restore_from={run_dir} (step {step})", name)
    return restored["params"], restored["model_state"], step


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


def _merge(theirs, ours, where: str, prefix: str):
    """`ours` with every leaf that `theirs` also has replaced by theirs (shapes must agree)."""
    if not isinstance(ours, dict):
        if np.shape(theirs) != np.shape(ours):
            raise UsageError(f"{where} does not fit this model: {prefix} is {np.shape(theirs)} there and "
                             f"{np.shape(ours)} here; fine-tune a model whose shared layers have the same shapes")
        return np.asarray(theirs, dtype=np.asarray(ours).dtype) if hasattr(ours, "dtype") else theirs
    return {k: _merge(theirs[k], v, where, f"{prefix}/{k}") if k in theirs else v for k, v in ours.items()}


def _savable(state) -> dict:
    """The pytree fields of a TrainState, as orbax stores them."""
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "model_state": state.model_state, "rng": state.rng}


def _shapes(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape) for path, leaf in leaves
            if hasattr(leaf, "shape")}


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__
