"""Supervised learning as a program: a model fitted to a dataset's (x, y) batches by a task's loss and an optax
optimizer. `build(config, context)` is the default `Config.build_program`."""

import dataclasses
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from bmjax import console, data, optim, tasks
from bmjax.data import augment, preprocess
from bmjax.errors import UsageError
from bmjax.data.text import WindowSource
from bmjax.models import CARRY, ModelIO
from bmjax.train import state as state_lib, step as step_lib
from bmjax.train.feeds import run_length
from bmjax.train.strategy import BATCH
from bmjax.train.program import Context, Plan, Program

TOKENIZER_FILE = "tokenizer"


class Supervised(Program):
    """One model, one optimizer, one task: the state is a `TrainState`."""

    def __init__(self, model, task, tx: optax.GradientTransformation, example_x, *, schedule: optax.Schedule,
                 count_trainable: Callable = state_lib.parameter_count, l1: float = 0.0, l2: float = 0.0,
                 axis_name=None, grad_accum_steps: int = 1, augment: Optional[Callable] = None,
                 ema_decay: float = 0.0, steps_per_epoch: Optional[int] = None,
                 report: Optional[Callable] = None):
        self.model, self.task, self.tx, self.example_x = model, task, tx, example_x
        self.ema_decay, self.steps_per_epoch = ema_decay, steps_per_epoch
        # A model that carries a state from each row's window to the next reads its examples in order.
        self.reads_in_order = bool(getattr(model, "carry_rows", None))
        self.schedule, self.count_trainable = schedule, count_trainable
        self.report = report  # params -> more numbers for result.json (pruning's sparsity)
        self._train_step = step_lib.make_train_step(task, l1=l1, l2=l2, axis_name=axis_name,
                                                    grad_accum_steps=grad_accum_steps, augment=augment)
        self._eval_step = step_lib.make_eval_step(task, axis_name=axis_name)

    def init(self, rng) -> state_lib.TrainState:
        try:
            return state_lib.create(self.model, self.tx, self.example_x, rng, self.ema_decay)
        except UsageError:
            raise
        except Exception as e:  # a model that cannot take the dataset's inputs fails in many ways
            shapes = jax.tree.map(lambda x: tuple(x.shape[1:]), self.example_x)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise UsageError(f"the model {type(self.model).__name__} cannot take this dataset's inputs of shape "
                             f"{shapes} ({type(e).__name__}: {reason}); choose a --model (or its settings) that fits "
                             "them") from None

    def state_axes(self, state):
        named = state_lib.logical_axes(self.model, self.tx, self.example_x)
        replicated = lambda tree: jax.tree.map(lambda _: PartitionSpec(), tree)
        model_state = {name: jax.tree.map(lambda _: PartitionSpec(BATCH), value) if name == CARRY else replicated(value)
                       for name, value in state.model_state.items()}
        return state.replace(step=PartitionSpec(), rng=PartitionSpec(), model_state=model_state,
                             params=named["params"], opt_state=named["opt_state"],
                             ema_params=None if state.ema_params is None else named["params"])

    def train_step(self, state, batch):
        if CARRY in state.model_state and self.steps_per_epoch:  # each epoch's streams start from zeros
            fresh = state.step % self.steps_per_epoch == 0
            carried = jax.tree.map(lambda c: jnp.where(fresh, jnp.zeros_like(c), c), state.model_state[CARRY])
            state = state.replace(model_state={**state.model_state, CARRY: carried})
        return self._train_step(state, batch)

    def eval_step(self, state, batch):
        return self._eval_step(state, batch)

    def summarize(self, sums, detailed: bool = False) -> dict:
        return self.task.summarize(sums, detailed)

    def schedules(self, step: int) -> dict:
        return {"learning_rate": float(self.schedule(step))}

    def networks(self) -> dict:
        return {"model": (self.model, (self.example_x,))}

    def describe(self, state) -> dict:
        return {"parameters": state_lib.parameter_count(state.params),
                "trainable_parameters": self.count_trainable(state.params),
                **(self.report(state.params) if self.report else {})}


