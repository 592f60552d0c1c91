"""WaveNet (van den Oord et al. 2016): an autoregressive model of raw audio, one 8-bit mu-law sample at a time.

    model = WaveNet(dilations=dilations(stacks=2, layers=9), num_digits=10, num_speakers=5)
    logits = model.apply(variables, {"audio": tokens, "digit": digits, "speaker": speakers})   # [batch, len, 256]
    audio = mu_law_decode(generate(model, variables["params"], digits, speakers, 4000, key))

Each residual layer is a dilated causal convolution (kernel `kernel_size`, dilation 1, 2, ..., 2^k per stack)
into a gated unit tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h), where h is the global conditioning (the
digit's and the speaker's embeddings); a 1x1 convolution of the gated output adds to the residual stream and
another to the skip sum, which ReLU, 1x1, ReLU, 1x1 turn into logits over the 256 mu-law classes.

`generate` is Fast WaveNet (Paine et al. 2016): each layer keeps a queue of its last inputs, so a new sample
costs one step of every layer, in one `lax.scan`. `naive_generate` reruns the receptive field for every sample;
both give the same samples for the same key (tested).
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bmjax.models.transformer import partitioned

MU = 255  # 8-bit mu-law: 256 classes
CLASSES = MU + 1

CONV_AXES = ("conv_width", "conv_in", "conv_out")
PROJECTION_AXES = ("conv_in", "conv_out")  # a 1x1 convolution


def _numpy_or_jax(x):
    """numpy for host arrays (a dataset's clips, each its own length, compile nothing), jax.numpy for jax arrays."""
    return jnp if isinstance(x, jax.Array) else np


def mu_law_encode(audio, mu: int = MU):
    """Waveform in [-1, 1] (clipped) -> integer classes 0..mu: F(x) = sign(x) ln(1 + mu|x|) / ln(1 + mu),
    quantised to the nearest of mu + 1 evenly spaced levels of [-1, 1]."""
    xp = _numpy_or_jax(audio)
    audio = xp.clip(xp.asarray(audio, xp.float32), -1.0, 1.0)
    companded = xp.sign(audio) * xp.log1p(mu * xp.abs(audio)) / np.log1p(mu)
    return xp.floor((companded + 1.0) / 2.0 * mu + 0.5).astype(xp.int32)


def mu_law_decode(tokens, mu: int = MU):
    """Classes 0..mu -> waveform in [-1, 1]: the inverse of F at each quantisation level."""
    xp = _numpy_or_jax(tokens)
    companded = 2.0 * xp.asarray(tokens, xp.float32) / mu - 1.0
    return xp.sign(companded) * xp.expm1(xp.abs(companded) * np.log1p(mu)) / mu


SILENCE = 128  # mu_law_encode(0.0): the input before a clip's first sample


def dilations(stacks: int, layers: int) -> tuple[int, ...]:
    """`stacks` repetitions of 1, 2, 4, ..., 2^(layers - 1)."""
    return tuple(2 ** i for _ in range(stacks) for i in range(layers))


def receptive_field(dilations: Sequence[int], kernel_size: int = 2) -> int:
    """Inputs each output reads: itself and (kernel_size - 1) * dilation more per layer."""
    return (kernel_size - 1) * sum(dilations) + 1


def shifted(x, lag: int):
    """x [batch, len, channels] delayed by `lag` steps along len, zeros before the start (causal padding)."""
    if lag == 0:
        return x
    return jnp.pad(x, ((0, 0), (lag, 0), (0, 0)))[:, :x.shape[1]]


class ResidualLayer(nn.Module):
    """One dilated causal convolution, gated unit, residual and skip 1x1 convolutions."""

    residual_channels: int
    gate_channels: int
    skip_channels: int
    kernel_size: int
    dilation: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        dense = lambda features, axes, name: nn.Dense(
            features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
            kernel_init=partitioned(nn.initializers.lecun_normal(), axes),
            bias_init=partitioned(nn.initializers.zeros, axes[-1:]))
        fan_in = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=2)
        self.kernel = self.param("kernel", partitioned(fan_in, CONV_AXES),
                                 (self.kernel_size, self.residual_channels, 2 * self.gate_channels), self.param_dtype)
        self.bias = self.param("bias", partitioned(nn.initializers.zeros, CONV_AXES[-1:]), (2 * self.gate_channels,),
                               self.param_dtype)
        self.condition = dense(2 * self.gate_channels, ("embed", "conv_out"), "condition")  # V_f, V_g
        self.residual = dense(self.residual_channels, PROJECTION_AXES, "residual")
        self.skip = dense(self.skip_channels, PROJECTION_AXES, "skip")

    @property
    def lags(self) -> tuple[int, ...]:
        """How far back each kernel tap reads, oldest first."""
        return tuple(self.dilation * (self.kernel_size - 1 - j) for j in range(self.kernel_size))

    def __call__(self, x, h):
        """x [batch, len, residual], h [batch, condition] -> (x + residual [batch, len, residual], skip).
        The 1x1 convolutions multiply [batch * len, channels] rows (faster on XLA:CPU than 3-D products)."""
        batch, length, _ = x.shape
        taps = jnp.concatenate([shifted(x, lag) for lag in self.lags], axis=-1)
        rows = lambda a: a.reshape(batch * length, -1)
        condition = jnp.repeat(self.condition(h), length, axis=0)
        out, skip = self.gated(rows(x), rows(taps), condition)
        return out.reshape(x.shape), skip.reshape(batch, length, -1)

    def step(self, taps, h):
        """One time step: taps [batch, kernel_size, residual] (the inputs at each lag, oldest first) ->
        (x + residual [batch, residual], skip [batch, skip])."""
        return self.gated(taps[:, -1], taps.reshape(taps.shape[0], -1), self.condition(h))

    def gated(self, x, taps, condition):
        """Rows: x [n, residual], taps [n, kernel_size * residual], condition [n, 2 * gate] (V h)."""
        kernel = self.kernel.reshape(-1, 2 * self.gate_channels).astype(self.dtype)
        pre = jnp.dot(taps.astype(self.dtype), kernel) + self.bias.astype(self.dtype) + condition
        filters, gates = jnp.split(pre, 2, axis=-1)
        z = jnp.tanh(filters) * nn.sigmoid(gates)
        return x + self.residual(z), self.skip(z)


