"""What the convolutional networks share: convolutions and BatchNorm that carry logical axis names, PyTorch's
padding, and pooling that is fast on XLA:CPU.

Every zoo model (AlexNet, VGG, ResNet, Inception, EfficientNet) takes images [batch, H, W] or
[batch, H, W, C] and returns float32 logits. Its layers come from here:

    conv = ConvFactory(dtype, param_dtype)
    norm = NormFactory(train, momentum=0.9, axis_name=axis_name, dtype=dtype, param_dtype=param_dtype)
    x = nn.relu(norm()(conv(64, 7, strides=2)(x)))
    x = max_pool(x, 3, strides=2, padding=1)

Padding is symmetric, kernel // 2 on each side as PyTorch writes it, so that weights imported from PyTorch
models give the same outputs (Flax's "SAME" pads stride-2 layers asymmetrically).
"""

import dataclasses
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bmjax.errors import UsageError
from bmjax.models.transformer import partitioned

CONV_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")
DENSE_AXES = ("embed", "classes")  # a classifier; hidden dense layers name theirs ("embed", "mlp")
CHANNEL_AXES = ("conv_out",)

# PyTorch's default initialisation of convolutions in torchvision's ResNet/VGG: He normal, fan out.
HE_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


STEMS = ("auto", "imagenet", "small")  # --stem: the networks' first layers
SMALL_IMAGES_BELOW = 64  # --stem=auto: images smaller than this on their shorter side get the small-image variant


def resolve_stem(config, io, model: str) -> str:
    """"imagenet" or "small": `config.stem`, with "auto" decided by the size of the images `io.inputs` (one
    example, (H, W) or (H, W, C)). The small-image variants do not stride early, so that 28x28 or 32x32 maps
    are not reduced to nothing."""
    stem = config.stem
    if stem not in STEMS:
        raise UsageError(f"--stem={stem} is not one of: {', '.join(STEMS)}")
    if stem != "auto":
        return stem
    shape = getattr(io.inputs, "shape", None)
    if shape is None or len(shape) not in (2, 3):
        raise UsageError(f"--stem=auto chooses {model}'s first layers by the images' size, but its inputs are "
                         f"{io.inputs!r}, not images; use an image dataset, or set --stem=imagenet or --stem=small")
    return "small" if min(shape[:2]) < SMALL_IMAGES_BELOW else "imagenet"


def as_images(x, model: str):
    """[batch, H, W] gets a channel axis; anything but [batch, H, W, C] is a one-line error."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise UsageError(f"{model} takes images [batch, height, width] or [batch, height, width, channels], got "
                         f"an input of shape {tuple(x.shape)}; use an image dataset")
    return x


@dataclasses.dataclass(frozen=True)
class ConvFactory:
    """Makes nn.Conv layers with logical axis names, symmetric padding and the model's dtypes."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Callable = HE_FAN_OUT

    def __call__(self, features: int, kernel: int, strides: int = 1, *, padding: Optional[int] = None,
                 groups: int = 1, use_bias: bool = False, name: Optional[str] = None,
                 kernel_init: Optional[Callable] = None) -> nn.Conv:
        pad = kernel // 2 if padding is None else padding
        return nn.Conv(features, (kernel, kernel), (strides, strides), padding=((pad, pad), (pad, pad)),
                       feature_group_count=groups, use_bias=use_bias, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=name,
                       kernel_init=partitioned(kernel_init or self.kernel_init, CONV_AXES),
                       bias_init=partitioned(nn.initializers.zeros, CHANNEL_AXES))

    def dense(self, features: int, *, name: Optional[str] = None, kernel_init: Optional[Callable] = None,
              axes: tuple = DENSE_AXES) -> nn.Dense:
        return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                        kernel_init=partitioned(kernel_init or nn.initializers.lecun_normal(), axes),
                        bias_init=partitioned(nn.initializers.zeros, axes[-1:]))


