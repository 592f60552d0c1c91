"""A2C, the synchronous form of A3C (Mnih et al. 2016): many environments, n-step returns, one gradient step per
rollout. Under pmap or mesh the environments split over the devices and their gradients are averaged, which is
what A3C's asynchronous workers approximate.

    python -m experiments.a2c --workdir=runs/a2c                          # CartPole-v1, 500k steps
    python -m experiments.a2c --workdir=runs/a2c5 --num_seeds=5
    python -m experiments.a2c --workdir=runs/a2c --mode=evaluate
    python -m experiments.a2c --workdir=runs/a2c_acrobot --preset=acrobot

The defaults are Stable-Baselines3's (RL Zoo's for CartPole): 8 environments x 5 steps, RMSprop 7e-4 (decay
0.99, eps 1e-5), value weight 0.5, gradients clipped at norm 0.5, no entropy bonus.
"""

import dataclasses
from typing import Optional

from bmjax import cli, optim
from bmjax.config import field
from bmjax.rl import config as rl_config
from bmjax.rl.networks import ActorCritic
from bmjax.rl.ppo import A2C

PRESETS = {
    "cartpole": dict(env="CartPole-v1"),
    "acrobot": dict(env="Acrobot-v1", num_envs=16, entropy_bonus=0.01),
}


@dataclasses.dataclass(frozen=True)
class A2c(rl_config.AgentConfig):
    entropy_bonus: float = field(0.0, "Weight of the policy's entropy in the loss.")
    value_coef: float = field(0.5, "Weight of the value loss.")
    num_envs: int = 8
    rollout_steps: int = 5
    optimizer: str = "rmsprop"
    learning_rate: float = 7e-4
    b2: float = 0.99
    log_every_steps: int = 200
    eval_every_steps: Optional[int] = 1000

    def build_agent(self, context):
        envs = self.environments(context)
        learning_rate = optim.schedule(self, self.train_steps)
        return A2C(envs, ActorCritic(**self.network_kwargs(envs)), optim.create(self, self.train_steps),
                   self.rollout_steps, self.eval_episodes, schedules={"learning_rate": learning_rate},
                   axis_name=context.axis_name, discount=self.discount, entropy_bonus=self.entropy_bonus,
                   value_coef=self.value_coef)


if __name__ == "__main__":
    cli.main(A2c, presets=PRESETS, entry=rl_config.main)
