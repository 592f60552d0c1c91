"""Adversarial training as a program: a generator and a discriminator (or critic), each its own `TrainState` and
optimizer, in one step the loop compiles like any other.

Each step updates the discriminator on a batch of real images against as many generated ones, then (every
`critic_steps`-th step) the generator against the updated discriminator, through the same forward pass of the
generator (its pullback is kept from the discriminator's half). The latent vector of example j comes from the
step's key and j's row in the global batch, so that the numbers do not depend on how the batch is split.

Evaluation reads each image of a split beside a generated one (its latent keyed by the image's index in the split,
conditioned on its label) through a trained bmjax classifier (`ClassifierFeatures`): the sums of their features
and feature products give the Frechet distance between the two Gaussians, reported as `fd_classifier` against the
training split's statistics, with the real split's own distance as `fd_classifier_floor`; the classifier's reading
of the generated images gives each class's share (mode collapse shows) and, when conditioned, their accuracy.
"""

import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax

import bmjax
from bmjax import losses, metrics
from bmjax.data import preprocess
from bmjax.errors import UsageError
from bmjax.train.program import Program
from bmjax.train.state import TrainState, create, parameter_count

EVAL_SEED = 1234  # the key of the latents evaluation and pictures use: the same at every evaluation
GRID_ROWS = 8


class AdversarialState(struct.PyTreeNode):
    step: jax.Array
    generator: TrainState
    discriminator: TrainState
    rng: jax.Array


class ClassifierFeatures:
    """A trained bmjax classifier (any run in `workdir` whose model ends in a Dense layer) as a feature space: the
    inputs of its last Dense layer, and its logits."""

    def __init__(self, workdir: str, feature_shape: tuple[int, ...]):
        self.workdir = os.path.abspath(workdir)
        run = bmjax.restore(workdir)
        if run.info is None or run.info.task != "classification":
            raise UsageError(f"--classifier={workdir} is not a classifier's run; train one (e.g. python -m "
                             "experiments.mnist_cnn) on the same dataset and pass its --workdir")
        shape = tuple(run.io.inputs.shape)
        if shape != tuple(feature_shape):
            raise UsageError(f"--classifier={workdir} reads inputs of shape {shape}, this dataset's images have "
                             f"shape {tuple(feature_shape)}; train the classifier on the same dataset")
        self.model, self.variables, self.feature_shape = run.model, run.variables, shape
        self.num_classes, self.class_names = run.info.num_classes, run.info.class_names
        self.dataset = run.config.dataset

    def __call__(self, x):
        """(features [B, d], logits [B, classes]) of images `x` in [0, 1], shaped like the dataset's."""
        inputs, outputs = [], []

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
                inputs.append(args[0])
                outputs.append(out)
            return out

        with nn.intercept_methods(record):
            logits = self.model.apply(self.variables, x, train=False)
        if not outputs or outputs[-1] is not logits:
            raise UsageError(f"the classifier in {self.workdir} does not end in a Dense layer, whose inputs would be "
                             "its features; train a classifier that does (the seed CNN, an MLP, a ResNet)")
        return inputs[-1].reshape(x.shape[0], -1).astype(jnp.float32), logits.astype(jnp.float32)

    def statistics(self, source, batch_size: int = 1000) -> dict:
        """Sums of the features of every image of `source` (a dataset split), as the eval step adds them up."""
        sums_of = jax.jit(lambda x: feature_sums(self(preprocess.to_float(x))[0], jnp.ones(x.shape[0])))
        total = None
        for start in range(0, len(source), batch_size):
            part = jax.tree.map(lambda s: np.asarray(s, np.float64),
                                sums_of(source[np.arange(start, min(start + batch_size, len(source)))]["x"]))
            total = part if total is None else jax.tree.map(np.add, total, part)
        return total


def feature_sums(features, weights) -> dict:
    weighted = features * weights[:, None]
    return {"n": jnp.sum(weights), "sum": jnp.sum(weighted, 0), "outer": weighted.T @ features}


def gaussian(sums) -> tuple[np.ndarray, np.ndarray]:
    n = float(sums["n"])
    mean = np.asarray(sums["sum"], np.float64) / n
    return mean, (np.asarray(sums["outer"], np.float64) - n * np.outer(mean, mean)) / (n - 1)


