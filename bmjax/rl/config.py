"""The flags every agent experiment shares, and `--mode=evaluate`: the trained policy played, greedily."""

import dataclasses
import json
import os
from typing import Optional

import jax
import numpy as np

import bmjax

from bmjax import console
from bmjax.config import Config, field
from bmjax.errors import UsageError
from bmjax.rl import host_envs
from bmjax.rl.envs import Environments
from bmjax.rl.networks import FRAMES
from bmjax.runs import read_run
from bmjax.train.checkpoint import read_saved
from bmjax.train.program import Context, Plan


@dataclasses.dataclass(frozen=True)
class AgentConfig(Config):
    env: str = field("CartPole-v1", "A gymnax environment with discrete actions (CartPole-v1, Acrobot-v1, "
                                    "MountainCar-v0, Breakout-MinAtar, SpaceInvaders-MinAtar, Asterix-MinAtar, "
                                    "Freeway-MinAtar, ...), or gymnasium:ID for a gymnasium one stepped on the host.")
    num_envs: int = field(4, "Environments stepped in parallel (split over the devices).")
    rollout_steps: int = field(128, "Steps of every environment per update (train step).")
    env_steps: int = field(500_000, "Environment steps of the whole run, over all environments: --train_steps is "
                                    "this over num_envs * rollout_steps, unless given.")
    discount: float = field(0.99, "Discount of future rewards.")
    frames: str = field("cnn", "How the networks read frames: a 3x3 convolution first (cnn, for MinAtar's), the "
                               "DQN paper's three convolutions (nature, for Atari's), or flattened into the dense "
                               "layers (flatten).", FRAMES)
    eval_episodes: int = field(16, "Episodes the greedy policy plays at each evaluation and in --mode=evaluate.",
                               trains=False)
    eval_max_steps: Optional[int] = field(None, "The most steps an episode of the greedy policy lasts in evaluations "
                                                "and recordings (default: the environment's time limit).",
                                          trains=False)
    mode: str = field("train", "Train; or play the trained policy of --workdir greedily: for --eval_episodes "
                               "episodes, reporting the returns (evaluate), or one episode of a gymnasium "
                               "environment, drawn into WORKDIR/episode.gif (record).",
                      ("train", "evaluate", "record"), trains=False)
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    learning_rate: float = 2.5e-4
    optimizer_eps: float = 1e-5
    clip_grad_norm: float = 0.5
    log_every_steps: int = 10

    def validate(self) -> "AgentConfig":
        for name in ("num_envs", "rollout_steps", "env_steps", "eval_episodes") + (
                ("eval_max_steps",) if self.eval_max_steps is not None else ()):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.train_steps is None and self.workdir:
            updates = self.env_steps // (self.num_envs * self.rollout_steps)
            if updates < 1:
                raise UsageError(f"--env_steps={self.env_steps} is less than one update of --num_envs * "
                                 f"--rollout_steps = {self.num_envs * self.rollout_steps} steps; raise it")
            return self.replace(train_steps=updates).validate()
        super().validate()
        if not 0 <= self.discount <= 1:
            raise UsageError(f"--discount must lie in [0, 1], got {self.discount}")
        if self.env.startswith(host_envs.PREFIX) and self.num_seeds > 1:
            raise UsageError(f"--env={self.env} steps on the host, one seed at a time: leave --num_seeds out (run "
                             "one process per seed)")
        if self.activation not in ("tanh", "relu"):
            raise UsageError(f"--activation={self.activation}: an agent's networks take tanh or relu")
        return self

    def environments(self, context: Context):
        """gymnax's `Environments`, or gymnasium's `HostEnvironments` for --env=gymnasium:ID."""
        if not self.env.startswith(host_envs.PREFIX):
            envs = Environments(self.env, self.num_envs)
        elif context.num_shards > 1 or jax.process_count() > 1:
            raise UsageError(f"--env={self.env} steps on this process's host, for one device: add --parallel=single")
        else:
            envs = host_envs.HostEnvironments(self.env, self.num_envs)
        envs.max_episode_steps = min(envs.max_episode_steps, self.eval_max_steps or envs.max_episode_steps)
        return envs

    def network_kwargs(self, envs: Environments) -> dict:
        return dict(num_actions=envs.num_actions, hidden_sizes=self.hidden_sizes, activation=self.activation,
                    frames=self.frames if len(envs.observation_shape) == 3 else None)

    def build_agent(self, context: Context):
        """The experiment's agent program."""
        raise NotImplementedError

    def build_program(self, context: Context) -> Plan:
        return Plan(self.build_agent(context))


