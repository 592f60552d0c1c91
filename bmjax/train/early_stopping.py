"""Early stopping: training ends once a validation metric has not improved for `patience` evaluations.

The watcher's state is the run's validation log, so a resumed run (its metrics.jsonl read back up to the
checkpoint it resumes from) decides exactly as the uninterrupted run did.
"""

import json
import os
from typing import Optional

from bmjax.errors import UsageError

LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "perplexity")
SPLIT = "validation"


class EarlyStopping:
    def __init__(self, metric: str, patience: int, min_delta: float = 0.0):
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.lower_is_better = metric in LOWER_IS_BETTER
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.stale = 0  # evaluations since the best

    @property
    def stopped(self) -> bool:
        return self.stale >= self.patience

    def observe(self, step: int, summary: dict) -> bool:
        """Takes one validation summary; True when training should stop here."""
        if self.metric not in summary:
            names = ", ".join(k for k, v in summary.items() if isinstance(v, (int, float)) and not k.endswith("_std"))
            raise UsageError(f"--early_stopping_metric={self.metric} is not among the validation metrics ({names}); "
                             "choose one of them")
        value = float(summary[self.metric])
        if self.best is None or (self.best - value if self.lower_is_better else value - self.best) > self.min_delta:
            self.best, self.best_step, self.stale = value, step, 0
        else:
            self.stale += 1
        return self.stopped

    def replay(self, metrics_path: str, up_to_step: int) -> "EarlyStopping":
        """Observes the validation records a run logged up to `up_to_step` (those of a resumed run)."""
        if os.path.exists(metrics_path):
            with open(metrics_path) as f:
                for line in f:
                    record = json.loads(line)
                    if record["split"] == SPLIT and record["step"] <= up_to_step and self.metric in record:
                        self.observe(record["step"], record)
        return self

    def describe(self, step: int) -> dict:
        return {"step": step, "metric": self.metric, "best": self.best, "best_step": self.best_step}