class Adversarial(Program):
    def __init__(self, generator: nn.Module, discriminator: nn.Module, generator_tx: optax.GradientTransformation,
                 discriminator_tx: optax.GradientTransformation, *, image_shape: tuple[int, ...], latent_dim: int,
                 num_classes: int = 0, loss: str = "non_saturating", gradient_penalty: float = 0.0,
                 r1_gamma: float = 0.0, critic_steps: int = 1, ema_decay: float = 0.0,
                 classifier: Optional[ClassifierFeatures] = None, train_statistics: Optional[dict] = None,
                 schedules: Optional[dict] = None, axis_name: Optional[str] = None):
        self.generator, self.discriminator = generator, discriminator
        self.generator_tx, self.discriminator_tx = generator_tx, discriminator_tx
        self.image_shape = tuple(image_shape)  # of the dataset's x: [H, W] or [H, W, C]
        self.latent_dim, self.num_classes, self.loss = latent_dim, num_classes, loss
        self.gradient_penalty, self.r1_gamma, self.critic_steps = gradient_penalty, r1_gamma, critic_steps
        self.ema_decay, self.axis_name = ema_decay, axis_name
        self.classifier, self.train_statistics = classifier, train_statistics
        self.step_schedules = schedules or {}
        self._pictures = jax.jit(self._generate)

    def _total(self, x):
        return lax.psum(x, self.axis_name) if self.axis_name else x

    def latents(self, rng, rows):
        return latents(rng, rows, self.latent_dim)

    def _labels(self, batch):
        return batch["y"] if self.num_classes else None

    def _as_images(self, x):
        return x[..., None] if x.ndim == 3 else x

    def _noise(self, rng, rows) -> dict:
        return noise_inputs(self.generator, rng, rows)

    def _generate(self, generator: TrainState, model_state, z, labels, rows):
        return generate(generator.apply_fn, {"params": generator.eval_params, **model_state}, z, labels,
                        self.image_shape, **self._noise(jax.random.PRNGKey(EVAL_SEED + 2), rows))

    def _examples(self):
        """Example inputs of the generator and of the discriminator (with a label each when conditioned)."""
        labels = (jnp.zeros((1,), jnp.int32),) if self.num_classes else ()
        image = jnp.zeros((1,) + self.image_shape + ((1,) if len(self.image_shape) == 2 else ()))
        return (jnp.zeros((1, self.latent_dim)), *labels), (image, *labels)

    def networks(self) -> dict:
        generated, judged = self._examples()
        return {"generator": (self.generator, generated), "discriminator": (self.discriminator, judged)}

    def init(self, rng):
        g_rng, d_rng, rest = jax.random.split(rng, 3)
        generated, judged = self._examples()
        return AdversarialState(
            step=jnp.zeros((), jnp.int32),
            generator=create(self.generator, self.generator_tx, generated[0], g_rng, self.ema_decay,
                             extra_inputs=generated[1:]),
            discriminator=create(self.discriminator, self.discriminator_tx, judged[0], d_rng,
                                 extra_inputs=judged[1:]),
            rng=rest)

    def train_step(self, state, batch):
        real = 2.0 * self._as_images(preprocess.to_float(batch["x"])) - 1.0
        labels, n = self._labels(batch), real.shape[0]
        count = self._total(jnp.float32(n))
        rng = jax.random.fold_in(state.rng, state.step)
        first = lax.axis_index(self.axis_name) * n if self.axis_name else 0
        rows = first + jnp.arange(n)
        z = self.latents(jax.random.fold_in(rng, 0), rows)
        t = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(jax.random.fold_in(rng, 1), i)))(rows)
        g, d = state.generator, state.discriminator

        def generate(params):
            return g.apply_fn({"params": params, **g.model_state}, z, labels, train=True, mutable=["batch_stats"],
                              **self._noise(jax.random.fold_in(rng, 2), rows))

        fake, pullback, g_model_state = jax.vjp(generate, g.params, has_aux=True)

        def discriminator_loss(params):
            def apply(x, model_state):
                return d.apply_fn({"params": params, **model_state}, x, labels, train=True, mutable=["batch_stats"])

            real_logits, model_state = apply(real, d.model_state)
            fake_logits, model_state = apply(fake, model_state)
            loss = losses.discriminator_loss(self.loss, real_logits, fake_logits)
            critic = lambda x: apply(x, d.model_state)[0]
            if self.gradient_penalty:
                loss += self.gradient_penalty * losses.gradient_penalty(critic, real, fake, t)
            if self.r1_gamma:
                loss += 0.5 * self.r1_gamma * losses.r1_penalty(critic, real)
            return jnp.sum(loss), (model_state, jnp.sum(real_logits), jnp.sum(fake_logits))

        (d_loss, (d_model_state, real_sum, fake_sum)), d_grads = jax.value_and_grad(
            discriminator_loss, has_aux=True)(d.params)
        d = d.apply_gradients(jax.tree.map(lambda x: x / count, self._total(d_grads)), d_model_state)

        def update_generator(g):
            def loss_of(fake):
                logits, _ = d.apply_fn({"params": d.params, **d.model_state}, fake, labels, train=True,
                                       mutable=["batch_stats"])
                return jnp.sum(losses.generator_loss(self.loss, logits))

            g_loss, fake_grads = jax.value_and_grad(loss_of)(fake)
            grads, = pullback(fake_grads)
            return g.apply_gradients(jax.tree.map(lambda x: x / count, self._total(grads)), g_model_state), g_loss

        if self.critic_steps == 1:
            g, g_loss = update_generator(g)
            g_count = jnp.float32(n)
        else:
            due = (state.step + 1) % self.critic_steps == 0
            g, g_loss = lax.cond(due, update_generator, lambda g: (g.replace(model_state=g_model_state), 0.0), g)
            g_count = jnp.where(due, jnp.float32(n), 0.0)
        sums = self._total({"d_loss": d_loss, "g_loss": g_loss, "d_real": real_sum, "d_fake": fake_sum,
                            "count": jnp.float32(n), "g_count": g_count})
        return state.replace(step=state.step + 1, generator=g, discriminator=d), sums

    def eval_step(self, state, batch):
        if self.classifier is None:
            raise UsageError("this program was built without a classifier to evaluate with")
        weights = batch["mask"].astype(jnp.float32)
        labels = self._labels(batch)
        z = self.latents(jax.random.PRNGKey(EVAL_SEED), batch["index"])
        fake = self._generate(state.generator, state.generator.model_state, z, labels, batch["index"])
        real_features, _ = self.classifier(preprocess.to_float(batch["x"]))
        fake_features, fake_logits = self.classifier(fake)
        predicted = jnp.argmax(fake_logits, -1)
        sums = {"real": feature_sums(real_features, weights), "fake": feature_sums(fake_features, weights),
                "classes": jnp.sum(jax.nn.one_hot(predicted, self.classifier.num_classes) * weights[:, None], 0)}
        if self.num_classes:
            sums["conditioned_right"] = jnp.sum((predicted == labels) * weights)
        return self._total(sums)

    def summarize(self, sums, detailed: bool = False) -> dict:
        if "fake" not in sums:
            count, g_count = float(np.sum(sums["count"])), float(np.sum(sums["g_count"]))
            summary = {"d_loss": float(np.sum(sums["d_loss"])) / count, "d_real": float(np.sum(sums["d_real"])) / count,
                       "d_fake": float(np.sum(sums["d_fake"])) / count}
            if g_count:
                summary["g_loss"] = float(np.sum(sums["g_loss"])) / g_count
            return summary
        train = gaussian(self.train_statistics)
        n = float(sums["fake"]["n"])
        shares = np.asarray(sums["classes"], np.float64) / n
        summary = {"fd_classifier": metrics.frechet_distance(*gaussian(sums["fake"]), *train),
                   "fd_classifier_floor": metrics.frechet_distance(*gaussian(sums["real"]), *train),
                   "class_share_min": float(shares.min()), "class_share_max": float(shares.max())}
        if self.num_classes:
            summary["conditioned_accuracy"] = float(sums["conditioned_right"]) / n
        if detailed:
            names = self.classifier.class_names or tuple(map(str, range(len(shares))))
            summary["class_shares"] = {name: float(s) for name, s in zip(names, shares)}
            summary["fd_features"] = f"inputs of the last Dense layer of the classifier in {self.classifier.workdir}"
        return summary

    def pictures(self, state, final: bool = False) -> dict:
        """A grid from fixed latents (with a class per column when conditioned); at the end, also rows of
        spherical interpolations between pairs of fixed latents."""
        generator, key = state.generator, jax.random.PRNGKey(EVAL_SEED)
        columns = self.num_classes or GRID_ROWS
        if self.num_classes:  # a latent per row, a class per column
            z = self.latents(key, jnp.repeat(jnp.arange(GRID_ROWS), columns))
            labels = jnp.tile(jnp.arange(columns), GRID_ROWS)
        else:
            z, labels = self.latents(key, jnp.arange(GRID_ROWS * columns)), None
        rows = jnp.arange(len(z))
        out = {"samples": tile(np.asarray(self._pictures(generator, generator.model_state, z, labels, rows)),
                               columns)}
        if final:
            ends = self.latents(jax.random.PRNGKey(EVAL_SEED + 1), jnp.arange(2 * GRID_ROWS)).reshape(
                GRID_ROWS, 2, -1)
            t = jnp.linspace(0.0, 1.0, GRID_ROWS)  # 8 x 8 images, as the grid: one compiled generator
            z = jax.vmap(lambda pair: jax.vmap(lambda s: slerp(pair[0], pair[1], s))(t))(ends).reshape(
                -1, self.latent_dim)
            labels = jnp.repeat(jnp.arange(GRID_ROWS) % self.num_classes, GRID_ROWS) if self.num_classes else None
            out["interpolation"] = tile(np.asarray(self._pictures(generator, generator.model_state, z, labels,
                                                                  jnp.zeros(len(z), jnp.int32))), GRID_ROWS)
        return out

    def schedules(self, step: int) -> dict:
        return {name: float(schedule(step)) for name, schedule in self.step_schedules.items()}

    def describe(self, state) -> dict:
        return {"generator_parameters": parameter_count(state.generator.params),
                "discriminator_parameters": parameter_count(state.discriminator.params)}


