"""Recurrent networks: the Elman cell of the seeds, LSTM and GRU (Flax's cells under `nn.RNN`), stacked,
bidirectional, over padded sequences; a classifier and a language model whose state may carry across windows.

The seeds' recurrent update, with the output layer above it:

    h_t = tanh(W_hh h_(t-1) + W_xh x_t + b_h)        y_t = W_hy h_t + b_y

`RecurrentLM(carry_rows=B)` keeps its final state after each training window in the "carry" collection and
starts the next window from it (truncated backpropagation through time): the runner then feeds row b of every
step the window after row b's last one (`Program.reads_in_order`), keeps the collection split over the devices
like the batch, saves it in checkpoints, and starts it from zeros at each epoch. Evaluation starts every window
from zeros, as a transformer reads each window afresh. With `decode=True` the state lives in the "cache"
collection instead, so `bmjax.generate.generate` samples from it one token at a time.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmjax.errors import UsageError
from bmjax.models.registry import CARRY, ModelIO, register

CELLS = ("elman", "lstm", "gru")
INITS = ("flax", "torch")  # flax: LeCun normal inputs, orthogonal recurrence, zero biases; torch: PyTorch's
POOLINGS = ("last", "mean", "max", "flatten")
partitioned = nn.with_logical_partitioning


class ElmanCell(nn.RNNCellBase):
    """h_t = tanh(W_hh h_(t-1) + W_xh x_t + b_h), exactly as the seeds write it (Elman 1990); h_t is also the
    step's output, which the layer above maps to y_t = W_hy h_t + b_y."""

    features: int
    kernel_init: Any = nn.initializers.lecun_normal()
    recurrent_kernel_init: Any = nn.initializers.orthogonal()
    bias_init: Any = nn.initializers.zeros
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, x):
        w_xh = self.param("W_xh", self.kernel_init, (self.features, x.shape[-1]), self.param_dtype)
        w_hh = self.param("W_hh", self.recurrent_kernel_init, (self.features, self.features), self.param_dtype)
        b_h = self.param("b_h", self.bias_init, (self.features,), self.param_dtype)
        dtype = self.dtype or x.dtype
        h = jnp.tanh(h.astype(dtype) @ w_hh.T.astype(dtype) + x @ w_xh.T.astype(dtype) + b_h.astype(dtype))
        return h, h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        return jnp.zeros(tuple(input_shape[:-1]) + (self.features,), self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


def torch_uniform(features: int):
    """PyTorch's initialisation of its recurrent layers: every weight and bias ~ U(-1/sqrt(features), +)."""
    bound = features ** -0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def make_cell(kind: str, features: int, dtype, name: Optional[str] = None, init: str = "flax") -> nn.RNNCellBase:
    if init not in INITS:
        raise ValueError(f"unknown initialisation {init!r}; choose one of {', '.join(INITS)}")
    inits = {}
    if init == "torch":
        inits = dict(kernel_init=torch_uniform(features), recurrent_kernel_init=torch_uniform(features),
                     bias_init=torch_uniform(features))
    if kind == "elman":
        return ElmanCell(features, dtype=dtype, name=name, **inits)
    if kind == "lstm":  # one matrix product for the four gates
        return nn.OptimizedLSTMCell(features, dtype=dtype, name=name, **inits)
    if kind == "gru":
        return nn.GRUCell(features, dtype=dtype, name=name, **inits)
    raise ValueError(f"unknown cell {kind!r}; choose one of {', '.join(CELLS)}")


def zero_carry(kind: str, rows: int, features: int, dtype=jnp.float32):
    """A cell's state before any input: (c, h) for the LSTM, h for the others."""
    h = jnp.zeros((rows, features), dtype)
    return (h, h) if kind == "lstm" else h


def hidden(kind: str, carry):
    """The hidden state h of a cell's carry (the LSTM's is (c, h))."""
    return carry[1] if kind == "lstm" else carry


class RecurrentStack(nn.Module):
    """`num_layers` recurrent layers (each bidirectional if asked), dropout between them.

    Returns every step's outputs [batch, time, features (x2 if bidirectional)] and each layer's final carry (a
    bidirectional layer's is (forward, backward)). Steps past a row's `lengths` leave its carry as it was.
    """

    cell: str
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    dtype: Any = jnp.float32
    cell_init: str = "flax"  # see INITS

    @nn.compact
    def __call__(self, x, *, lengths=None, initial_carries=None, train: bool = False):
        finals = []
        for layer in range(self.num_layers):
            if layer:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            # Each cell's parameters sit under its layer's name: layer_0, or forward_0 and backward_0.
            rnn = lambda name, reverse=False: nn.RNN(
                make_cell(self.cell, self.hidden_size, self.dtype, name=name, init=self.cell_init), reverse=reverse,
                keep_order=True)
            if self.bidirectional:
                layer_rnn = nn.Bidirectional(rnn(f"forward_{layer}"), rnn(f"backward_{layer}", reverse=True))
            else:
                layer_rnn = rnn(f"layer_{layer}")
            initial = None if initial_carries is None else initial_carries[layer]
            carry, x = layer_rnn(x, initial_carry=initial, seq_lengths=lengths, return_carry=True)
            finals.append(carry)
        return x, finals


class RecurrentClassifier(nn.Module):
    """A sequence classifier: token ids (embedded) or float sequences [batch, time(, features)] through a
    recurrent stack, pooled over the valid steps, and a dense head.

    Token rows are padded with `pad_id`: a row's length is its count of other tokens, so padding changes
    nothing. `pooling` takes the last state (for a bidirectional stack, the forward state after the last token
    beside the backward state after the first), the mean or max of the outputs, or all of them flattened
    (fixed-length inputs only).
    """

    num_outputs: int
    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    pooling: str = "last"
    vocab_size: Optional[int] = None  # None: the inputs are float features
    embed_dim: int = 128
    pad_id: int = 0
    dtype: Any = jnp.float32
    cell_init: str = "flax"  # see INITS

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if self.vocab_size:
            valid = x != self.pad_id
            x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name="embedding",
                         embedding_init=partitioned(nn.initializers.normal(0.1), ("vocab", "embed")))(x)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        else:
            x = x[..., None] if x.ndim == 2 else x  # a scalar per step
            valid = jnp.ones(x.shape[:2], bool)
        lengths = valid.sum(axis=1)
        stack = RecurrentStack(self.cell, self.hidden_size, self.num_layers, self.bidirectional, self.dropout,
                               self.dtype, self.cell_init, name="rnn")
        outputs, finals = stack(x.astype(self.dtype), lengths=lengths, train=train)
        mask = valid[..., None]
        if self.pooling == "last":
            last = finals[-1]
            pooled = (jnp.concatenate([hidden(self.cell, c) for c in last], axis=-1) if self.bidirectional
                      else hidden(self.cell, last))
        elif self.pooling == "mean":
            pooled = jnp.sum(outputs * mask, axis=1) / jnp.maximum(lengths, 1)[:, None]
        elif self.pooling == "max":
            pooled = jnp.max(jnp.where(mask, outputs, -jnp.inf), axis=1)
        elif self.pooling == "flatten":
            pooled = (outputs * mask).reshape(outputs.shape[0], -1)
        else:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
        return nn.Dense(self.num_outputs, dtype=self.dtype, name="head",
                        kernel_init=partitioned(nn.initializers.lecun_normal(), ("embed", "classes")))(pooled)


