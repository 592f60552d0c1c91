"""A 4 x 3 learning-rate x seed sweep of the seed MLP in one vmapped program, against the 12 separate runs.

    python benchmarks/sweep.py [--dataset=digits] [--epochs=5] [--out=benchmarks/sweep_results.json]
    python -m bmjax.data prepare mnist --manual_dir=RAW_MNIST --data_dir=DIR
    python benchmarks/sweep.py --dataset=mnist --data_dir=DIR --epochs=1 --out=benchmarks/sweep_results_mnist.json

Both sides run in this one process (no process start-up on either side), one after the other, each on a fresh
workdir; the wall-clock of each `bmjax.run` includes its data loading and compilation. Each trial's validation
and test numbers from the vmapped program are checked against its separate run's.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bmjax.train.loop import run  # noqa: E402
from experiments.mnist_mlp import MnistMlp  # noqa: E402

LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3)
SEEDS = (0, 1, 2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data_dir", default=None, help="TFDS data directory (MNIST prepared there)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "sweep_results.json"))
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bmjax-sweep-bench-")
    base = dict(dataset=args.dataset, epochs=args.epochs, parallel="single", log_every_steps=1000,
                data_dir=args.data_dir)
    trials = [(lr, seed) for lr in LEARNING_RATES for seed in SEEDS]
    members = ";".join(f"learning_rate={lr!r},seed={seed}" for lr, seed in trials)

    tick = time.time()
    together = run(MnistMlp(workdir=os.path.join(root, "together"), members=members, **base))
    together_seconds = time.time() - tick
    separate, separate_seconds = [], []
    for i, (lr, seed) in enumerate(trials):
        tick = time.time()
        separate.append(run(MnistMlp(workdir=os.path.join(root, f"trial_{i:02d}"), learning_rate=lr, seed=seed,
                                     **base)))
        separate_seconds.append(time.time() - tick)

    rows, worst = [], 0.0
    for i, (lr, seed) in enumerate(trials):
        member, alone = together["validation"]["seeds"][i], separate[i]["validation"]
        test_member, test_alone = together["test"]["seeds"][i], separate[i]["test"]
        for a, b in [(member["loss"], alone["loss"]), (test_member["loss"], test_alone["loss"])]:
            worst = max(worst, abs(a - b) / abs(b))
        rows.append(dict(learning_rate=lr, seed=seed, vmapped_validation_loss=member["loss"],
                         separate_validation_loss=alone["loss"], vmapped_validation_accuracy=member["accuracy"],
                         separate_validation_accuracy=alone["accuracy"], vmapped_test_accuracy=test_member["accuracy"],
                         separate_test_accuracy=test_alone["accuracy"]))
    same_accuracy = all(r["vmapped_validation_accuracy"] == r["separate_validation_accuracy"] and
                        r["vmapped_test_accuracy"] == r["separate_test_accuracy"] for r in rows)
    total_separate = float(sum(separate_seconds))
    result = dict(dataset=args.dataset, epochs=args.epochs, steps=together["steps"], trials=len(trials),
                  vmapped_seconds=together_seconds, vmapped_train_seconds=together["train_seconds"],
                  separate_seconds=total_separate,
                  separate_train_seconds=float(sum(r["train_seconds"] for r in separate)),
                  speedup=total_separate / together_seconds,
                  train_speedup=sum(r["train_seconds"] for r in separate) / together["train_seconds"],
                  max_relative_loss_difference=worst, accuracies_equal=same_accuracy, rows=rows)
    print(f"\n{'lr':>8} {'seed':>4} | {'vmapped val loss':>16} {'separate val loss':>17} | "
          f"{'vmapped test acc':>16} {'separate test acc':>17}")
    for r in rows:
        print(f"{r['learning_rate']:>8.0e} {r['seed']:>4} | {r['vmapped_validation_loss']:>16.6f} "
              f"{r['separate_validation_loss']:>17.6f} | {r['vmapped_test_accuracy']:>16.4f} "
              f"{r['separate_test_accuracy']:>17.4f}")
    print(f"\n12 trials, {together['steps']} steps each on {args.dataset}: one program {together_seconds:.1f} s, "
          f"12 runs {total_separate:.1f} s ({result['speedup']:.2f}x; training alone "
          f"{result['train_speedup']:.2f}x); largest relative loss difference {worst:.2e}, accuracies equal: "
          f"{same_accuracy}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    shutil.rmtree(root)
    print(f"wrote {args.out}")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