def latents(rng, rows, dim: int):
    """The latent vector [dim] of each example, from its row number: the same whatever the batch it is in."""
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(rng, i), (dim,)))(rows)


def noise_inputs(generator: nn.Module, rng, rows) -> dict:
    """The generator's own randomness (StyleGAN's noise and style mixing) as its keyword inputs: one key per
    example's row; none for a generator that draws none."""
    if not getattr(generator, "draws_noise", False):
        return {}
    return {"noise_keys": jax.vmap(lambda i: jax.random.fold_in(rng, i))(rows)}


def generate(apply_fn, variables, z, labels, image_shape, **noise):
    """Images in [0, 1] shaped like the dataset's, from a generator in evaluation mode (its outputs in [-1, 1])."""
    fake = apply_fn(variables, z, labels, train=False, **noise)
    return jnp.clip((fake + 1.0) / 2.0, 0.0, 1.0).reshape((z.shape[0],) + tuple(image_shape))


def slerp(a, b, t):
    """The point a fraction t along the great circle from a to b (White 2016), for Gaussian latents."""
    cos = jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    angle = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    return (jnp.sin((1 - t) * angle) * a + jnp.sin(t * angle) * b) / jnp.maximum(jnp.sin(angle), 1e-6)


def tile(images: np.ndarray, columns: int, gap: int = 2) -> np.ndarray:
    """Images [N, H, W(, C)] in [0, 1] as one uint8 grid [rows * (H + gap), columns * (W + gap), C]."""
    images = images if images.ndim == 4 else images[..., None]
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.ones((rows * (h + gap) - gap, columns * (w + gap) - gap, c), np.float32)
    for i, image in enumerate(images):
        top, left = (i // columns) * (h + gap), (i % columns) * (w + gap)
        grid[top:top + h, left:left + w] = image
    return (np.clip(grid, 0.0, 1.0) * 255).round().astype(np.uint8)