class RecurrentLM(nn.Module):
    """A recurrent language model: embeddings, a recurrent stack, next-token logits at every position.

    `carry_rows` (the training batch's rows; None for none) keeps the state across consecutive training windows;
    `decode` keeps it in the "cache" collection for sampling (see the module's docstring).
    """

    vocab_size: int
    cell: str = "lstm"
    hidden_size: int = 256
    num_layers: int = 2
    embed_dim: int = 64
    dropout: float = 0.0
    block_size: int = 256  # the window sampling reads at once; the state itself has no limit
    carry_rows: Optional[int] = None
    decode: bool = False
    dtype: Any = jnp.float32
    cell_init: str = "flax"  # see INITS

    @nn.compact
    def __call__(self, tokens, *, train: bool = False):
        rows = tokens.shape[0]
        zeros = lambda n: [zero_carry(self.cell, n, self.hidden_size, jnp.float32) for _ in range(self.num_layers)]
        state = None
        if self.decode:
            state = self.variable("cache", "carry", zeros, rows)
        elif self.carry_rows:
            state = self.variable(CARRY, "state", zeros, self.carry_rows)
        carried = state is not None and (self.decode or train)
        if carried and jax.tree.leaves(state.value)[0].shape[0] != rows:
            raise ValueError(f"a carried state of {jax.tree.leaves(state.value)[0].shape[0]} rows cannot start "
                             f"a batch of {rows}; build the model with carry_rows equal to the batch")
        x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name="embedding",
                     embedding_init=partitioned(nn.initializers.normal(0.1), ("vocab", "embed")))(tokens)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        outputs, finals = RecurrentStack(self.cell, self.hidden_size, self.num_layers, dropout=self.dropout,
                                         dtype=self.dtype, cell_init=self.cell_init, name="rnn")(
            x, initial_carries=state.value if carried else zeros(rows), train=train)
        if carried and not self.is_initializing():
            state.value = jax.lax.stop_gradient(jax.tree.map(lambda c: c.astype(jnp.float32), finals))
        outputs = nn.Dropout(self.dropout, deterministic=not train)(outputs)
        return nn.Dense(self.vocab_size, dtype=self.dtype, name="head",
                        kernel_init=partitioned(nn.initializers.lecun_normal(), ("embed", "vocab")))(outputs)


