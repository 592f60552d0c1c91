"""DQN (Mnih et al. 2015) with a target network, double Q-learning and n-step returns, its replay buffer in
device memory, on gymnax environments.

    python -m experiments.dqn --workdir=runs/dqn                          # CartPole-v1, 500k steps
    python -m experiments.dqn --workdir=runs/dqn5 --num_seeds=5
    python -m experiments.dqn --workdir=runs/dqn --mode=evaluate
    python -m experiments.dqn --workdir=runs/dqn_acrobot --preset=acrobot

The defaults are CleanRL's for CartPole, with 8 environments each stepped once per update (CleanRL trains every
10 steps of one): a 120-84 ReLU network, a buffer of 10,000 transitions, batch 128, Adam 2.5e-4, epsilon from 1
to 0.05 over half the run, learning from 10,000 steps on, the target network refreshed every 500 steps.
"""

import dataclasses
from typing import Optional

import optax

from bmjax import cli, optim
from bmjax.config import field
from bmjax.errors import UsageError
from bmjax.rl import config as rl_config
from bmjax.rl.dqn import DQN
from bmjax.rl.networks import QNetwork

PRESETS = {
    "cartpole": dict(env="CartPole-v1"),
    "acrobot": dict(env="Acrobot-v1"),
}


@dataclasses.dataclass(frozen=True)
class Dqn(rl_config.AgentConfig):
    buffer_size: int = field(10_000, "Transitions the replay buffer holds, over all environments.")
    learning_starts: int = field(10_000, "Environment steps (all environments) before the first update.")
    target_every: int = field(500, "Environment steps (all environments) between refreshes of the target network.")
    epsilon_start: float = field(1.0, "The exploration rate at the start.")
    epsilon_end: float = field(0.05, "The exploration rate at the end of its decay.")
    exploration_fraction: float = field(0.5, "Share of the run over which epsilon decays linearly.")
    double: bool = field(False, "Double Q-learning: the online network picks the bootstrap's action.")
    n_step: int = field(1, "Steps of each return before it bootstraps.")
    huber: bool = field(False, "Huber loss of the TD error instead of the squared error.")
    batch_size: int = 128
    num_envs: int = 8
    rollout_steps: int = 1
    hidden_sizes: tuple[int, ...] = (120, 84)
    activation: str = "relu"
    clip_grad_norm: Optional[float] = None
    optimizer_eps: float = 1e-8
    log_every_steps: int = 1000
    eval_every_steps: Optional[int] = 2500

    def validate(self) -> "Dqn":
        config = super().validate()
        if self.batch_size % self.num_envs or self.buffer_size % self.num_envs:
            raise UsageError(f"--batch_size={self.batch_size} and --buffer_size={self.buffer_size} must split evenly "
                             f"over --num_envs={self.num_envs} (each environment keeps and samples its own share)")
        if not 0 <= self.epsilon_end <= self.epsilon_start <= 1 or not 0 < self.exploration_fraction <= 1:
            raise UsageError("need 0 <= --epsilon_end <= --epsilon_start <= 1 and --exploration_fraction in (0, 1]")
        if not self.n_step >= 1 or self.learning_starts < self.n_step * self.num_envs:
            raise UsageError(f"--n_step must be positive and --learning_starts at least --n_step * --num_envs = "
                             f"{self.n_step * self.num_envs}, got {self.n_step} and {self.learning_starts}")
        if self.buffer_size < self.learning_starts:
            raise UsageError(f"--buffer_size={self.buffer_size} holds fewer than the --learning_starts="
                             f"{self.learning_starts} steps before the first update; raise it")
        return config

    def build_agent(self, context):
        envs = self.environments(context)
        per_update = self.num_envs * self.rollout_steps
        epsilon = optax.linear_schedule(self.epsilon_start, self.epsilon_end,
                                        max(1, int(self.exploration_fraction * self.train_steps)))
        return DQN(envs, QNetwork(**self.network_kwargs(envs)), optim.create(self, self.train_steps),
                   self.rollout_steps, self.eval_episodes, schedules={"epsilon": epsilon},
                   axis_name=context.axis_name, epsilon=epsilon, discount=self.discount,
                   capacity=self.buffer_size // self.num_envs, batch_size=self.batch_size,
                   learning_starts=-(-self.learning_starts // self.num_envs),
                   target_every=max(1, self.target_every // per_update), double=self.double, n_step=self.n_step,
                   huber=self.huber)


if __name__ == "__main__":
    cli.main(Dqn, presets=PRESETS, entry=rl_config.main)
