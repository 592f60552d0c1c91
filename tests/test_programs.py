"""The one loop carries programs other than supervised learning: two networks with two optimizers in alternating
updates (the DCGAN experiment on the digits), and agents that make their own data (the PPO and DQN experiments on
gymnax's CartPole, DQN's replay buffer in its state). Each gives the same numbers under single, pmap and mesh on 8
simulated devices and resumes bitwise after SIGKILL; many seeds in one program are each seed's separate run."""

import random
import signal
import sys

import numpy as np
import pytest
from conftest import ROOT, kill_after_saving, program_module, read_metrics, run_file, saved_state

from bmjax.train.loop import run
from bmjax.train.program import ManySeeds, Program


# (program file, its config class, a short run, the metric its training logs, the split it evaluates)
PROGRAMS_UNDER_TEST = {
    "dcgan": (ROOT / "experiments" / "dcgan.py", "Dcgan",
              dict(dataset="digits", train_steps=24, log_every_steps=4, batch_size=64, generator_features=8,
                   discriminator_features=8, latent_dim=16, validation_split=None), "d_loss", "test"),
    "ppo": (ROOT / "experiments" / "ppo.py", "Ppo",
            dict(num_envs=8, rollout_steps=16, minibatches=2, update_epochs=2, train_steps=12, log_every_steps=3,
                 eval_every_steps=6),
            "episode_return", "evaluation"),
    "dqn": (ROOT / "experiments" / "dqn.py", "Dqn",
            dict(num_envs=8, batch_size=16, buffer_size=64, learning_starts=24, target_every=32, n_step=3, double=True,
                 train_steps=12, log_every_steps=3, eval_every_steps=6), "q_loss", "evaluation"),
}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> dict:
    """The DCGAN's flag naming a digits classifier for its Frechet distance, trained once."""
    from experiments.mnist_cnn import MnistCnn

    workdir = tmp_path_factory.mktemp("classifier")
    run(MnistCnn(workdir=str(workdir), dataset="digits", epochs=1, conv_padding="SAME", hidden_sizes=(16,),
                 parallel="single"))
    return {"classifier": str(workdir)}


def numbers(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if isinstance(v, float)}


def config_of(name, workdir, classifier, **overrides):
    path, class_name, settings, _, _ = PROGRAMS_UNDER_TEST[name]
    extra = classifier if name == "dcgan" else {}
    return getattr(program_module(path), class_name)(workdir=str(workdir), **{**settings, **extra, **overrides})


@pytest.mark.parametrize("name", sorted(PROGRAMS_UNDER_TEST))
def test_single_pmap_and_mesh_give_the_same_numbers(tmp_path, name, classifier):
    metric, split = PROGRAMS_UNDER_TEST[name][3:]
    results, curves = {}, {}
    for parallel in ("single", "pmap", "mesh"):
        results[parallel] = run(config_of(name, tmp_path / parallel, classifier, parallel=parallel))
        curves[parallel] = np.array([r[metric] for r in read_metrics(tmp_path / parallel)])
    assert results["single"]["devices"] == 1 and results["mesh"]["devices"] == 8
    assert len(curves["single"]) >= 4 and np.all(np.isfinite(curves["single"]))
    for parallel in ("pmap", "mesh"):
        np.testing.assert_allclose(curves[parallel], curves["single"], rtol=2e-5, err_msg=parallel)
        assert numbers(results[parallel][split]) == pytest.approx(numbers(results["single"][split]), rel=1e-5)


@pytest.mark.parametrize("name", ["dcgan", "dqn"])  # DQN's state holds the most: environments and a replay buffer
def test_sigkill_and_rerun_is_bitwise_identical(tmp_path, name, classifier):
    path, _, settings, _, _ = PROGRAMS_UNDER_TEST[name]
    flags = {**settings, **(classifier if name == "dcgan" else {}), "train_steps": settings["train_steps"] * 4,
             "checkpoint_every_steps": 4, "log_every_steps": 4, "parallel": "pmap", "host_devices": 2}
    args = [f"--{flag}={value}" for flag, value in flags.items() if value is not None]  # None stays the flag's default
    whole = tmp_path / "whole"
    done = run_file(path, f"--workdir={whole}", *args)
    assert done.returncode == 0, done.stderr
    killed = tmp_path / "killed"
    rng = random.Random(name)
    command = [sys.executable, str(path), f"--workdir={killed}", *args]
    assert kill_after_saving(command, killed, 8, rng) == -signal.SIGKILL
    resumed = run_file(path, f"--workdir={killed}", *args)
    assert resumed.returncode == 0, resumed.stderr
    expected, got = saved_state(whole), saved_state(killed)
    assert got.keys() == expected.keys() and "['step']" in got
    if name == "dqn":  # the environments and the replay buffer are saved and restored with the agent
        assert any("['replay']" in k for k in got) and any("['env_state']" in k for k in got)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    strip = lambda records: [{k: v for k, v in r.items() if k not in ("time", "steps_per_second")} for r in records]
    assert strip(read_metrics(killed)) == strip(read_metrics(whole))


@pytest.mark.parametrize("name", ["ppo"])  # the mechanism is the runner's; one program shows it
def test_many_seeds_in_one_program_are_the_separate_runs(tmp_path, name, classifier):
    metric, split = PROGRAMS_UNDER_TEST[name][3:]
    many = run(config_of(name, tmp_path / "many", classifier, parallel="single", seed=5, num_seeds=4))
    alone = run(config_of(name, tmp_path / "alone", classifier, parallel="single", seed=7))
    assert many["seeds"] == [5, 6, 7, 8]
    records = read_metrics(tmp_path / "many")
    assert all(len(r["seeds"]) == 4 and f"{metric}_std" in r for r in records)
    seed_7 = [next(s for s in r["seeds"] if s["seed"] == 7)[metric] for r in records]
    np.testing.assert_allclose(seed_7, [r[metric] for r in read_metrics(tmp_path / "alone")], rtol=1e-5)
    per_seed = [s for s in many[split]["seeds"]]
    assert [s["seed"] for s in per_seed] == [5, 6, 7, 8]
    number = next(k for k in alone[split] if isinstance(alone[split][k], float))
    assert per_seed[2][number] == pytest.approx(alone[split][number], rel=1e-5)
    assert many[split][number] == pytest.approx(np.mean([s[number] for s in per_seed]))
    state = saved_state(tmp_path / "many")
    assert state["['step']"].tolist() == [PROGRAMS_UNDER_TEST[name][2]["train_steps"]] * 4, "every seed is saved"


def test_many_seeds_draw_each_seed_s_pictures():
    class Painter(Program):
        def pictures(self, state, final=False):
            return {"grey": np.full((2, 2, 1), state["level"], np.uint8)}

    many = ManySeeds(Painter(), seeds=(3, 4))
    assert many.draws and not ManySeeds(Program(), seeds=(3, 4)).draws
    drawn = many.pictures({"level": np.array([10, 20])})
    assert sorted(drawn) == ["grey_seed3", "grey_seed4"] and drawn["grey_seed4"][0, 0, 0] == 20
