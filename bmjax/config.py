"""The hyperparameters of a run: one frozen dataclass, one absl flag per field.

An experiment subclasses `Config` to change defaults and add its own fields;
`bmjax.cli` turns every field into a flag. Help text and allowed values live in
the field's metadata, defined once here for the fields every experiment shares.
"""

import dataclasses
import re
from typing import Any, Optional

import jax.numpy as jnp

from bmjax import models
from bmjax.data import augment
from bmjax.errors import UsageError
from bmjax.models.mlp import ACTIVATIONS


def field(default: Any, help: str, choices: Optional[tuple[str, ...]] = None, *, trains: bool = True):
    """A config field with its flag's help text (and allowed values, for enums). `trains=False` marks a setting
    that does not change what a run computes (a cadence, a path, a device layout, a sampling option): a run may be
    resumed with another value of it."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "trains": trains})


def field_metadata(config_cls: type, name: str) -> dict:
    """{"help", "choices", "trains"} of a field, from the nearest class in the MRO that gave them (a subclass may
    change a default without repeating them)."""
    for cls in config_cls.__mro__:
        f = getattr(cls, "__dataclass_fields__", {}).get(name)
        if f is not None and "help" in f.metadata:
            return {"trains": True, **f.metadata}
    return {"help": name.replace("_", " "), "choices": None, "trains": True}


OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "linear", "cosine", "warmup_cosine", "step")
STRATEGIES = ("auto", "single", "pmap", "mesh")
TASKS = ("auto", "classification", "binary", "regression", "reconstruction", "language_model", "masked_lm",
         "seq2seq")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs; no step asks the flags again."""

    # Where and what.
    workdir: Optional[str] = field(None, "Directory for checkpoints, logs, metrics and results (required).",
                                   trains=False)
    dataset: str = field("mnist", "A bmjax dataset (digits, iris, wine, breast_cancer, diabetes, mnist1d, "
                                  "synthetic) or any TFDS dataset name.")
    data_dir: Optional[str] = field(None, "TFDS data directory (default: TFDS's own, ~/tensorflow_datasets).",
                                    trains=False)
    manual_dir: Optional[str] = field(None, "Folder of raw dataset files to prepare a TFDS dataset offline.",
                                      trains=False)
    validation_split: Optional[float] = field(None, "Fraction of the training split held out for validation, "
                                                    "in (0, 1); unset for none.")
    normalize: str = field("none", "Feature scaling fitted on the training split (images are scaled to [0, 1] "
                                   "regardless).", ("none", "minmax", "standardize"))
    synthetic_examples: int = field(1000, "Examples in the `synthetic` dataset.")
    synthetic_features: int = field(10, "Features of the `synthetic` dataset.")
    synthetic_classes: int = field(2, "Classes of the `synthetic` dataset.")
    block_size: Optional[int] = field(None, "Tokens per example of a text dataset (and positions of a sequence "
                                            "model).")
    tokenizer: Optional[str] = field(None, "Tokenizer of a text dataset: char, sentencepiece (trained on the training "
                                           "split), or a saved tokenizer file (default: the dataset's own choice, or "
                                           "the one saved with --restore_from's run).")
    vocab_size: int = field(8000, "Vocabulary size of a trained subword tokenizer.")
    mask_rate: float = field(0.15, "Share of the tokens masked-LM pretraining corrupts (80% [MASK], 10% random, "
                                   "10% kept).")
    image_size: int = field(224, "Side of the square that images of varying size (ImageNet, imagenette) are "
                                 "resized and centre-cropped to, on the host.")
    data_workers: int = field(0, "Processes decoding images of varying size (0: one per CPU core).", trains=False)
    data_placement: str = field("auto", "Keep the dataset in device memory and run many steps per call "
                                        "(device), read batches from the host (host), or device when it fits "
                                        "and there is one process (auto).", ("auto", "device", "host"), trains=False)
    steps_per_call: int = field(0, "Steps per compiled call of a lax.scan (0: as many as the shortest interval "
                                   "between logs, evaluations, checkpoints and epochs; 1 suits convolutions on "
                                   "XLA:CPU).", trains=False)

    # Model and task.
    model: str = field("mlp", "Model name in bmjax.models.")
    task: str = field("auto", "Loss and metrics; auto takes classification or regression from the dataset.",
                      TASKS)
    hidden_sizes: tuple[int, ...] = field((128,), "Widths of the hidden dense layers.")
    activation: str = field("relu", "Hidden activation of the MLP.", tuple(ACTIVATIONS))
    dropout: float = field(0.0, "Dropout rate.")
    conv_features: tuple[int, ...] = field((32, 64), "Filters of each conv/max-pool stage of the CNN.")
    kernel_size: int = field(3, "Convolution kernel size.")
    conv_padding: str = field("VALID", "Convolution padding.", ("VALID", "SAME"))
    dtype: str = field("float32", "Compute dtype of the model (parameters and optimizer state stay float32): "
                                  "bfloat16 for mixed precision.", DTYPES)
    remat: bool = field(False, "Recompute activations in the backward pass instead of storing them (less memory, "
                               "about a third more compute).", trains=False)

    # Augmentation, on the device in each train step (bmjax.data.augment).
    augment: str = field("none", "Image augmentation: none, or a comma-separated list of crop (random crop of the "
                                 "padded image), flip (horizontal), resized_crop (Inception's), mixup, cutmix.")
    crop_padding: int = field(4, "Pixels padded on each side before --augment=crop's random crop.")
    mixup_alpha: float = field(0.2, "Mixup's mixing weight ~ Beta(alpha, alpha).")
    cutmix_alpha: float = field(1.0, "Cutmix's kept area ~ Beta(alpha, alpha).")
    label_smoothing: float = field(0.0, "Share of each training label spread evenly over the classes.")

    # Optimisation.
    epochs: int = field(10, "Passes over the training split.")
    train_steps: Optional[int] = field(None, "Total optimizer steps; overrides --epochs.")
    batch_size: int = field(64, "Global batch size, split over all devices.")
    grad_accum_steps: int = field(1, "Split each batch into this many micro-batches whose gradients are added up "
                                     "before one update (the same update as one big batch, in less memory).")
    eval_batch_size: int = field(1024, "Global batch size for evaluation.", trains=False)
    learning_rate: float = field(1e-3, "Peak learning rate.")
    optimizer: str = field("adam", "Optimizer.", OPTIMIZERS)
    momentum: float = field(0.9, "Momentum of sgd.")
    b2: float = field(0.999, "Decay of the second-moment estimate (adam, adamw; rmsprop's decay).")
    optimizer_eps: float = field(1e-8, "The epsilon added to the denominator (adam, adamw, rmsprop: outside the "
                                       "square root, as torch does).")
    nesterov: bool = field(False, "Nesterov momentum for sgd.")
    lr_schedule: str = field("constant", "Learning-rate schedule.", SCHEDULES)
    warmup_steps: int = field(0, "Linear warm-up steps of warmup_cosine.")
    min_learning_rate: float = field(0.0, "Where the linear and cosine schedules end.")
    lr_decay_steps: int = field(1000, "Steps between decays of the step schedule.")
    lr_decay_factor: float = field(0.1, "Factor of each decay of the step schedule.")
    weight_decay: float = field(0.0, "Decoupled weight decay of the weight matrices (adamw's; added to the "
                                     "update for sgd and adam).")
    clip_grad_norm: Optional[float] = field(None, "Clip gradients to this global norm.")
    ema_decay: float = field(0.0, "Keep an exponential moving average of the weights with this decay (e.g. 0.999; "
                                  "0: none): evaluated, saved and restored in place of the weights.")
    l1: float = field(0.0, "L1 regularisation of the weight matrices, added to the loss.")
    l2: float = field(0.0, "L2 regularisation of the weight matrices, added to the loss.")
    freeze: Optional[str] = field(None, "Regular expression over parameter paths (e.g. 'bert/' or "
                                        "'block_[01]/'): matching parameters are not trained.")
    seed: int = field(0, "Seed of initialisation, dropout and data order.")
    num_seeds: int = field(1, "Train this many seeds (--seed, --seed+1, ...) at once, vmapped in one compiled "
                              "program; metrics are reported per seed and as their mean and spread.")

    # Compression while training (bmjax/prune.py, bmjax/quantize.py).
    prune: str = field("none", "Prune the weight matrices while training: none, magnitude (unstructured, each "
                               "matrix's smallest weights, raised gradually to --prune_sparsity) or N:M such as 2:4 "
                               "(the N largest of every M consecutive weights along the input dimension).")
    prune_sparsity: float = field(0.9, "Final share of zeros in each weight matrix under --prune=magnitude, in "
                                       "[0, 1) (N:M reaches 1 - N/M).")
    prune_start_step: Optional[int] = field(None, "Step of the first mask (default: 10% of the run).")
    prune_end_step: Optional[int] = field(None, "Step at which the final sparsity is reached, the masks fixed "
                                                "after it (default: 75% of the run; equal to the start: at once).")
    prune_every_steps: Optional[int] = field(None, "Steps between mask updates from start to end (default: "
                                                   "1% of the run).")
    quantize: str = field("none", "Quantisation-aware training: none, or int8 (weights per output channel and "
                                  "activations per example fake-quantised to int8 in the forward pass, with qwix; "
                                  "python -m bmjax.quantize converts the run to int8).", ("none", "int8"))

    # Devices and hosts.
    parallel: str = field("auto", "single: jit on one device; pmap: replicated over local devices; mesh: jit "
                                  "on a device mesh; auto: mesh over all devices.", STRATEGIES, trains=False)
    mesh: Optional[str] = field(None, "Mesh axes and sizes for --parallel=mesh, e.g. data:2,fsdp:2,tensor:2 "
                                      "(default: data over every device).", trains=False)
    host_devices: Optional[int] = field(None, "Simulate this many CPU devices (before JAX starts).", trains=False)
    coordinator_address: Optional[str] = field(None, "host:port of process 0, for multi-host runs.", trains=False)
    num_processes: Optional[int] = field(None, "Number of processes in a multi-host run.", trains=False)
    process_id: Optional[int] = field(None, "This process's index in a multi-host run.", trains=False)
    distributed: bool = field(False, "Call jax.distributed.initialize() with its own detection (TPU pods, "
                                     "SLURM).", trains=False)

    # Cadence and outputs.
    log_every_steps: int = field(100, "Steps between training-metric logs.", trains=False)
    eval_every_steps: Optional[int] = field(None, "Steps between validation evaluations (default: each epoch).",
                                            trains=False)
    checkpoint_every_steps: Optional[int] = field(None, "Steps between checkpoints (default: each epoch).",
                                                  trains=False)
    keep_checkpoints: int = field(3, "Newest checkpoints to keep.", trains=False)
    summary: bool = field(False, "Print each network's layer table (shapes, parameters, FLOPs), keep it in "
                                 "result.json, and exit without training.", trains=False)
    restore_from: Optional[str] = field(None, "Workdir of another run whose parameters start this one "
                                              "(fine-tuning).", trains=False)
    early_stopping_patience: Optional[int] = field(None, "Stop training once the validation "
                                                         "--early_stopping_metric has not improved for this many "
                                                         "evaluations (unset: never).")
    early_stopping_metric: str = field("loss", "The validation metric early stopping watches: loss, mse, mae "
                                               "(lower is better) or any other the task reports, e.g. accuracy, "
                                               "macro_f1 (higher is better).")
    early_stopping_min_delta: float = field(0.0, "The least change that counts as an improvement.")
    reduce_on_plateau_patience: Optional[int] = field(None, "Multiply the updates by --reduce_on_plateau_factor once "
                                                            "the validation --reduce_on_plateau_metric has not "
                                                            "improved for this many evaluations (unset: never).")
    reduce_on_plateau_factor: float = field(0.1, "Factor of each reduction on a plateau, in (0, 1).")
    reduce_on_plateau_cooldown: int = field(0, "Evaluations after a reduction before stalls count again.")
    reduce_on_plateau_metric: str = field("loss", "The validation metric reduce-on-plateau watches (as "
                                                  "--early_stopping_metric).")
    reduce_on_plateau_rtol: float = field(1e-4, "The least relative improvement that counts.")
    reduce_on_plateau_min_scale: float = field(0.0, "The scale reductions stop at.")
    members: str = field("", "Runs trained together in one program under vmap (set by python -m bmjax.sweep): "
                             "';'-separated members, each name=value pairs over seed, learning_rate and "
                             "weight_decay, e.g. learning_rate=1e-3,seed=0;learning_rate=3e-4,seed=0.")
    reinit: Optional[str] = field(None, "With --restore_from: a regular expression over array paths (as "
                                        "--freeze's) that start from their initialisation instead, e.g. head/ for "
                                        "a new classifier.")
    restore_step: Optional[int] = field(None, "Resume from this checkpoint step instead of the newest (the newer "
                                              "ones move to checkpoints/superseded/).", trains=False)
    extend: bool = field(False, "Train this workdir's run further, to a new --train_steps or --epochs (the "
                                "learning-rate schedule follows the new length).", trains=False)

    def validate(self) -> "Config":
        """Raises UsageError for values no run can use."""
        if not self.workdir:
            raise UsageError("--workdir is required: pass --workdir=DIR, a directory for this run's outputs")
        for f in dataclasses.fields(self):
            choices = field_metadata(type(self), f.name)["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise UsageError(f"--{f.name}={getattr(self, f.name)} is not one of: {', '.join(choices)}")
        positive = ["epochs", "batch_size", "eval_batch_size", "learning_rate", "optimizer_eps", "log_every_steps",
                    "keep_checkpoints", "synthetic_examples", "synthetic_features", "kernel_size",
                    "grad_accum_steps", "vocab_size", "num_seeds", "image_size"]
        positive_if_set = ["train_steps", "eval_every_steps", "checkpoint_every_steps", "clip_grad_norm",
                           "host_devices", "num_processes", "block_size", "early_stopping_patience"]
        for name in positive + [n for n in positive_if_set if getattr(self, n) is not None]:
            value = getattr(self, name)
            if not value > 0:
                raise UsageError(f"--{name} must be positive, got {value}")
        if self.validation_split is not None and not 0 < self.validation_split < 1:
            raise UsageError(f"--validation_split must lie in (0, 1), got {self.validation_split}; "
                             "leave it unset for no validation split")
        if not 0 < self.mask_rate < 1:
            raise UsageError(f"--mask_rate must lie in (0, 1), got {self.mask_rate}")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout must lie in [0, 1), got {self.dropout}")
        for name in ("weight_decay", "l1", "l2", "warmup_steps", "momentum", "steps_per_call", "min_learning_rate"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name} must not be negative, got {getattr(self, name)}")
        augment.parse(self.augment)
        if self.mixup_alpha <= 0 or self.cutmix_alpha <= 0 or self.crop_padding < 0:
            raise UsageError(f"--mixup_alpha and --cutmix_alpha must be positive and --crop_padding not negative, got "
                             f"{self.mixup_alpha}, {self.cutmix_alpha} and {self.crop_padding}")
        if self.data_workers < 0:
            raise UsageError(f"--data_workers must not be negative, got {self.data_workers}; 0 takes one per core")
        if self.early_stopping_min_delta < 0:
            raise UsageError(f"--early_stopping_min_delta must not be negative, got {self.early_stopping_min_delta}")
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"--ema_decay must lie in [0, 1), got {self.ema_decay}; 0 keeps no average")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"--label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.synthetic_classes < 2:
            raise UsageError(f"--synthetic_classes must be at least 2, got {self.synthetic_classes}")
        if any(w <= 0 for w in self.hidden_sizes + self.conv_features):
            raise UsageError("--hidden_sizes and --conv_features must be positive integers")
        if self.batch_size % self.grad_accum_steps:
            raise UsageError(f"--batch_size={self.batch_size} does not split into --grad_accum_steps="
                             f"{self.grad_accum_steps} micro-batches; use a multiple of {self.grad_accum_steps}")
        for name in ("freeze", "reinit"):
            if getattr(self, name) is not None:
                try:
                    re.compile(getattr(self, name))
                except re.error as e:
                    raise UsageError(f"--{name}={getattr(self, name)!r} is not a regular expression ({e}); e.g. "
                                     f"--{name}=head/") from None
        if self.prune != "none":
            from bmjax import prune

            prune.validate(self)
        multihost = (self.coordinator_address, self.num_processes, self.process_id)
        if any(v is not None for v in multihost) and any(v is None for v in multihost):
            raise UsageError("a multi-host run needs all of --coordinator_address, --num_processes and "
                             "--process_id")
        return self

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def build_model(self, io: models.ModelIO):
        """The model this experiment trains, for the data and task `io` describes: `--model`'s registered builder
        by default. Override it to build a model from the experiment's own fields."""
        return models.build(self.model, self, io)

    def build_task(self, dataset):
        """The loss and metrics supervised learning scores the model by (a `bmjax.tasks` task): --task's for the
        dataset by default. Override it for a task of the experiment's own (a recommender's, say)."""
        from bmjax import tasks

        return tasks.create(self.task, dataset, mask_rate=self.mask_rate)

    def build_program(self, context):
        """What this experiment runs (a `bmjax.train.program.Plan`): supervised learning of `build_model`'s
        model on --dataset by default. Override it for another kind of training (two networks, an agent)."""
        from bmjax.train import supervised

        return supervised.build(self, context)

    def flagfile_text(self, command: str) -> str:
        """A flag file that reproduces this config: `python -m <command> --flagfile=FILE` (or `python FILE.py`
        for an experiment run as a file)."""
        run = f"python {command}" if command.endswith(".py") else f"python -m {command}"
        lines = [f"# {run} --flagfile=<this file>"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(str(v) for v in value)
            if isinstance(value, str):  # a flag file holds one flag a line
                value = value.replace("\n", "\\n").replace("\t", "\\t")
            lines.append(f"--{f.name}={value}")
        return "\n".join(lines) + "\n"