@dataclasses.dataclass(frozen=True)
class NormFactory:
    """Makes BatchNorm layers. In training, statistics are taken over the whole batch: through `axis_name`
    under `pmap`, by the compiler's collectives under `jit` on a mesh (there `axis_name` is None)."""

    train: bool
    momentum: float = 0.9  # Flax's convention: PyTorch's momentum 0.1 is 0.9 here
    epsilon: float = 1e-5
    axis_name: Optional[str] = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def __call__(self, *, zero_init: bool = False, name: Optional[str] = None) -> nn.BatchNorm:
        """`zero_init` starts the scale at 0 (the last norm of a residual branch: each block starts as identity)."""
        return nn.BatchNorm(use_running_average=not self.train, momentum=self.momentum, epsilon=self.epsilon,
                            axis_name=self.axis_name if self.train else None, dtype=self.dtype,
                            param_dtype=self.param_dtype, name=name,
                            scale_init=partitioned(nn.initializers.zeros if zero_init else nn.initializers.ones,
                                                   CHANNEL_AXES),
                            bias_init=partitioned(nn.initializers.zeros, CHANNEL_AXES))


def _pool_slices(x, window: int, strides: int, padding: int, pad_value):
    """The window*window strided views of `x` (padded by `padding` with `pad_value`) whose elementwise
    reduction is the pooled map: slices and maxima, whose gradients XLA:CPU runs far faster than the
    select-and-scatter of `reduce_window`'s."""
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=pad_value)
    height, width = x.shape[1:3]
    out_h, out_w = (height - window) // strides + 1, (width - window) // strides + 1
    for i in range(window):
        for j in range(window):
            yield x[:, i:i + strides * (out_h - 1) + 1:strides, j:j + strides * (out_w - 1) + 1:strides]


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def max_pool(x, window: int, strides: Optional[int] = None, padding: int = 0, ceil_mode: bool = False):
    """Max pooling over window x window, PyTorch's `padding` (by -inf) and `ceil_mode` included. On CPU it
    is written as a maximum of strided slices (a reshape and max where windows tile the map); elsewhere it
    is `nn.max_pool`."""
    strides = strides or window
    if ceil_mode:  # PyTorch's ceil_mode: a last, partial window where the map does not divide
        extra = [(-(size + 2 * padding - window) % strides) for size in x.shape[1:3]]
        if any(extra):
            x = jnp.pad(x, ((0, 0), (0, extra[0]), (0, extra[1]), (0, 0)), constant_values=-jnp.inf)
    if not _on_cpu():
        return nn.max_pool(x, (window, window), (strides, strides), ((padding, padding), (padding, padding)))
    batch, height, width, channels = x.shape
    if window == strides and not padding:  # windows that tile the map (a last partial row or column is dropped)
        rows, cols = height // window, width // window
        tiles = x[:, :rows * window, :cols * window].reshape(batch, rows, window, cols, window, channels)
        return tiles.max(axis=(2, 4))
    slices = _pool_slices(x, window, strides, padding, -jnp.inf)
    out = next(slices)
    for view in slices:
        out = jnp.maximum(out, view)
    return out


# A 4x4 transposed convolution of stride 2 ("SAME") written per output phase: output row 2i + a reads input rows
# i - 1 and i (a = 0, kernel rows 0 and 2) or i and i + 1 (a = 1, kernel rows 1 and 3); columns alike.
UP_PHASES = {0: ((1, 0), (0, 2)), 1: ((0, 1), (1, 3))}  # phase -> (input padding, kernel taps)


# phase -> its two (input offset, kernel tap): the 2x2 convolution's window starts `padding` rows before the output's
UP_READS = {phase: tuple((t - pad[0], tap) for t, tap in enumerate(taps)) for phase, (pad, taps) in UP_PHASES.items()}


