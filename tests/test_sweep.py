"""Hyperparameter sweeps (python -m bmjax.sweep): trials that differ in learning rate and seed train in one vmapped
program and equal their separate runs; the table is ranked; a rerun resumes; random draws are reproducible;
reduce-on-plateau scales the updates down when the validation metric stalls."""

import csv
import json

import pytest
from conftest import read_metrics, run_module

from bmjax import sweep
from bmjax.config import Config
from bmjax.errors import UsageError
from bmjax.train.loop import run
from bmjax.train.program import parse_members
from experiments.mnist_mlp import MnistMlp

TINY = dict(dataset="digits", hidden_sizes=(16,), train_steps=20, log_every_steps=10, parallel="single")
FLAGS = ["--dataset=digits", "--hidden_sizes=16", "--train_steps=20", "--log_every_steps=10", "--parallel=single"]
LRS, SEEDS = (1e-3, 3e-3), (0, 1)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    args = sweep.parse_args(["experiments.mnist_mlp", f"--workdir={root}", "--grid=learning_rate:1e-3,3e-3",
                             "--grid=seed:0,1", "--metric=accuracy", *FLAGS])
    return root, args, sweep.run(args)


def test_a_vmapped_sweep_equals_its_separate_runs(swept, tmp_path):
    root, _, ranked = swept
    assert sorted(p.name for p in root.glob("group_*")) == ["group_000"], "one program for the 4 trials"
    for i, (lr, seed) in enumerate([(lr, s) for lr in LRS for s in SEEDS]):
        trial = json.loads((root / f"trial_{i:03d}" / "result.json").read_text())
        assert trial["settings"] == {"learning_rate": lr, "seed": seed} and trial["member"] == i
        alone = run(MnistMlp(workdir=str(tmp_path / str(i)), learning_rate=lr, seed=seed, **TINY))
        for split in ("validation", "test"):
            assert trial[split]["loss"] == pytest.approx(alone[split]["loss"], rel=1e-5)
            assert trial[split]["accuracy"] == pytest.approx(alone[split]["accuracy"], abs=1e-9)


def test_the_table_is_ranked_and_plotted(swept):
    root, _, ranked = swept
    with open(root / "results.csv") as f:
        rows = list(csv.DictReader(f))
    accuracies = [float(r["validation_accuracy"]) for r in rows]
    assert len(rows) == 4 and accuracies == sorted(accuracies, reverse=True)
    assert [r["trial"] for r in rows] == [f"trial_{r['trial']:03d}" for r in ranked]
    assert (root / "results.md").read_text().count("\n") == 6 and (root / "sweep.png").stat().st_size > 0


def test_a_rerun_skips_finished_groups_and_resumes_unfinished_ones(swept, capsys):
    root, args, ranked = swept
    before = (root / "group_000" / "metrics.jsonl").read_text()
    assert [r["trial"] for r in sweep.run(args)] == [r["trial"] for r in ranked]
    assert "has finished" in capsys.readouterr().out
    assert (root / "group_000" / "metrics.jsonl").read_text() == before, "nothing trained again"
    (root / "group_000" / "result.json").unlink()  # as if killed after its last checkpoint
    again = sweep.run(args)
    assert [r["validation"] for r in again] == [r["validation"] for r in ranked]
    trained = [r["step"] for r in read_metrics(root / "group_000")]
    assert trained == [10, 17, 20], "resumed from the checkpoint of step 20, not trained again"


def test_random_search_draws_within_its_ranges_reproducibly(tmp_path):
    argv = ["experiments.mnist_mlp", f"--workdir={tmp_path}", "--random=learning_rate:log:1e-4:1e-2",
            "--random=dropout:0:0.5", "--random=batch_size:16:64", "--grid=seed:0,1", "--trials=20", "--search_seed=3"]
    drawn = sweep.trials(sweep.parse_args(argv))
    assert drawn == sweep.trials(sweep.parse_args(argv)) and len(drawn) == 40
    assert drawn != sweep.trials(sweep.parse_args(argv[:-1] + ["--search_seed=4"]))
    assert all(1e-4 <= t["learning_rate"] <= 1e-2 and 0 <= t["dropout"] <= 0.5 and 16 <= t["batch_size"] <= 64
               for t in drawn)
    assert all(isinstance(t["batch_size"], int) for t in drawn)
    groups = sweep.groups(drawn)
    assert len(groups) == 20 and all(len(g) == 2 for g in groups), "dropout and batch size make separate runs"


def test_reduce_on_plateau_lowers_the_scale_of_a_stalled_member_only(tmp_path):
    """Evaluations at steps 5, 10 and 15. Member 0's learning rate is too small to move the validation loss by the
    tolerance: each of its 2 stalls halves its scale (patience 1); member 1 improves each time and keeps its scale."""
    result = run(Config(workdir=str(tmp_path), members="learning_rate=1e-9;learning_rate=3e-3", eval_every_steps=5,
                        validation_split=0.2, reduce_on_plateau_patience=1, reduce_on_plateau_factor=0.5, **TINY))
    assert result["reduce_on_plateau_scale"] == [[0.25, 1.0]]


def test_bad_input_is_one_line():
    out = run_module("bmjax.sweep", "experiments.mnist_mlp", "--workdir=/tmp/unused", "--grid=learning_rate:fast")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert out.stderr.startswith("error: --grid: learning_rate='fast' is not a float")
    with pytest.raises(UsageError, match="'widht' is not a setting"):
        sweep.parse_args(["experiments.mnist_mlp", "--workdir=x", "--grid=widht:1,2"])
    with pytest.raises(UsageError, match="no experiment 'experiments.nope'"):
        sweep.parse_args(["experiments.nope", "--workdir=x", "--grid=seed:0,1"])
    with pytest.raises(UsageError, match="'dropout' is not a setting members may differ in"):
        parse_members("dropout=0.1;dropout=0.2")
    with pytest.raises(UsageError, match="at least two members"):
        parse_members("learning_rate=1e-3")
    with pytest.raises(UsageError, match="--learning_rate is swept"):
        sweep.parse_args(["experiments.mnist_mlp", "--workdir=x", "--grid=learning_rate:1,2", "--learning_rate=3"])