def build(config, context: Context, dataset: Optional[data.Dataset] = None) -> Plan:
    """--dataset read into the task --task asks for (or `dataset`, made by the caller), and `config.build_model`'s
    model trained on it."""
    if dataset is None:
        dataset = data.load(data.DataSpec.of(config, tokenizer=tokenizer_for(config, context.workdir)))
    if context.primary and dataset.tokenizer is not None:  # travels with the parameters: resume, --restore_from
        dataset.tokenizer.save(os.path.join(context.workdir, TOKENIZER_FILE))
    if config.grad_accum_steps > 1 and config.batch_size % (context.num_shards * config.grad_accum_steps):
        raise UsageError(f"--batch_size={config.batch_size} does not split into --grad_accum_steps="
                         f"{config.grad_accum_steps} micro-batches on each of {context.num_shards} devices; use a "
                         f"multiple of {context.num_shards * config.grad_accum_steps}")
    task = config.build_task(dataset)
    example_x = preprocess.to_float(dataset.train[np.arange(1)]["x"])
    inputs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), example_x)
    io = ModelIO(num_outputs=task.num_outputs, vocab_size=dataset.info.vocab_size, inputs=inputs,
                 axis_name=context.axis_name)
    model = trained_model(config, io)
    if getattr(model, "carry_rows", None):
        dataset = _in_order(dataset, config)
    steps_per_epoch, total_steps = run_length(config, dataset)
    if config.lr_schedule == "warmup_cosine" and config.warmup_steps >= total_steps:
        console.warn(f"--warmup_steps={config.warmup_steps} is not shorter than the run's {total_steps} steps: the "
                     f"learning rate never reaches --learning_rate={config.learning_rate}")
    program = Supervised(model, task, optim.create(config, total_steps), example_x,
                         schedule=optim.schedule(config, total_steps),
                         count_trainable=lambda params: optim.trainable_count(config, params),
                         l1=config.l1, l2=config.l2, axis_name=context.axis_name,
                         grad_accum_steps=config.grad_accum_steps, augment=augmentation(config, task, inputs),
                         ema_decay=config.ema_decay, steps_per_epoch=steps_per_epoch, report=pruning_report(config))
    return Plan(program, dataset, io)


def trained_model(config, io: ModelIO):
    """`config.build_model`'s model as the run trains it: with --quantize, its quantisation-aware form."""
    model = config.build_model(io)
    if config.quantize != "none":
        from bmjax import quantize

        model = quantize.training_model(config, model)
    return model


def pruning_report(config) -> Optional[Callable]:
    if config.prune == "none":
        return None
    from bmjax import prune

    return prune.report


def _in_order(dataset, config):
    """The dataset for a model that carries its state from one window to the next: its training text as
    consecutive non-overlapping windows (each follows the last where the text does)."""
    if config.grad_accum_steps > 1:
        raise UsageError(f"a model that carries its state across windows reads whole batches in order; drop "
                         f"--grad_accum_steps={config.grad_accum_steps}")
    train = dataset.train
    if isinstance(train, WindowSource) and train.stride != train.length:
        dataset = dataclasses.replace(dataset, train=WindowSource(train.tokens, train.length, stride=train.length))
    return dataset


def augmentation(config, task, inputs) -> Optional[augment.Augment]:
    """--augment and --label_smoothing as the train step's augmentation, or None when neither is asked for."""
    names = augment.parse(config.augment)
    if not names and not config.label_smoothing:
        return None
    if type(task) is not tasks.Classification:
        raise UsageError(f"--augment and --label_smoothing are for classification into classes, not for this "
                         f"{type(task).__name__.lower()} task; leave them unset")
    if names and len(getattr(inputs, "shape", ())) not in (2, 3):
        raise UsageError(f"--augment={config.augment} transforms images, but this dataset's inputs have shape "
                         f"{getattr(inputs, 'shape', inputs)}; use --augment=none")
    return augment.Augment(names, num_classes=task.num_classes, crop_padding=config.crop_padding,
                           mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
                           label_smoothing=config.label_smoothing)


def tokenizer_for(config, workdir: str):
    """The tokenizer a text run reads with: the one this workdir saved (a resumed run), else --tokenizer, else the
    one --restore_from's run saved (fine-tuning keeps its vocabulary)."""
    own, restored = (os.path.join(d, TOKENIZER_FILE) if d else "" for d in (workdir, config.restore_from))
    if os.path.exists(own):
        return own
    return config.tokenizer or (restored if os.path.exists(restored) else None)