class WaveNet(nn.Module):
    """Mu-law tokens [batch, len] and one digit and speaker per clip -> float32 logits [batch, len, 256] over the
    next sample. Input t sees inputs 0..t only."""

    dilations: Sequence[int]
    num_digits: int
    num_speakers: int
    residual_channels: int = 32
    gate_channels: int = 32
    skip_channels: int = 64
    kernel_size: int = 2
    condition_dim: int = 16
    num_classes: int = CLASSES
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        embed = lambda num, features, axes, name: nn.Embed(
            num, features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
            embedding_init=partitioned(nn.initializers.normal(1.0), axes))
        self.embed = embed(self.num_classes, self.residual_channels, ("vocab", "conv_out"), "embed")
        self.digit_embed = embed(self.num_digits, self.condition_dim, ("classes", "embed"), "digit_embed")
        self.speaker_embed = embed(self.num_speakers, self.condition_dim, ("classes", "embed"), "speaker_embed")
        self.layers = [ResidualLayer(self.residual_channels, self.gate_channels, self.skip_channels, self.kernel_size,
                                     d, self.dtype, self.param_dtype, name=f"layer_{i}")
                       for i, d in enumerate(self.dilations)]
        dense = lambda features, axes, name: nn.Dense(
            features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
            kernel_init=partitioned(nn.initializers.lecun_normal(), axes),
            bias_init=partitioned(nn.initializers.zeros, axes[-1:]))
        self.hidden = dense(self.skip_channels, PROJECTION_AXES, "hidden")
        self.logits = dense(self.num_classes, ("conv_in", "vocab"), "logits")

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.dilations, self.kernel_size)

    def conditioning(self, digit, speaker):
        """h [batch, 2 * condition_dim]: the digit's and the speaker's embeddings side by side."""
        return jnp.concatenate([self.digit_embed(digit), self.speaker_embed(speaker)], axis=-1)

    def head(self, skips):
        return self.logits(nn.relu(self.hidden(nn.relu(skips)))).astype(jnp.float32)

    def __call__(self, x: dict, *, train: bool = False):
        h = self.conditioning(x["digit"], x["speaker"])
        stream, skips = self.embed(x["audio"]), 0.0
        for layer in self.layers:
            stream, skip = layer(stream, h)
            skips = skips + skip
        return self.head(skips)

    def step(self, token, digit, speaker, queues, t):
        """One sample: the input tokens at time t [batch] -> (logits [batch, 256], queues).

        `queues[i]` [batch, (kernel_size - 1) * dilation_i, residual] holds layer i's inputs at times t - size .. t - 1
        in a ring (time p at row p mod size; zeros before the start, as the causal padding), so each layer reads its
        taps and writes its newest input without moving the rest."""
        h = self.conditioning(digit, speaker)
        stream, skips, new_queues = self.embed(token), 0.0, []
        for layer, queue in zip(self.layers, queues):
            size = queue.shape[1]
            past = [queue[:, (t - lag) % size] for lag in layer.lags[:-1]]
            taps = jnp.stack(past + [stream.astype(queue.dtype)], axis=1)
            new_queues.append(lax.dynamic_update_slice_in_dim(queue, taps[:, -1:], t % size, axis=1))
            stream, skip = layer.step(taps, h)
            skips = skips + skip
        return self.head(skips), tuple(new_queues)

    def empty_queues(self, batch: int) -> tuple:
        return tuple(jnp.zeros((batch, (self.kernel_size - 1) * d, self.residual_channels), self.dtype)
                     for d in self.dilations)


