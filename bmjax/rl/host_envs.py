"""Gymnasium environments (`--env=gymnasium:ID`: any registered id, a user's own included) stepped on the host
from inside the compiled step, so the same agents train on them.

`HostEnvironments` has `Environments`' interface: each step asks the host for the environments' observations,
the policy picks actions on the device, and the host steps a gymnasium vector environment (same-step autoreset:
the observation an episode reached is kept apart from the reset one) through `jax.experimental.io_callback`.
The environments live in this process, not in the agent's state: a resumed run starts fresh episodes, one
process on one device runs them (`--parallel=single`, one seed), and `--mode=record` draws their frames.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import io_callback

from bmjax.errors import UsageError
from bmjax.rl.envs import RECENT_EPISODES, Rollout, advance, split

PREFIX = "gymnasium:"
ATARI = "ALE/"  # ale-py's games, preprocessed as DQN's paper did
ATARI_EPISODE_STEPS = 27_000  # ale-py's cap of 108,000 frames, in steps of 4 frames


def make_vector(env_id: str, num_envs: int, **make_kwargs):
    """A gymnasium vector environment (same-step autoreset); Atari games through DQN's preprocessing: 30 no-ops
    at the start, 4 frames a step, 84x84 grey frames, the last 4 stacked."""
    import gymnasium as gym

    kwargs = dict(make_kwargs)
    if env_id.startswith(ATARI):
        try:
            import ale_py
        except ImportError:
            raise UsageError(f"--env={PREFIX}{env_id} needs ale-py and OpenCV: pip install -e '.[atari]'") from None
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

        gym.register_envs(ale_py)
        kwargs.update(frameskip=1, wrappers=[lambda env: AtariPreprocessing(env, noop_max=30, frame_skip=4),
                                             lambda env: FrameStackObservation(env, 4)])
    try:
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                            vector_kwargs=dict(autoreset_mode=gym.vector.AutoresetMode.SAME_STEP), **kwargs)
    except gym.error.DependencyNotInstalled as e:
        raise UsageError(f"--env={PREFIX}{env_id} needs more: {e}") from None
    except gym.error.Error as e:
        raise UsageError(f"--env={PREFIX}{env_id}: gymnasium cannot make it ({e}); register your environment "
                         "with gymnasium.register before the run, or give a registered id such as CartPole-v1") from None
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        raise UsageError(f"--env={PREFIX}{env_id} has actions {envs.single_action_space}, and these agents choose "
                         "among discrete ones")
    return envs


class HostEnvironments:
    def __init__(self, name: str, num_envs: int):
        self.name, self.env_id, self.num_envs = name, name.removeprefix(PREFIX), num_envs
        self.envs = make_vector(self.env_id, num_envs)
        self.num_actions = int(self.envs.single_action_space.n)
        self.stacked = self.env_id.startswith(ATARI)  # frames [4, 84, 84], read as [84, 84, 4] in [0, 1]
        shape = tuple(self.envs.single_observation_space.shape)
        self.observation_shape = shape[1:] + shape[:1] if self.stacked else shape
        steps = self.envs.spec.max_episode_steps if self.envs.spec is not None else None
        steps = steps or (ATARI_EPISODE_STEPS if self.stacked else None)
        if not steps:
            raise UsageError(f"--env={name} has no time limit, which evaluation's episodes need; register it with "
                             "max_episode_steps")
        self.max_episode_steps = int(steps)
        self.recent = -(-RECENT_EPISODES // num_envs)
        self.players = {}  # evaluation's environments, by number
        self._obs = None

    def _spec(self, *shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct(shape, dtype)

    def read(self, obs):
        """Observations as the networks read them."""
        if self.stacked:
            return np.moveaxis(obs, 1, -1).astype(np.float32) / 255.0
        return obs.astype(np.float32)

    def reset(self, key) -> Rollout:
        obs, _ = self.envs.reset(seed=int(jax.random.randint(key, (), 0, 2 ** 31 - 1)))
        self._obs = self.read(obs)
        n = self.num_envs
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
        return Rollout(env_state=jnp.zeros(n), obs=jnp.asarray(self._obs), keys=keys, episode_return=jnp.zeros(n),
                       episode_length=jnp.zeros(n), recent_returns=jnp.full((n, self.recent), jnp.nan))

    def _observe(self):
        return self._obs

    def _step(self, action):
        obs, reward, terminated, truncated, info = self.envs.step(np.asarray(action))
        reached = obs.copy()
        for i in np.flatnonzero(terminated | truncated):
            reached[i] = info["final_obs"][i]
        self._obs = self.read(obs)
        return self._obs, self.read(reached), reward.astype(np.float32), terminated, truncated

    def step(self, rollout: Rollout, act):
        keys, act_keys, _ = split(rollout.keys, 3)
        obs = io_callback(self._observe, self._spec(self.num_envs, *self.observation_shape), ordered=True)
        action, extras = act(obs, act_keys)
        n, shape = self.num_envs, self.observation_shape
        next_obs, reached, reward, terminated, truncated = io_callback(
            self._step, (self._spec(n, *shape), self._spec(n, *shape), self._spec(n), self._spec(n, dtype=bool),
                         self._spec(n, dtype=bool)), action.astype(jnp.int32), ordered=True)
        return advance(rollout.replace(keys=keys), obs, action, extras, next_obs, reached, reward, terminated,
                       truncated)

    def run(self, rollout: Rollout, act, steps: int):
        return lax.scan(lambda r, _: self.step(r, act), rollout, None, steps)

    def _play_reset(self, episodes, key):
        if episodes not in self.players:
            self.players[episodes] = make_vector(self.env_id, episodes)
        obs, _ = self.players[episodes].reset(seed=int(np.asarray(key)[-1]))
        return self.read(obs)

    def _play_step(self, episodes, action):
        obs, reward, terminated, truncated, _ = self.players[episodes].step(np.asarray(action))
        return self.read(obs), reward.astype(np.float32), terminated | truncated

    def play(self, greedy, key, episodes: int):
        """As `Environments.play`, on gymnasium environments of this process."""
        shape = self._spec(episodes, *self.observation_shape)
        obs = io_callback(lambda k: self._play_reset(episodes, k), shape, key, ordered=True)

        def body(carry, _):
            obs, total, playing = carry
            obs, reward, done = io_callback(lambda a: self._play_step(episodes, a),
                                            (shape, self._spec(episodes), self._spec(episodes, dtype=bool)),
                                            greedy(obs).astype(jnp.int32), ordered=True)
            return (obs, total + jnp.where(playing, reward, 0.0), playing & ~done), None

        (_, total, _), _ = lax.scan(body, (obs, jnp.zeros(episodes), jnp.ones(episodes, bool)), None,
                                    self.max_episode_steps)
        return total
