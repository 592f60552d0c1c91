"""The runner's promises: one compilation per shape whatever the cadence flags, models declared in experiment
files, many seeds in one program, bmjax.restore onto any device count, and a library that never imports the
experiments."""

import ast
import json
import random
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, kill_after_saving, read_metrics, read_result, run_module, saved_state, subprocess_env

import bmjax
from bmjax.config import Config
from bmjax.train.loop import run

DIGITS = dict(dataset="digits", model="mlp", hidden_sizes=(32,), batch_size=64, epochs=6, parallel="single")


class Compilations:
    """Counts XLA compilations by the name of the function compiled."""

    def __init__(self):
        self.names = []
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event, seconds, fun_name="?", **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.names.append(fun_name)

    def during(self, fn):
        start = len(self.names)
        fn()
        return self.names[start:]


COMPILATIONS = Compilations()


def test_cadence_flags_never_compile_the_train_step_again(tmp_path):
    """Logs every 7 steps of 17-step epochs make segments of many lengths; they compile what logs every 17 do."""
    counts = {}
    for log_every in (17, 7, 5):
        config = Config(workdir=str(tmp_path / f"log{log_every}"), log_every_steps=log_every, **DIGITS)
        names = COMPILATIONS.during(lambda: run(config))
        counts[log_every] = len(names)
        train = [n for n in names if n.startswith("train_step")]
        assert len(train) <= 2, f"--log_every_steps={log_every} compiled {train}"
    assert counts[7] == counts[5] <= counts[17] + 1, counts  # the single step of segments' tails, at most
    same = lambda w: [{k: v for k, v in r.items() if k not in ("time", "steps_per_second")}
                      for r in read_metrics(w, "validation")]
    assert same(tmp_path / "log7") == same(tmp_path / "log17"), "the same training, whatever the cadence"


def test_a_model_declared_in_an_experiment_file_trains_and_saves_its_running_averages(tmp_path):
    """experiments/digits_resnet.py registers a ResNet with BatchNorm, trained on 8 devices under mesh (batch
    statistics over the whole batch), its running averages saved. The same numbers under single, pmap and mesh,
    and running averages resuming bitwise after SIGKILL: tests/test_image_classification.py."""
    out = run_module("experiments.digits_resnet", f"--workdir={tmp_path}", "--parallel=mesh", "--train_steps=12",
                     "--log_every_steps=2", "--lr_schedule=constant", "--host_devices=8", "--checkpoint_every_steps=6")
    assert out.returncode == 0, out.stderr
    assert read_result(tmp_path)["devices"] == 8 and len(read_metrics(tmp_path)) == 6
    state = saved_state(tmp_path)
    means = [k for k in state if "batch_stats" in k and k.endswith("['mean']")]
    assert means and all(np.abs(state[k]).max() > 0 for k in means), "running averages moved away from 0"


def test_readme_shows_the_model_declaring_experiment_file_whole():
    readme = (ROOT / "README.md").read_text()
    source = (ROOT / "experiments" / "digits_resnet.py").read_text()
    assert f"```python\n{source}```" in readme


def test_many_seeds_of_a_supervised_run(tmp_path):
    """Seed i of --num_seeds=3 is the run --seed=i makes; summaries carry the mean, the spread and each seed."""
    many = run(Config(workdir=str(tmp_path / "many"), seed=3, num_seeds=3, **{**DIGITS, "parallel": "mesh"}))
    alone = run(Config(workdir=str(tmp_path / "alone"), seed=4, **{**DIGITS, "parallel": "pmap"}))
    test = many["test"]
    assert [s["seed"] for s in test["seeds"]] == [3, 4, 5]
    assert test["seeds"][1]["accuracy"] == pytest.approx(alone["test"]["accuracy"], abs=1e-9)
    assert test["seeds"][1]["loss"] == pytest.approx(alone["test"]["loss"], rel=1e-5)
    assert test["accuracy"] == pytest.approx(np.mean([s["accuracy"] for s in test["seeds"]]))
    assert test["accuracy_std"] == pytest.approx(np.std([s["accuracy"] for s in test["seeds"]]))
    assert test["seeds"][0]["confusion_matrix"] and test["seeds"][0]["classification_report"]
    assert many["parameters"] == alone["parameters"], "counted per seed"
    record = read_metrics(tmp_path / "many")[-1]
    np.testing.assert_allclose([s["loss"] for s in record["seeds"]][1], read_metrics(tmp_path / "alone")[-1]["loss"],
                               rtol=1e-5)
    assert (tmp_path / "many" / "curves.png").stat().st_size > 0


