"""PPO on CartPole-v1 as a CleanRL user writes it: PyTorch, gymnasium's SyncVectorEnv, one Python loop.

The same hyperparameters as `experiments.ppo`'s defaults: 4 environments x 128 steps, GAE(0.99, 0.95), 4 epochs of
4 minibatches, clip 0.2 (values clipped too), entropy 0.01, value weight 0.5, gradients clipped at 0.5, Adam 2.5e-4
(eps 1e-5) annealed linearly to 0, separate 64-64 tanh actor and critic with orthogonal initialisation.

    python -m benchmarks.ppo_torch --env_steps=500000 --out=FILE.json

Writes {"env_steps", "seconds", "env_steps_per_second", "reached_490_at", "return_last100"}: the time (time.time())
when the mean of the last 100 episodes first reached 490 (null if it never did).
"""

import json
import time
from collections import deque

import gymnasium as gym
import numpy as np
import torch
from absl import app, flags
from torch import nn

_ENV_STEPS = flags.DEFINE_integer("env_steps", 500_000, "Environment steps in all.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the environments and the network.")
_OUT = flags.DEFINE_string("out", None, "Where to write the figures (JSON).")

NUM_ENVS, STEPS, EPOCHS, MINIBATCHES = 4, 128, 4, 4
GAMMA, LAMBDA, CLIP, ENTROPY, VALUE_COEF, MAX_NORM, LR = 0.99, 0.95, 0.2, 0.01, 0.5, 0.5, 2.5e-4


def layer(n_in, n_out, gain=np.sqrt(2)):
    linear = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.constant_(linear.bias, 0.0)
    return linear


class Agent(nn.Module):
    def __init__(self, n_obs, n_actions):
        super().__init__()
        self.critic = nn.Sequential(layer(n_obs, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, 1, 1.0))
        self.actor = nn.Sequential(layer(n_obs, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, n_actions, 0.01))

    def value(self, x):
        return self.critic(x)[..., 0]

    def act(self, x, action=None):
        dist = torch.distributions.Categorical(logits=self.actor(x))
        action = dist.sample() if action is None else action
        return action, dist.log_prob(action), dist.entropy(), self.value(x)


def main(argv):
    del argv
    torch.manual_seed(_SEED.value)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(NUM_ENVS)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    agent = Agent(envs.single_observation_space.shape[0], envs.single_action_space.n)
    optimizer = torch.optim.Adam(agent.parameters(), lr=LR, eps=1e-5)
    updates = _ENV_STEPS.value // (NUM_ENVS * STEPS)
    obs_buf = torch.zeros((STEPS, NUM_ENVS) + envs.single_observation_space.shape)
    actions, log_probs, rewards, values, next_values = (torch.zeros((STEPS, NUM_ENVS)) for _ in range(5))
    terminated_buf, done_buf = torch.zeros((STEPS, NUM_ENVS)), torch.zeros((STEPS, NUM_ENVS))
    recent, reached_490_at = deque(maxlen=100), None
    obs, _ = envs.reset(seed=_SEED.value)
    obs = torch.tensor(obs, dtype=torch.float32)
    episode_return = np.zeros(NUM_ENVS)
    began = time.time()
    for update in range(updates):
        optimizer.param_groups[0]["lr"] = LR * (1.0 - update / updates)
        for t in range(STEPS):
            obs_buf[t] = obs
            with torch.no_grad():
                action, log_prob, _, value = agent.act(obs)
            next_obs, reward, terminated, truncated, info = envs.step(action.numpy())
            done = terminated | truncated
            reached = next_obs.copy()
            if done.any():  # same-step autoreset: the observation reached is in info
                for i in np.flatnonzero(done):
                    reached[i] = info["final_obs"][i]
            with torch.no_grad():
                next_values[t] = agent.value(torch.tensor(reached, dtype=torch.float32))
            actions[t], log_probs[t], values[t], rewards[t] = action, log_prob, value, torch.tensor(reward)
            terminated_buf[t], done_buf[t] = torch.tensor(terminated), torch.tensor(done)
            episode_return += reward
            for i in np.flatnonzero(done):
                recent.append(episode_return[i])
                episode_return[i] = 0.0
            obs = torch.tensor(next_obs, dtype=torch.float32)
        if reached_490_at is None and len(recent) == 100 and np.mean(recent) >= 490:
            reached_490_at = time.time()
        with torch.no_grad():  # GAE, terminated and truncated apart
            advantages, following = torch.zeros_like(rewards), torch.zeros(NUM_ENVS)
            for t in reversed(range(STEPS)):
                delta = rewards[t] + GAMMA * next_values[t] * (1 - terminated_buf[t]) - values[t]
                following = delta + GAMMA * LAMBDA * (1 - done_buf[t]) * following
                advantages[t] = following
            returns = advantages + values
        flat = lambda x: x.reshape((-1,) + x.shape[2:])
        b_obs, b_actions, b_log_probs = flat(obs_buf), flat(actions), flat(log_probs)
        b_adv, b_returns, b_values = flat(advantages), flat(returns), flat(values)
        size = NUM_ENVS * STEPS
        for _ in range(EPOCHS):
            order = np.random.permutation(size)
            for start in range(0, size, size // MINIBATCHES):
                mb = order[start:start + size // MINIBATCHES]
                _, new_log_prob, entropy, new_value = agent.act(b_obs[mb], b_actions[mb].long())
                ratio = (new_log_prob - b_log_probs[mb]).exp()
                adv = (b_adv[mb] - b_adv[mb].mean()) / (b_adv[mb].std() + 1e-8)
                policy_loss = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - CLIP, 1 + CLIP)).mean()
                clipped = b_values[mb] + torch.clamp(new_value - b_values[mb], -CLIP, CLIP)
                value_loss = 0.5 * torch.max((new_value - b_returns[mb]) ** 2, (clipped - b_returns[mb]) ** 2).mean()
                loss = policy_loss - ENTROPY * entropy.mean() + VALUE_COEF * value_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), MAX_NORM)
                optimizer.step()
    seconds = time.time() - began
    figures = {"env_steps": updates * NUM_ENVS * STEPS, "seconds": seconds,
               "env_steps_per_second": updates * NUM_ENVS * STEPS / seconds, "reached_490_at": reached_490_at,
               "return_last100": float(np.mean(recent)), "torch_threads": torch.get_num_threads()}
    print(json.dumps(figures))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    app.run(main)
