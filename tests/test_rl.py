"""Reinforcement learning: returns and advantages against plain Python, terminated versus truncated episodes, the
replay buffer, the environments' transitions, each agent learning CartPole, and --mode=evaluate.

The agents on the one runner (the same numbers under single, pmap and mesh, SIGKILL and resume, many seeds) are
tested in test_programs.py."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_metrics, run_module

from bmjax.errors import UsageError
from bmjax.rl import replay
from bmjax.rl.returns import gae, n_step_returns
from bmjax.train.loop import run



def random_rollout(rng, steps=12, envs=3):
    terminated = rng.random((steps, envs)) < 0.15
    truncated = ~terminated & (rng.random((steps, envs)) < 0.15)
    return dict(rewards=rng.normal(size=(steps, envs)), values=rng.normal(size=(steps, envs)),
                next_values=rng.normal(size=(steps, envs)), terminated=terminated, done=terminated | truncated)


def python_gae(r, v, next_v, terminated, done, discount, lambda_):
    advantages = np.zeros_like(r)
    for e in range(r.shape[1]):
        following = 0.0
        for t in reversed(range(r.shape[0])):
            delta = r[t, e] + discount * (0.0 if terminated[t, e] else next_v[t, e]) - v[t, e]
            following = delta + (0.0 if done[t, e] else discount * lambda_ * following)
            advantages[t, e] = following
    return advantages


def python_returns(r, next_v, terminated, done, discount):
    returns = np.zeros_like(r)
    for e in range(r.shape[1]):
        following = next_v[-1, e]
        for t in reversed(range(r.shape[0])):
            future = 0.0 if terminated[t, e] else next_v[t, e] if done[t, e] else following
            following = returns[t, e] = r[t, e] + discount * future
    return returns


def test_gae_matches_a_plain_python_computation():
    x = random_rollout(np.random.default_rng(0))
    got = gae(*(jnp.asarray(x[k]) for k in ("rewards", "values", "next_values", "terminated", "done")), 0.99, 0.95)
    want = python_gae(x["rewards"], x["values"], x["next_values"], x["terminated"], x["done"], 0.99, 0.95)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_n_step_returns_match_plain_python_and_gae_with_lambda_one():
    x = random_rollout(np.random.default_rng(1))
    got = n_step_returns(*(jnp.asarray(x[k]) for k in ("rewards", "next_values", "terminated", "done")), 0.9)
    np.testing.assert_allclose(got, python_returns(x["rewards"], x["next_values"], x["terminated"], x["done"], 0.9),
                               rtol=1e-5, atol=1e-5)
    # Where the next step continues the episode, its value is the one the step bootstraps from.
    x["values"][1:] = np.where(x["done"][:-1], x["values"][1:], x["next_values"][:-1])
    advantages = gae(*(jnp.asarray(x[k]) for k in ("rewards", "values", "next_values", "terminated", "done")), 0.9, 1.0)
    np.testing.assert_allclose(advantages + x["values"], got, rtol=1e-5, atol=1e-5)


def test_a_terminated_episode_bootstraps_from_nothing_a_truncated_one_from_the_reached_state():
    rewards, next_values = jnp.ones((2, 1)), jnp.array([[10.0], [20.0]])
    ends = lambda terminated, truncated: (jnp.array([[terminated], [False]]),
                                          jnp.array([[terminated or truncated], [False]]))
    terminated = n_step_returns(rewards, next_values, *ends(True, False), 0.5)
    truncated = n_step_returns(rewards, next_values, *ends(False, True), 0.5)
    running = n_step_returns(rewards, next_values, *ends(False, False), 0.5)
    assert terminated[:, 0].tolist() == [1.0, 11.0]  # the second step starts a new episode, cut at the rollout
    assert truncated[:, 0].tolist() == [1.0 + 0.5 * 10.0, 11.0]
    assert running[:, 0].tolist() == [1.0 + 0.5 * 11.0, 11.0]
    values = jnp.zeros((2, 1))
    assert gae(rewards, values, next_values, *ends(True, False), 0.5, 0.9)[0, 0] == 1.0
    assert gae(rewards, values, next_values, *ends(False, True), 0.5, 0.9)[0, 0] == 6.0


def test_the_replay_buffer_keeps_each_environment_s_latest_steps_and_samples_consecutive_ones():
    buffer = replay.empty({"index": jnp.int32(0), "obs": jnp.zeros(2)}, num_envs=2, capacity=5)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    written = 0
    for _ in range(3):  # 9 steps of 2 environments into rooms of 5: the ring wraps
        steps = jnp.arange(written, written + 3)
        index = jnp.stack([steps, 100 + steps], axis=1)  # [T, envs]: environment 1's numbers are 100 more
        buffer = replay.add(buffer, {"index": index, "obs": jnp.zeros((3, 2, 2))}, jnp.int32(written))
        written += 3
        if written == 3:  # before the ring filled: the steps written only
            early = replay.sample(buffer, keys, jnp.int32(written), count=50, length=1)
            assert set(early["index"][0, :, 0].tolist()) == {0, 1, 2}
    assert sorted(buffer["index"][0].tolist()) == [4, 5, 6, 7, 8]
    sample = replay.sample(buffer, keys, jnp.int32(written), count=200, length=3)
    assert sample["index"].shape == (2, 200, 3) and sample["obs"].shape == (2, 200, 3, 2)
    firsts = sample["index"][..., 0]
    assert set(firsts[0].tolist()) == {4, 5, 6} and set(firsts[1].tolist()) == {104, 105, 106}
    np.testing.assert_array_equal(np.diff(sample["index"], axis=-1), 1)  # in time order, never across the head


def test_environments_report_the_reached_observation_apart_from_the_reset_one():
    from bmjax.rl.envs import Environments

    envs = Environments("CartPole-v1", num_envs=2)
    rollout = envs.reset(jax.random.PRNGKey(0))
    push_right = lambda obs, keys: (jnp.ones(2, jnp.int32), {})
    rollout, t = jax.jit(lambda r: envs.run(r, push_right, 40))(rollout)
    done = np.asarray(t["done"][:, 0])
    assert done.any() and not np.asarray(t["truncated"]).any(), "always pushing right topples the pole"
    first = int(np.argmax(done))
    reached, after = np.asarray(t["next_obs"][first, 0]), np.asarray(t["obs"][first + 1, 0])
    assert abs(reached[2]) > 0.2 and abs(after[2]) < 0.06, "the pole fell past 12 degrees; the reset one stands"
    assert t["finished_return"][first, 0] == first + 1 and t["finished_length"][first, 0] == first + 1
    recent = np.asarray(rollout.recent_returns[0])
    assert recent[0] > 0 and np.isnan(recent[-1]) and envs.recent == 50


AGENTS = {  # (experiment, a short run that learns CartPole well beyond random play's 22 steps an episode)
    "ppo": ("experiments.ppo", "Ppo", dict(env_steps=40_960)),
    "a2c": ("experiments.a2c", "A2c", dict(env_steps=60_000, log_every_steps=100, eval_every_steps=500)),
    "dqn": ("experiments.dqn", "Dqn", dict(env_steps=30_000, learning_starts=1000, buffer_size=4000,
                                           target_every=400, exploration_fraction=0.3, log_every_steps=500)),
}


def agent_config(name, workdir, **overrides):
    import importlib

    module, class_name, settings = AGENTS[name]
    return getattr(importlib.import_module(module), class_name)(
        workdir=str(workdir), **{"parallel": "single", **settings, **overrides})


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_each_agent_learns_cartpole_and_its_policy_plays_greedily(tmp_path, name):
    from bmjax.rl.config import evaluate

    config = agent_config(name, tmp_path)
    result = run(config)
    returns = [r["episode_return"] for r in read_metrics(tmp_path, "train")]
    assert max(returns[-2:]) > 100 and returns[0] < 60, returns  # random play lasts 22 steps
    assert result["evaluation"]["episode_return"] > 100 and result["env_steps"] <= AGENTS[name][2]["env_steps"]
    assert result["program"] == name.upper() and "dataset" not in result
    evaluations = read_metrics(tmp_path, "evaluation")
    assert evaluations[-1]["return_last100"] > 60 and evaluations[-1]["env_steps"] == result["env_steps"]

    report = evaluate(config.replace(mode="evaluate", eval_episodes=4, seed=3))  # other environments than training's
    assert json.loads((tmp_path / "evaluation.json").read_text()) == report
    assert report["episodes"] == 4 and report["env_steps"] == result["env_steps"] and report["seeds"][0]["seed"] == 0
    assert 0 < report["min"] <= report["episode_return"] <= report["max"] <= 500


def test_bad_agent_input_is_one_line(tmp_path):
    from test_errors import assert_usage_error

    assert_usage_error(run_module("experiments.ppo", f"--workdir={tmp_path / 'none'}", "--mode=evaluate"),
                       "holds no bmjax run")
    assert_usage_error(run_module("experiments.ppo", f"--workdir={tmp_path / 'zero'}", "--num_envs=0"),
                       "--num_envs must be positive, got 0")
    for env, fragment in (("Pendulum-v1", "continuous actions"), ("CartPole", "CartPole-v1, Acrobot-v1")):
        with pytest.raises(UsageError, match=fragment):
            run(agent_config("ppo", tmp_path / env, env=env))
    with pytest.raises(UsageError, match="less than one update"):
        run(agent_config("ppo", tmp_path / "short", env_steps=100))
    with pytest.raises(UsageError, match="must split evenly over --num_envs=8"):
        run(agent_config("dqn", tmp_path / "dqn", batch_size=100))
    with pytest.raises(UsageError, match="one seed at a time"):
        agent_config("ppo", tmp_path / "seeds", env="gymnasium:CartPole-v1", num_seeds=2).validate()
    with pytest.raises(UsageError, match="makes its own data and has no validation split to watch"):
        run(agent_config("ppo", tmp_path / "early", early_stopping_patience=2))


def test_a_gymnasium_environment_trains_on_the_host_and_records_an_episode(tmp_path):
    """The same agent on gymnasium's CartPole, stepped on the host from inside the compiled step; then one greedy
    episode drawn into a GIF."""
    from PIL import Image

    workdir = tmp_path / "host"
    result = run(agent_config("ppo", workdir, env="gymnasium:CartPole-v1", env_steps=20_480, eval_episodes=4,
                              eval_every_steps=20))
    returns = [r["episode_return"] for r in read_metrics(workdir, "train")]
    assert returns[-1] > 1.5 * returns[0] and result["evaluation"]["episode_return"] > 40, returns
    out = run_module("experiments.ppo", f"--workdir={workdir}", "--mode=record")
    assert out.returncode == 0, out.stderr
    assert "one greedy episode, return" in out.stdout + out.stderr
    gif = Image.open(workdir / "episode.gif")
    assert gif.size == (600, 400) and gif.n_frames > 10, "CartPole's frames, an episode longer than random play's"
    with pytest.raises(UsageError, match="--parallel=single"):
        run(agent_config("ppo", tmp_path / "mesh", env="gymnasium:CartPole-v1", parallel="mesh"))
    with pytest.raises(UsageError, match="gymnasium cannot make it"):
        run(agent_config("ppo", tmp_path / "nope", env="gymnasium:NoSuchEnv-v0"))


@pytest.mark.parametrize("frames", ["cnn", "flatten"])
def test_networks_read_minatar_frames(frames):
    from bmjax.rl.envs import Environments
    from bmjax.rl.networks import ActorCritic, QNetwork

    envs = Environments("Breakout-MinAtar", num_envs=3)
    obs = envs.reset(jax.random.PRNGKey(0)).obs
    assert obs.shape == (3, 10, 10, 4)
    actor_critic = ActorCritic(envs.num_actions, (32,), "relu", frames)
    params = actor_critic.init(jax.random.PRNGKey(1), obs)
    logits, value = actor_critic.apply(params, obs)
    assert logits.shape == (3, envs.num_actions) and value.shape == (3,)
    assert ("Conv_0" in params["params"]["actor"]) == (frames == "cnn")
    q = QNetwork(envs.num_actions, (32,), frames=frames)
    assert q.apply(q.init(jax.random.PRNGKey(2), obs), obs).shape == (3, envs.num_actions)


def test_atari_games_step_on_the_host_through_dqn_s_preprocessing(tmp_path):
    """ale-py's Breakout as DQN's paper read it (84x84 grey frames, 4 stacked, 4 frames a step) through the
    Nature network, for a few updates."""
    pytest.importorskip("ale_py", reason="Atari needs ale-py and OpenCV: pip install -e '.[atari]'")
    result = run(agent_config("ppo", tmp_path, env="gymnasium:ALE/Breakout-v5", frames="nature", hidden_sizes=(64,),
                              activation="relu", num_envs=1, rollout_steps=8, minibatches=2, train_steps=2,
                              log_every_steps=1, eval_episodes=1, eval_max_steps=20))
    assert result["steps"] == 2 and result["env_steps"] == 16 and result["evaluation"]["episode_return"] >= 0
    conv = saved_params(tmp_path)["actor"]
    assert [conv[f"Conv_{i}"]["kernel"].shape for i in range(3)] == [(8, 8, 4, 32), (4, 4, 32, 64), (3, 3, 64, 64)]


def saved_params(workdir) -> dict:
    from bmjax.train.checkpoint import read_saved

    return read_saved(str(workdir), ("agent",))[0]["agent"]["params"]