def main(config: AgentConfig, command: str):
    """An agent experiment's entry point: train (bmjax.run), or --mode=evaluate."""
    if config.mode == "evaluate":
        return evaluate(config, command)
    if config.mode == "record":
        return record(config)
    return bmjax.run(config, command)


def load_agent(workdir: str):
    """(the run's config, its agent program, the newest checkpoint's parameters, its step, the seeds) of the agent
    run in `workdir`; a many-seed run's parameters have a leading seed axis."""
    run, _, record = read_run(workdir)
    if not isinstance(run, AgentConfig):
        raise UsageError(f"--workdir={workdir} holds a run of {record['config_class']}, not an agent")
    saved, step = read_saved(workdir, ("agent",), flag="--workdir")
    program = run.build_agent(Context(workdir, None, 1, True))
    return run, program, saved["agent"]["params"], step, record["seeds"]


def evaluate(config: AgentConfig, command: str = "") -> dict:
    """Plays the newest checkpoint's policy in --workdir greedily for --eval_episodes episodes (each seed's, for a
    many-seed run); writes WORKDIR/evaluation.json and returns {"episode_return", its spread, min and max, each
    seed's mean}."""
    run, program, params, step, seeds = load_agent(config.workdir)
    play = jax.jit(lambda params, key: program.envs.play(lambda obs: program.greedy_actions(params, obs), key,
                                                           config.eval_episodes))
    key = jax.random.PRNGKey(config.seed)
    each = [play(jax.tree.map(lambda x: x[i], params) if len(seeds) > 1 else params, key) for i in range(len(seeds))]
    returns = np.asarray(each, np.float64)
    report = {"env": run.env, "step": step, "env_steps": step * program.env_steps_per_update,
              "episodes": config.eval_episodes, "episode_return": float(returns.mean()),
              "episode_return_spread": float(returns.std()), "min": float(returns.min()), "max": float(returns.max()),
              "seeds": [{"seed": s, "episode_return": float(r.mean())} for s, r in zip(seeds, returns)]}
    out = os.path.join(config.workdir, "evaluation.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    console.say(f"{run.env}, step {step}: greedy return {report['episode_return']:.2f} ± "
                f"{report['episode_return_spread']:.2f} over {config.eval_episodes} episodes"
                + (f" of each of {len(seeds)} seeds" if len(seeds) > 1 else "") + f" (min {report['min']:.1f}, "
                f"max {report['max']:.1f}); wrote {out}")
    return report


def record(config: AgentConfig) -> str:
    """One greedy episode of the newest checkpoint's policy (the first seed's) on a gymnasium environment that
    draws frames, as an animated GIF in WORKDIR/episode.gif; returns its path."""
    run, program, params, step, seeds = load_agent(config.workdir)
    if not run.env.startswith(host_envs.PREFIX):
        raise UsageError(f"--mode=record draws a gymnasium environment's frames, and {run.env} is gymnax's, which "
                         f"draws none; train on --env={host_envs.PREFIX}ID to record")
    import gymnasium as gym
    from PIL import Image

    for device in ("SDL_AUDIODRIVER", "SDL_VIDEODRIVER"):  # pygame draws off screen: no sound card, no display
        os.environ.setdefault(device, "dummy")
    if len(seeds) > 1:
        params = jax.tree.map(lambda x: x[0], params)
    try:
        env = host_envs.make_vector(run.env.removeprefix(host_envs.PREFIX), 1, render_mode="rgb_array")
        obs, _ = env.reset(seed=config.seed)
        frames = [env.render()[0]]
    except gym.error.DependencyNotInstalled as e:
        raise UsageError(f"{run.env} cannot draw its frames: {e}") from None
    greedy = jax.jit(program.greedy_actions)
    total, done = 0.0, False
    while not done and len(frames) <= program.envs.max_episode_steps:
        obs, reward, terminated, truncated, _ = env.step(np.asarray(greedy(params, program.envs.read(obs))))
        total, done = total + float(reward[0]), bool(terminated[0] or truncated[0])
        if not done:  # the environment has already started its next episode
            frames.append(env.render()[0])
    env.close()
    out = os.path.join(config.workdir, "episode.gif")
    fps = env.metadata.get("render_fps") or 30
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(out, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    console.say(f"{run.env}, step {step}: one greedy episode, return {total:g} in {len(frames)} steps; wrote {out}")
    return out