def _up_by_phases(x, kernel):
    """UpConv's transposed convolution as four 2x2 convolutions, one per output phase, interleaved."""
    numbers = ("NHWC", "HWIO", "NHWC")
    phases = [[jax.lax.conv_general_dilated(x, kernel[np.array(rows)][:, np.array(cols)], (1, 1), (row_pad, col_pad),
                                            dimension_numbers=numbers)
               for col_pad, cols in UP_PHASES.values()] for row_pad, rows in UP_PHASES.values()]
    y = jnp.stack([jnp.stack(row, 3) for row in phases], 2)  # [batch, H, row phase, W, column phase, C]
    return y.reshape(y.shape[0], 2 * y.shape[1], 2 * y.shape[3], kernel.shape[-1])


def _up_by_matrix(x, kernel):
    """UpConv's transposed convolution as each input pixel times the whole kernel ([.., 4, 4, features] taps), after
    which output phase (a, b) sums the four taps UP_READS gives it, each read from the neighbour it comes from."""
    batch, height, width, channels = x.shape
    features = kernel.shape[-1]
    taps = x.reshape(-1, channels) @ kernel.transpose(2, 0, 1, 3).reshape(channels, 16 * features)
    taps = taps.reshape(batch, height, width, 4, 4, features).transpose(3, 4, 0, 1, 2, 5)
    taps = jnp.pad(taps, ((0, 0), (0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    phases = [[sum(taps[row_tap, col_tap, :, 1 + dr:1 + dr + height, 1 + dc:1 + dc + width]
                   for dr, row_tap in UP_READS[a] for dc, col_tap in UP_READS[b]) for b in (0, 1)] for a in (0, 1)]
    y = jnp.stack([jnp.stack(row, 3) for row in phases], 2)  # [batch, H, row phase, W, column phase, C]
    return y.reshape(batch, 2 * height, 2 * width, features)


class UpConv(nn.Module):
    """`nn.ConvTranspose(features, (4, 4), (2, 2), padding="SAME")`, which doubles the map's side: the same
    parameters and numbers. On CPU it is computed as four 2x2 convolutions, one per output phase, interleaved: XLA:CPU
    runs the backward pass of the dilated convolution several times slower (764 against 125 ms for a 7x7x128 map to
    14x14x64, batch 128). A layer of fewer than 8 output channels (an image's) is one matrix product of each pixel
    by the whole kernel, then shifted sums: forward and backward 10 ms against 36 as convolutions (14x14x64 to
    28x28x1, batch 128)."""

    features: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (4, 4, x.shape[-1], self.features), self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        if _on_cpu():
            y = _up_by_matrix(x, kernel) if self.features < 8 else _up_by_phases(x, kernel)
        else:
            y = jax.lax.conv_transpose(x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(y.dtype)
        return y


def avg_pool(x, window: int, strides: Optional[int] = None, padding: int = 0):
    """Average pooling (padding counted in the average, as PyTorch's default count_include_pad)."""
    strides = strides or window
    return nn.avg_pool(x, (window, window), (strides, strides), ((padding, padding), (padding, padding)),
                       count_include_pad=True)


def adaptive_avg_pool(x, size: int):
    """PyTorch's AdaptiveAvgPool2d to size x size: each output cell averages rows floor(i*H/s)..ceil((i+1)*H/s)."""
    height, width = x.shape[1:3]
    if height % size == 0 and width % size == 0:
        window = (height // size, width // size)
        return nn.avg_pool(x, window, window)
    rows = [x[:, int(np.floor(i * height / size)):int(np.ceil((i + 1) * height / size))] for i in range(size)]
    cells = [[r[:, :, int(np.floor(j * width / size)):int(np.ceil((j + 1) * width / size))].mean(axis=(1, 2))
              for j in range(size)] for r in rows]
    return jnp.stack([jnp.stack(row, axis=1) for row in cells], axis=1)


def flatten_chw(x):
    """[batch, H, W, C] -> [batch, C * H * W] in PyTorch's (channel, row, column) order, so that the first
    classifier layer of a torchvision checkpoint applies unchanged (its kernel transposed, as every Linear's)."""
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def count_parameters(params) -> int:
    """Parameters, as PyTorch counts them (BatchNorm's running averages are model state, not parameters)."""
    return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))