def _draw(logits, key, temperature: float, greedy: bool):
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


def _check(num_samples: int, temperature: float, greedy: bool):
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature}); use greedy=True for the most likely samples")


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "temperature", "greedy"))
def generate(model: WaveNet, params, digit, speaker, num_samples: int, rng, *, temperature: float = 1.0,
             greedy: bool = False):
    """`num_samples` mu-law tokens [batch, num_samples] for each (digit, speaker) pair of the batch, from silence.

    Fast WaveNet: one step of every layer per sample, reading and updating the layers' queues. Sample t is drawn
    with the key fold_in(rng, t)."""
    _check(num_samples, temperature, greedy)
    params = nn.meta.unbox(params)
    digit, speaker = jnp.asarray(digit, jnp.int32), jnp.asarray(speaker, jnp.int32)

    def sample(carry, t):
        token, queues = carry
        logits, queues = model.apply({"params": params}, token, digit, speaker, queues, t, method=WaveNet.step)
        token = _draw(logits, jax.random.fold_in(rng, t), temperature, greedy)
        return (token, queues), token

    start = jnp.full(digit.shape, SILENCE, jnp.int32)
    _, tokens = lax.scan(sample, (start, model.empty_queues(digit.shape[0])), jnp.arange(num_samples))
    return tokens.T


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "temperature", "greedy"))
def naive_generate(model: WaveNet, params, digit, speaker, num_samples: int, rng, *, temperature: float = 1.0,
                   greedy: bool = False):
    """What `generate` computes, by running the whole network over the last `receptive_field` inputs for every
    sample: O(receptive field) work per sample instead of O(layers). For checking `generate`."""
    _check(num_samples, temperature, greedy)
    params = nn.meta.unbox(params)
    digit, speaker = jnp.asarray(digit, jnp.int32), jnp.asarray(speaker, jnp.int32)
    window = min(model.receptive_field, num_samples)
    inputs = jnp.full((digit.shape[0], num_samples + 1), SILENCE, jnp.int32)  # input t + 1 is sample t

    def sample(inputs, t):
        first = jnp.maximum(t - window + 1, 0)  # before that, inputs are zero-padded inside the network
        x = {"audio": lax.dynamic_slice_in_dim(inputs, first, window, axis=1), "digit": digit, "speaker": speaker}
        logits = model.apply({"params": params}, x)[:, t - first]  # later positions in the window do not matter
        token = _draw(logits, jax.random.fold_in(rng, t), temperature, greedy)
        inputs = lax.dynamic_update_slice_in_dim(inputs, token[:, None], t + 1, axis=1)
        return inputs, token

    _, tokens = lax.scan(sample, inputs, jnp.arange(num_samples))
    return tokens.T