def test_many_seeds_resume_bitwise_after_sigkill(tmp_path):
    args = ["--dataset=digits", "--train_steps=120", "--checkpoint_every_steps=20", "--log_every_steps=10",
            "--num_seeds=3", "--dropout=0.2", "--data_placement=host"]
    whole = tmp_path / "whole"
    assert run_module("experiments.mnist_mlp", f"--workdir={whole}", *args).returncode == 0
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "experiments.mnist_mlp", f"--workdir={killed}", *args]
    assert kill_after_saving(command, killed, 40, random.Random(1)) == -signal.SIGKILL
    out = run_module("experiments.mnist_mlp", f"--workdir={killed}", *args)
    assert out.returncode == 0, out.stderr
    expected, got = saved_state(whole), saved_state(killed)
    assert expected["['step']"].tolist() == [120] * 3
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_restore_from_a_mesh_run_onto_one_device(tmp_path):
    """A run sharded over 4 devices is read back, and sampled from, by a process with one device."""
    workdir = tmp_path / "mlp"
    out = run_module("experiments.mnist_mlp", f"--workdir={workdir}", "--dataset=digits", "--train_steps=60",
                     "--host_devices=4", "--mesh=data:4")
    assert out.returncode == 0, out.stderr
    script = (f"import bmjax, numpy as np, json\nfrom bmjax import data\nrun = bmjax.restore({str(workdir)!r})\n"
              "test = data.load('digits').test\nx = test[np.arange(len(test))]\n"
              "accuracy = float((np.asarray(run(x['x'])).argmax(-1) == x['y']).mean())\n"
              "import jax\nprint(json.dumps({'devices': jax.device_count(), 'accuracy': accuracy, 'step': run.step,"
              " 'model': type(run.model).__name__, 'hidden': list(run.config.hidden_sizes)}))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    restored = json.loads(out.stdout.strip().splitlines()[-1])
    assert restored["devices"] == 1 and restored["step"] == 60 and restored["model"] == "MLP"
    assert restored["accuracy"] == pytest.approx(read_result(workdir)["test"]["accuracy"], abs=1e-9)
    assert restored["hidden"] == [128]


def test_restore_explains_what_is_missing(tmp_path):
    with pytest.raises(bmjax.UsageError, match="holds no bmjax run"):
        bmjax.restore(str(tmp_path))
    run(Config(workdir=str(tmp_path / "run"), seed=1, num_seeds=2, **DIGITS))
    restored = bmjax.restore(str(tmp_path / "run"), seed=2)
    assert restored.seed == 2 and restored.params["Dense_0"]["kernel"].shape == (64, 32)
    with pytest.raises(bmjax.UsageError, match="trained seeds 1, 2, not 5"):
        bmjax.restore(str(tmp_path / "run"), seed=5)


def test_the_library_never_imports_experiments_and_has_no_import_cycle():
    package = ROOT / "bmjax"
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package.rglob("*.py")}

    def imported(node):
        """The modules an import statement loads: `from bmjax import data` loads bmjax.data."""
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if not node.module:
            return []
        return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]

    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        everywhere = [m for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                      for m in imported(node)]
        assert not [m for m in everywhere if m.split(".")[0] == "experiments"], f"{name} imports an experiment"
        # Module-level imports only: a function may import lazily without making a cycle at import time.
        graph[name] = {m for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                       for m in imported(node) if m in modules and m != name}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for following in graph[node]:
                if following == start:
                    return trail + [following]
                if following not in seen:
                    seen.add(following)
                    stack.append((following, trail + [following]))
        return None

    cycles = [c for c in map(cycle_from, graph) if c]
    assert not cycles, cycles
