"""The flags every agent experiment shares, and `--mode=evaluate`: the trained policy played, greedily."""

import dataclasses
import json
import os

import jax
import numpy as np

import bmjax

from bmjax import console
from bmjax.config import Config, field
from bmjax.errors import UsageError
from bmjax.rl.envs import Environments
from bmjax.runs import read_run
from bmjax.train.checkpoint import read_saved
from bmjax.train.program import Context, Plan


@dataclasses.dataclass(frozen=True)
class AgentConfig(Config):
    env: str = field("CartPole-v1", "A gymnax environment with discrete actions: CartPole-v1, Acrobot-v1, "
                                    "MountainCar-v0, Breakout-MinAtar, SpaceInvaders-MinAtar, Asterix-MinAtar, "
                                    "Freeway-MinAtar, ...")
    num_envs: int = field(4, "Environments stepped in parallel (split over the devices).")
    rollout_steps: int = field(128, "Steps of every environment per update (train step).")
    env_steps: int = field(500_000, "Environment steps of the whole run, over all environments: --train_steps is "
                                    "this over num_envs * rollout_steps, unless given.")
    discount: float = field(0.99, "Discount of future rewards.")
    eval_episodes: int = field(16, "Episodes the greedy policy plays at each evaluation and in --mode=evaluate.",
                               trains=False)
    mode: str = field("train", "Train, or play the trained policy of --workdir greedily for --eval_episodes "
                               "episodes and report the returns.", ("train", "evaluate"), trains=False)
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    learning_rate: float = 2.5e-4
    optimizer_eps: float = 1e-5
    clip_grad_norm: float = 0.5
    log_every_steps: int = 10

    def validate(self) -> "AgentConfig":
        if self.train_steps is None and self.workdir:
            updates = self.env_steps // (self.num_envs * self.rollout_steps)
            if updates < 1:
                raise UsageError(f"--env_steps={self.env_steps} is less than one update of --num_envs * "
                                 f"--rollout_steps = {self.num_envs * self.rollout_steps} steps; raise it")
            return self.replace(train_steps=updates).validate()
        super().validate()
        for name in ("num_envs", "rollout_steps", "env_steps", "eval_episodes"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.discount <= 1:
            raise UsageError(f"--discount must lie in [0, 1], got {self.discount}")
        if self.activation not in ("tanh", "relu"):
            raise UsageError(f"--activation={self.activation}: an agent's networks take tanh or relu")
        return self

    def environments(self) -> Environments:
        return Environments(self.env, self.num_envs)

    def network_kwargs(self, envs: Environments) -> dict:
        return dict(num_actions=envs.num_actions, hidden_sizes=self.hidden_sizes, activation=self.activation,
                    frames=len(envs.observation_shape) == 3)

    def build_agent(self, context: Context):
        """The experiment's agent program."""
        raise NotImplementedError

    def build_program(self, context: Context) -> Plan:
        return Plan(self.build_agent(context))


def main(config: AgentConfig, command: str):
    """An agent experiment's entry point: train (bmjax.run), or --mode=evaluate."""
    if config.mode == "evaluate":
        return evaluate(config, command)
    return bmjax.run(config, command)


def evaluate(config: AgentConfig, command: str = "") -> dict:
    """Plays the newest checkpoint's policy in --workdir greedily for --eval_episodes episodes (each seed's, for a
    many-seed run); writes and returns {"episode_return", its spread, min and max, the returns}."""
    run, _, record = read_run(config.workdir)
    if not isinstance(run, AgentConfig):
        raise UsageError(f"--workdir={config.workdir} holds a run of {record['config_class']}, not an agent")
    saved, step = read_saved(config.workdir, ("agent",), flag="--workdir")
    program = run.build_agent(Context(config.workdir, None, 1, True))
    play = jax.jit(lambda params, key: program.envs.play(lambda obs: program.greedy_actions(params, obs), key,
                                                           config.eval_episodes))
    key = jax.random.PRNGKey(config.seed)
    params = saved["agent"]["params"]
    seeds = record["seeds"]
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
