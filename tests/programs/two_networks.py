"""A test program with two networks and two optimizers in alternating updates: a small GAN on the 8x8 digits.

Each step updates the discriminator on real images against generated ones, then the generator against the
updated discriminator (non-saturating loss). The noise of example j comes from its index in the global batch,
so that the numbers do not depend on how the batch is split over devices.

    python tests/programs/two_networks.py --workdir=/tmp/gan --train_steps=200
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax

from bmjax import cli, data, losses
from bmjax.config import Config, field
from bmjax.data.preprocess import to_float
from bmjax.models import MLP
from bmjax.train.program import Plan, Program
from bmjax.train.state import TrainState, create, parameter_count


class GanState(struct.PyTreeNode):
    step: jax.Array
    generator: TrainState
    discriminator: TrainState
    rng: jax.Array


class TwoNetworks(Program):
    def __init__(self, image_size: int, latent_dim: int, generator_lr: float, discriminator_lr: float, axis_name):
        self.latent_dim, self.axis_name = latent_dim, axis_name
        self.generator = MLP(num_outputs=image_size, hidden_sizes=(64,))
        self.discriminator = MLP(num_outputs=1, hidden_sizes=(64,))
        self.generator_tx = optax.adam(generator_lr, b1=0.5)
        self.discriminator_tx = optax.adam(discriminator_lr, b1=0.5)
        self.image_size = image_size

    def init(self, rng):
        g, d, rest = jax.random.split(rng, 3)
        return GanState(step=jnp.zeros((), jnp.int32),
                        generator=create(self.generator, self.generator_tx, jnp.zeros((1, self.latent_dim)), g),
                        discriminator=create(self.discriminator, self.discriminator_tx,
                                             jnp.zeros((1, self.image_size)), d),
                        rng=rest)

    def _total(self, x):
        return lax.psum(x, self.axis_name) if self.axis_name else x

    def _noise(self, rng, batch_size: int):
        """One latent vector per example, keyed by the example's index in the global batch."""
        first = lax.axis_index(self.axis_name) * batch_size if self.axis_name else 0
        keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(first + jnp.arange(batch_size))
        return jax.vmap(lambda k: jax.random.normal(k, (self.latent_dim,)))(keys)

    def _fake(self, generator, params, z):
        return jax.nn.sigmoid(generator.apply_fn({"params": params}, z))

    def _logits(self, discriminator, params, images):
        return discriminator.apply_fn({"params": params}, images)[:, 0]

    def train_step(self, state, batch):
        real = to_float(batch["x"]).reshape(batch["x"].shape[0], -1)
        n = real.shape[0]
        count = self._total(jnp.float32(n))
        rng = jax.random.fold_in(state.rng, state.step)
        z_d, z_g = self._noise(jax.random.fold_in(rng, 0), n), self._noise(jax.random.fold_in(rng, 1), n)
        generator, discriminator = state.generator, state.discriminator

        def discriminator_loss(params):
            fake = self._fake(generator, generator.params, z_d)
            real_loss = losses.sigmoid_binary_cross_entropy(self._logits(discriminator, params, real), jnp.ones(n))
            fake_loss = losses.sigmoid_binary_cross_entropy(self._logits(discriminator, params, fake), jnp.zeros(n))
            return jnp.sum(real_loss + fake_loss)

        d_loss, d_grads = jax.value_and_grad(discriminator_loss)(discriminator.params)
        discriminator = discriminator.apply_gradients(
            jax.tree.map(lambda g: g / count, self._total(d_grads)), discriminator.model_state)

        def generator_loss(params):
            fake = self._fake(generator, params, z_g)
            logits = self._logits(discriminator, discriminator.params, fake)
            return jnp.sum(losses.sigmoid_binary_cross_entropy(logits, jnp.ones(n)))

        g_loss, g_grads = jax.value_and_grad(generator_loss)(generator.params)
        generator = generator.apply_gradients(jax.tree.map(lambda g: g / count, self._total(g_grads)),
                                              generator.model_state)
        sums = self._total({"d_loss": d_loss, "g_loss": g_loss, "count": jnp.float32(n)})
        return state.replace(step=state.step + 1, generator=generator, discriminator=discriminator), sums

    def eval_step(self, state, batch):
        """How often the discriminator tells real test images (weight `mask`) from as many generated ones."""
        real = to_float(batch["x"]).reshape(batch["x"].shape[0], -1)
        mask = batch["mask"].astype(jnp.float32)
        fake = self._fake(state.generator, state.generator.params, self._noise(jax.random.PRNGKey(0), len(real)))
        right = (self._logits(state.discriminator, state.discriminator.params, real) > 0).astype(jnp.float32) + \
            (self._logits(state.discriminator, state.discriminator.params, fake) < 0).astype(jnp.float32)
        return self._total({"right": jnp.sum(right * mask), "count": 2 * jnp.sum(mask)})

    def summarize(self, sums, detailed=False):
        if "right" in sums:
            return {"discriminator_accuracy": float(sums["right"] / sums["count"])}
        return {"d_loss": float(sums["d_loss"] / sums["count"]), "g_loss": float(sums["g_loss"] / sums["count"])}

    def describe(self, state):
        return {"parameters": parameter_count(state.generator.params) + parameter_count(state.discriminator.params)}


@dataclasses.dataclass(frozen=True)
class TwoNetworksConfig(Config):
    dataset: str = "digits"
    batch_size: int = 64
    train_steps: int = 200
    log_every_steps: int = 10
    latent_dim: int = field(8, "Width of the generator's noise input.")
    generator_learning_rate: float = field(2e-3, "Adam step size of the generator.")
    discriminator_learning_rate: float = field(2e-3, "Adam step size of the discriminator.")

    def build_program(self, context):
        dataset = data.load(data.DataSpec.of(self))
        image_size = int(np.prod(dataset.info.feature_shape))
        program = TwoNetworks(image_size, self.latent_dim, self.generator_learning_rate,
                              self.discriminator_learning_rate, context.axis_name)
        return Plan(program, dataset)


if __name__ == "__main__":
    cli.main(TwoNetworksConfig)
