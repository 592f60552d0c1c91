"""What a run reports: its opening lines and result on the console, metrics.jsonl, TensorBoard events, a progress
bar or log lines, curves.png, and the pictures a program draws."""

import json
import os
import sys
import time
from typing import Optional

import jax
import numpy as np

from bmjax import console
from bmjax.config import Config

METRICS_FILE = "metrics.jsonl"
SHOWN = ("loss", "accuracy", "exact_match", "macro_f1", "perplexity", "bits_per_sample", "rmse", "mse", "mae", "r2",
         "auc", "recall@10", "ndcg@10", "episode_return", "codes_used", "pair_accuracy",
         "pair_accuracy_held_out")  # on the console
# curves.png shows the first two of these a run logs.
PLOTTED = ("loss", "auc", "recall@10", "rmse", "pair_accuracy", "accuracy", "r2", "episode_return", "return_last100",
           "fd_classifier")


class RunLog:
    """Writes each training log and evaluation once (process 0 only)."""

    def __init__(self, workdir: str, total_steps: int, start_step: int, enabled: bool = True,
                 steps_per_epoch: Optional[int] = None):
        self.enabled = enabled
        self.workdir = workdir
        self.bar = None
        self.writer = None
        self.steps_per_epoch = steps_per_epoch
        if not enabled:
            return
        path = os.path.join(workdir, METRICS_FILE)
        _drop_records_after(path, start_step)  # a resumed run logs those steps again
        self.file = open(path, "a")
        self.writer = _summary_writer()(os.path.join(workdir, "tensorboard"))
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.total_steps = total_steps

    def write(self, step: int, split: str, values: dict, echo: bool = True, **extra) -> None:
        """One record of `values` (a summary; a many-seed one holds means, NAME_std and each seed's numbers)."""
        if not self.enabled:
            return
        scalars = {**_scalars(values), **extra}
        record = {"step": step, "split": split, **scalars, "time": time.time()}
        if values.get("seeds"):
            record["seeds"] = [{"seed": s["seed"], **_scalars(s)} for s in values["seeds"]]
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for name, value in scalars.items():
            self.writer.add_scalar(f"{split}/{name}", value, step)
        for seed in record.get("seeds", []):
            for name, value in seed.items():
                self.writer.add_scalar(f"seed_{seed['seed']}/{split}/{name}", value, step)
        if not echo:
            return
        text = format_numbers(scalars, ".4g")
        if self.bar is not None:
            if split == "train":  # the bar shows the step rate itself
                self.bar.n = step
                self.bar.set_postfix_str(self._epoch(step) + format_numbers(
                    {k: v for k, v in scalars.items() if k != "steps_per_second"}, ".4g"), refresh=True)
            else:
                self.bar.write(f"step {step} {split}: {text}")
        else:
            print(f"step {step}/{self.total_steps} {split}: {text}", flush=True)

    def pictures(self, step: int, pictures: dict) -> None:
        """Each uint8 image [H, W, C] as WORKDIR/pictures/NAME_STEP.png, and to TensorBoard."""
        if not self.enabled or not pictures:
            return
        folder = os.path.join(self.workdir, "pictures")
        os.makedirs(folder, exist_ok=True)
        for name, picture in pictures.items():
            save_png(picture, os.path.join(folder, f"{name}_{step:07d}.png"))
            self.writer.add_image(name, picture, step, dataformats="HWC")

    def _epoch(self, step: int) -> str:
        if not self.steps_per_epoch:
            return ""
        epochs = -(-self.total_steps // self.steps_per_epoch)
        return f"epoch {min(-(-step // self.steps_per_epoch), epochs)}/{epochs} "

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.writer.close()
        self.file.close()


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without PyTorch where PyTorch is installed but not yet imported:
    tensorboardX imports it only to accept torch tensors (the runs log floats and numpy arrays), and the import
    takes 1.5 s of every run's start."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects when it is absent
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def save_png(picture: np.ndarray, path: str) -> None:
    """A uint8 image [H, W, C] as a PNG file (grey when C is 1)."""
    from PIL import Image

    Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(path)


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(workdir: str, out: Optional[str] = None, title: Optional[str] = None) -> str:
    """curves.png: training and validation loss and the main metric against steps (an agent's: against
    environment steps); for many seeds, their mean with a band of one standard deviation."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's) stays as it is

    records = read_metrics(workdir)
    # An agent's numbers go against environment steps, which its training logs give for every step it logs at.
    env_steps = {r["step"]: r["env_steps"] for r in records if r["split"] == "train" and "env_steps" in r}
    x_of = (lambda step: env_steps[step]) if env_steps else (lambda step: step)
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, name in zip(axes, _plotted(records)):
        for split, style in (("train", "-"), ("validation", "o-"), ("evaluation", "o-")):
            rows = [r for r in records if r["split"] == split and name in r and (not env_steps or r["step"] in env_steps)]
            if not rows:
                continue
            steps, values = np.array([x_of(r["step"]) for r in rows]), np.array([r[name] for r in rows])
            line, = ax.plot(steps, values, style, label=split, markersize=3)
            if all(f"{name}_std" in r for r in rows):
                spread = np.array([r[f"{name}_std"] for r in rows])
                ax.fill_between(steps, values - spread, values + spread, color=line.get_color(), alpha=0.2,
                                linewidth=0)
        ax.set_xlabel("environment steps" if env_steps else "step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    seeds = next((len(r["seeds"]) for r in records if "seeds" in r), 0)
    if title or seeds:
        fig.suptitle(" ".join(filter(None, [title, f"mean ± std over {seeds} seeds" if seeds else None])))
    fig.tight_layout()
    out = out or os.path.join(workdir, "curves.png")
    fig.savefig(out, dpi=100, metadata={"Title": title} if title else None)
    return out


def format_numbers(summary: dict, spec: str) -> str:
    """'loss=0.31 accuracy=0.9' for the console: the metrics worth a glance (mean±std over seeds)."""
    names = [k for k in SHOWN if k in summary] or [k for k in _scalars(summary) if not k.endswith("_std")
                                                    and k not in ("steps_per_second", "learning_rate")][:4]
    names += ["steps_per_second"] if "steps_per_second" in summary else []
    return " ".join(f"{k}={summary[k]:{spec}}" + (f"±{summary[k + '_std']:{spec}}" if k + "_std" in summary else "")
                    for k in names)


def _scalars(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _plotted(records: list[dict]) -> list[str]:
    """The two metrics curves.png shows: the loss and the main metric, or the first two a program logs (in
    training first)."""
    logged = [k for split in ("train", "validation", "evaluation") for r in records if r["split"] == split
              for k in _scalars(r) if k not in ("step", "time", "steps_per_second") and not k.endswith("_std")
              and not k.endswith("learning_rate")]
    logged = list(dict.fromkeys(logged))
    preferred = [k for k in PLOTTED if k in logged] + [k for k in logged if k not in PLOTTED]
    return preferred[:2]


def _drop_records_after(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(kept)


def announce(config: Config, command: str, plan, facts: dict, strategy, schedule, workdir: str,
              seeds) -> None:
    """The run in a few lines: what trains on what, on which devices, where it writes; and settings that make
    it meaningless."""
    size = f", {facts['parameters']:,} parameters" if "parameters" in facts else ""
    model = f", model {config.model}" if plan.model_io is not None else ""
    several = f", seeds {seeds[0]}-{seeds[-1]} at once" if len(seeds) > 1 else ""
    console.say(f"{command}: {type(plan.program).__name__}{model}{size}{several}")
    layout = f" {dict(strategy.mesh.shape)}" if hasattr(strategy, "mesh") else ""
    console.say(f"devices: {strategy.num_shards} of {jax.device_count()} {jax.default_backend()} device(s), "
                f"strategy {strategy.name}{layout}, {jax.process_count()} process(es)")
    length = f"{schedule.total_steps:,} steps"
    if plan.dataset is not None:
        splits = [f"{len(getattr(plan.dataset, s)):,} {s}" for s in ("train", "validation", "test")
                  if getattr(plan.dataset, s) is not None]
        epochs = schedule.total_steps / schedule.steps_per_epoch
        console.say(f"data: {config.dataset}, {' / '.join(splits)} examples; {length} ({epochs:.3g} epochs of "
                    f"{schedule.steps_per_epoch}, batch {config.batch_size})")
        validation = plan.dataset.validation
        if validation is not None and len(validation) < config.batch_size:
            console.warn(f"the validation split holds {len(validation)} examples, fewer than one batch of "
                         f"{config.batch_size}: its numbers are noisy; raise --validation_split")
    else:
        console.say(f"data: made by the program; {length}")
    if config.eval_every_steps and config.eval_every_steps > schedule.total_steps:
        console.warn(f"--eval_every_steps={config.eval_every_steps} is longer than the run's {length}: nothing is "
                     "evaluated before the end")
    console.say(f"workdir: {workdir}")


def print_result(result: dict) -> None:
    """Each split's main numbers, and the test split's classification report where there is one."""
    for split in ("validation", "test", "evaluation"):
        if split in result:
            summary = result[split]
            print(f"{split}: {format_numbers(summary, '.4f')}")
    test, label = result.get("test", {}), " (test)"
    if test.get("seeds"):  # many seeds: the first one's report
        test, label = test["seeds"][0], f" (test, seed {test['seeds'][0]['seed']})"
    if "classification_report" in test:
        print(f"\nclassification report{label}:\n" + test["classification_report"])
