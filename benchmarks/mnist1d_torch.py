"""MNIST-1D's MLP, CNN and GRU as the paper's notebook trains them (Greydanus 2020), in PyTorch, on the same arrays
as `experiments.mnist1d`: the baseline its accuracies are read against.

The notebook's models (`MLPBase`: 40-100-100-10 with a residual second layer; `ConvBase`: three stride-2 1-D
convolutions of 25 channels and a linear classifier; `GRUBase`: a bidirectional GRU of 6 whose 40 x 12 outputs,
flattened, feed a linear classifier), PyTorch's default initialisation, and its `train_model`: Adam 1e-2, batches of
100 read in order, 6000 steps, the test accuracy after the last.

    python -m benchmarks.mnist1d_torch --models=mlp,cnn,gru --seeds=0,1,2 [--shuffled] [--out=FILE.json]

Prints each run's final test accuracy, with the accuracy every 1000 steps, and the mean and standard deviation
over the seeds; the GRU takes about 8 minutes a seed on one core.
"""

import json

import numpy as np
import torch
from absl import app, flags
from torch import nn

from bmjax.data import local

_MODELS = flags.DEFINE_list("models", ["mlp", "cnn", "gru"], "Models to train: mlp, cnn, gru.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "torch.manual_seed of each run.")
_SHUFFLED = flags.DEFINE_boolean("shuffled", False, "Permute the 40 positions as mnist1d_shuffled does.")
_STEPS = flags.DEFINE_integer("steps", 6000, "Training steps.")
_OUT = flags.DEFINE_string("out", None, "Where to write the accuracies (JSON).")

BATCH, LEARNING_RATE = 100, 1e-2


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear1, self.linear2, self.linear3 = nn.Linear(40, 100), nn.Linear(100, 100), nn.Linear(100, 10)

    def forward(self, x):
        h = self.linear1(x).relu()
        return self.linear3(h + self.linear2(h).relu())


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(1, 25, 5, 2, 1), nn.Conv1d(25, 25, 3, 2, 1), nn.Conv1d(25, 25, 3, 2, 1)])
        self.linear = nn.Linear(125, 10)

    def forward(self, x):
        h = x[:, None, :]
        for conv in self.convs:
            h = conv(h).relu()
        return self.linear(h.flatten(1))


class GRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(1, 6, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(2 * 6 * 40, 10)

    def forward(self, x):
        outputs, _ = self.gru(x[..., None])
        return self.linear(outputs.flatten(1))


MODELS = {"mlp": MLP, "cnn": CNN, "gru": GRU}


def arrays(shuffled: bool):
    """MNIST-1D as `experiments.mnist1d` reads it (the mnist1d package's defaults, 4000 train and 1000 test)."""
    from experiments.mnist1d import SHUFFLE_SEED

    _, train_split, test_split = local.load("mnist1d", data_dir=None, synthetic_examples=0, synthetic_features=0,
                                            synthetic_classes=0)
    x, y, x_test, y_test = train_split.x, train_split.y, test_split.x, test_split.y
    if shuffled:
        order = np.random.RandomState(SHUFFLE_SEED).permutation(x.shape[1])
        x, x_test = x[:, order], x_test[:, order]
    tensor = lambda a, dtype: torch.tensor(a, dtype=dtype)
    return tensor(x, torch.float32), tensor(y, torch.long), tensor(x_test, torch.float32), tensor(y_test, torch.long)


def train(kind: str, seed: int, data) -> list[float]:
    """The notebook's loop: batch k of an epoch is examples [100 k, 100 k + 100). Test accuracy every 1000 steps."""
    x, y, x_test, y_test = data
    torch.manual_seed(seed)
    model = MODELS[kind]()
    optimizer = torch.optim.Adam(model.parameters(), LEARNING_RATE)
    accuracies = []
    for step in range(_STEPS.value + 1):
        start = (step * BATCH) % len(x)
        loss = nn.functional.cross_entropy(model(x[start:start + BATCH]), y[start:start + BATCH])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 1000 == 0:
            with torch.no_grad():
                accuracies.append(float((model(x_test).argmax(-1) == y_test).float().mean()))
    return accuracies


def main(argv):
    del argv
    torch.set_num_threads(1)
    for kind in _MODELS.value:
        if kind not in MODELS:
            raise app.UsageError(f"unknown model {kind!r}; choose from {', '.join(MODELS)}")
    data = arrays(_SHUFFLED.value)
    results = {"shuffled": _SHUFFLED.value, "steps": _STEPS.value, "models": {}}
    for kind in _MODELS.value:
        finals = []
        for seed in map(int, _SEEDS.value):
            curve = train(kind, seed, data)
            finals.append(curve[-1])
            print(f"{kind} seed {seed}: test accuracy {curve[-1]:.3f} (every 1000 steps: "
                  f"{', '.join(f'{a:.3f}' for a in curve)})", flush=True)
        results["models"][kind] = {"accuracies": finals, "mean": float(np.mean(finals)), "std": float(np.std(finals))}
        print(f"{kind}{' shuffled' if _SHUFFLED.value else ''}: {np.mean(finals):.3f} +- {np.std(finals):.3f} "
              f"over seeds {', '.join(_SEEDS.value)}", flush=True)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
