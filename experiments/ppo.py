"""PPO (Schulman et al. 2017) on gymnax environments, rollouts and updates inside one compiled step (or on a
gymnasium environment stepped on the host: --env=gymnasium:ID).

    python -m experiments.ppo --workdir=runs/ppo                          # CartPole-v1, 500k steps
    python -m experiments.ppo --workdir=runs/ppo5 --num_seeds=5           # five seeds in one program
    python -m experiments.ppo --workdir=runs/ppo --mode=evaluate          # the trained policy, played greedily
    python -m experiments.ppo --workdir=runs/acrobot --preset=acrobot
    python -m experiments.ppo --workdir=runs/breakout --preset=breakout   # MinAtar Breakout, 10M steps
    python -m experiments.ppo --workdir=runs/gym --env=gymnasium:CartPole-v1 --parallel=single
    python -m experiments.ppo --workdir=runs/gym --mode=record             # WORKDIR/episode.gif

The defaults are CleanRL's and PureJaxRL's for the classic controls: 4 environments x 128 steps per update, 4
epochs of 4 minibatches, GAE(0.99, 0.95), clip 0.2, entropy 0.01, Adam 2.5e-4 annealed to 0.
"""

import dataclasses
from typing import Optional

from bmjax import cli, optim
from bmjax.config import field
from bmjax.errors import UsageError
from bmjax.rl import config as rl_config
from bmjax.rl.networks import ActorCritic
from bmjax.rl.ppo import PPO

PRESETS = {
    "cartpole": dict(env="CartPole-v1"),
    "acrobot": dict(env="Acrobot-v1"),
    # PureJaxRL's MinAtar settings, its frames flattened into the MLP as there.
    "breakout": dict(env="Breakout-MinAtar", num_envs=64, rollout_steps=128, env_steps=10_000_000, minibatches=8,
                     learning_rate=5e-3, activation="relu", frames="flatten", log_every_steps=20, eval_every_steps=100),
}


@dataclasses.dataclass(frozen=True)
class Ppo(rl_config.AgentConfig):
    gae_lambda: float = field(0.95, "Lambda of the generalised advantage estimates.")
    clip: float = field(0.2, "Clipping of the probability ratio (and of the value's change, with --clip_values).")
    clip_values: bool = field(True, "Clip the value function's change per update as the ratio is clipped.")
    update_epochs: int = field(4, "Passes over each rollout.")
    minibatches: int = field(4, "Minibatches each pass splits the rollout into.")
    normalize_advantages: bool = field(True, "Normalise advantages per minibatch to mean 0, deviation 1.")
    entropy_bonus: float = field(0.01, "Weight of the policy's entropy in the loss.")
    value_coef: float = field(0.5, "Weight of the value loss.")
    lr_schedule: str = "linear"
    eval_every_steps: Optional[int] = 50

    def validate(self) -> "Ppo":
        config = super().validate()
        if self.update_epochs < 1 or self.minibatches < 1 or self.rollout_steps % self.minibatches:
            raise UsageError(f"--rollout_steps={self.rollout_steps} must split into --minibatches="
                             f"{self.minibatches} (and --update_epochs must be positive)")
        if not 0 <= self.gae_lambda <= 1 or not self.clip > 0:
            raise UsageError("--gae_lambda must lie in [0, 1] and --clip be positive")
        return config

    def build_agent(self, context):
        envs = self.environments(context)
        updates = self.update_epochs * self.minibatches  # optimizer steps per train step
        learning_rate = optim.schedule(self, self.train_steps * updates)
        return PPO(envs, ActorCritic(**self.network_kwargs(envs)), optim.create(self, self.train_steps * updates),
                   self.rollout_steps, self.eval_episodes,
                   schedules={"learning_rate": lambda step: learning_rate(step * updates)},
                   axis_name=context.axis_name, discount=self.discount, entropy_bonus=self.entropy_bonus,
                   value_coef=self.value_coef, gae_lambda=self.gae_lambda, clip=self.clip,
                   clip_values=self.clip_values, epochs=self.update_epochs, minibatches=self.minibatches,
                   normalize_advantages=self.normalize_advantages)


if __name__ == "__main__":
    cli.main(Ppo, presets=PRESETS, entry=rl_config.main)