def _check(config) -> None:
    if config.cell not in CELLS or config.rnn_init not in INITS:
        raise UsageError(f"--cell={config.cell} or --rnn_init={config.rnn_init} is not one of: {', '.join(CELLS)}; "
                         f"{', '.join(INITS)}")
    if config.hidden_size < 1 or config.num_layers < 1:
        raise UsageError(f"--hidden_size and --num_layers must be positive, got {config.hidden_size} and "
                         f"{config.num_layers}")


@register("rnn")
def rnn_classifier(config, io: ModelIO) -> RecurrentClassifier:
    """A recurrent classifier: --cell, --hidden_size, --num_layers, --bidirectional, --pooling, --embed_dim,
    --rnn_init."""
    _check(config)
    if config.pooling not in POOLINGS:
        raise UsageError(f"--pooling={config.pooling} is not one of: {', '.join(POOLINGS)}")
    return RecurrentClassifier(num_outputs=io.num_outputs, cell=config.cell, hidden_size=config.hidden_size,
                               num_layers=config.num_layers, bidirectional=config.bidirectional,
                               dropout=config.dropout, pooling=config.pooling, vocab_size=io.vocab_size,
                               embed_dim=config.embed_dim, dtype=config.compute_dtype, cell_init=config.rnn_init)


@register("rnn_lm")
def rnn_lm(config, io: ModelIO) -> RecurrentLM:
    """A recurrent language model: --cell, --hidden_size, --num_layers, --embed_dim, --rnn_init; --carry_state
    keeps each training row's state across consecutive windows."""
    _check(config)
    return RecurrentLM(vocab_size=io.vocab_size or io.num_outputs, cell=config.cell, hidden_size=config.hidden_size,
                       num_layers=config.num_layers, embed_dim=config.embed_dim, dropout=config.dropout,
                       block_size=config.block_size, carry_rows=config.batch_size if config.carry_state else None,
                       dtype=config.compute_dtype, cell_init=config.rnn_init)
