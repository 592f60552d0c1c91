"""What a run reports: metrics.jsonl, TensorBoard events, a progress bar or log lines, curves.png."""

import json
import os
import sys
import time
from typing import Optional

METRICS_FILE = "metrics.jsonl"
SHOWN = ("loss", "accuracy", "exact_match", "macro_f1", "perplexity", "mse", "mae", "r2", "steps_per_second")  # on the console


class RunLog:
    """Writes each training log and evaluation once (process 0 only)."""

    def __init__(self, workdir: str, total_steps: int, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.workdir = workdir
        self.bar = None
        self.writer = None
        if not enabled:
            return
        path = os.path.join(workdir, METRICS_FILE)
        _drop_records_after(path, start_step)  # a resumed run logs those steps again
        self.file = open(path, "a")
        from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.total_steps = total_steps

    def write(self, step: int, split: str, values: dict, echo: bool = True, **extra) -> None:
        if not self.enabled:
            return
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        record = {"step": step, "split": split, **scalars, **extra, "time": time.time()}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for name, value in {**scalars, **extra}.items():
            self.writer.add_scalar(f"{split}/{name}", value, step)
        if not echo:
            return
        text = " ".join(f"{k}={v:.4g}" for k, v in {**scalars, **extra}.items() if k in SHOWN)
        if self.bar is not None:
            if split == "train":
                self.bar.n = step
                self.bar.set_postfix_str(text, refresh=True)
            else:
                self.bar.write(f"step {step} {split}: {text}")
        else:
            print(f"step {step}/{self.total_steps} {split}: {text}", flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.writer.close()
        self.file.close()


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(workdir: str, out: Optional[str] = None) -> str:
    """curves.png: training and validation loss and accuracy (or R²) against steps."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's) stays as it is

    records = read_metrics(workdir)
    metric = "accuracy" if any("accuracy" in r for r in records) else "r2"
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, name in zip(axes, ("loss", metric)):
        for split, style in (("train", "-"), ("validation", "o-")):
            points = [(r["step"], r[name]) for r in records if r["split"] == split and name in r]
            if points:
                ax.plot(*zip(*points), style, label=split, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = out or os.path.join(workdir, "curves.png")
    fig.savefig(out, dpi=100)
    return out


def _drop_records_after(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(kept)
