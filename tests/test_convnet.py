"""The zoo's shared layers: the CPU pooling equals lax's in values and gradients, PyTorch's ceil mode and
adaptive pooling, BatchNorm and convolutions with logical axis names, the CPU's transposed convolution, and the
XLA:CPU flag that puts convolutions on Eigen."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmjax import xla_cpu
from bmjax.models import convnet
from conftest import subprocess_env


@pytest.mark.parametrize("window, strides, padding", [(2, 2, 0), (3, 2, 1), (3, 2, 0), (3, 1, 1), (3, 3, 0)])
@pytest.mark.parametrize("size", [12, 13])
def test_max_pool_on_cpu_equals_reduce_window_and_its_gradient(window, strides, padding, size):
    x = jax.random.normal(jax.random.key(size), (2, size, size + 1, 3))  # no ties: the gradients are unique
    reference = lambda x: nn.max_pool(x, (window, window), (strides, strides), ((padding, padding),) * 2)
    ours = lambda x: convnet.max_pool(x, window, strides, padding)
    np.testing.assert_array_equal(ours(x), reference(x))
    weights = jax.random.normal(jax.random.key(1), reference(x).shape)
    grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * weights))(x)
    np.testing.assert_allclose(grad(ours), grad(reference), rtol=1e-6)


def test_ceil_mode_keeps_the_last_partial_window():
    x = jnp.arange(2 * 7 * 7 * 1, dtype=jnp.float32).reshape(2, 7, 7, 1)
    assert convnet.max_pool(x, 2, 2).shape == (2, 3, 3, 1)
    pooled = convnet.max_pool(x, 2, 2, ceil_mode=True)
    assert pooled.shape == (2, 4, 4, 1)
    np.testing.assert_array_equal(pooled[:, -1, -1, 0], x[:, -1, -1, 0])  # the corner window holds one pixel


def test_adaptive_average_pooling_as_pytorch_splits_the_map():
    x = jax.random.normal(jax.random.key(0), (1, 5, 6, 2))
    pooled = convnet.adaptive_avg_pool(x, 3)
    # PyTorch's rows for 5 -> 3: [0, 2), [1, 4), [3, 5); columns for 6 -> 3: [0, 2), [2, 4), [4, 6).
    np.testing.assert_allclose(pooled[0, 1, 2], x[0, 1:4, 4:6].mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(convnet.adaptive_avg_pool(x[:, :4], 2)[0, 0, 0], x[0, :2, :3].mean((0, 1)), rtol=1e-6)


def test_layers_name_their_logical_axes():
    conv = convnet.ConvFactory()(8, 3, 2)
    norm = convnet.NormFactory(train=True)()
    x = jnp.ones((2, 9, 9, 3))
    conv_variables = conv.init(jax.random.key(0), x)
    assert nn.get_partition_spec(conv_variables)["params"]["kernel"] == jax.sharding.PartitionSpec(*convnet.CONV_AXES)
    assert conv.apply(conv_variables, x).shape == (2, 5, 5, 8)  # PyTorch's padding: (9 + 2 - 3) // 2 + 1
    norm_variables = norm.init(jax.random.key(0), x)
    assert nn.get_partition_spec(norm_variables)["params"]["scale"] == jax.sharding.PartitionSpec("conv_out")


@pytest.mark.parametrize("on_cpu", [True, False])
@pytest.mark.parametrize("features", [3, 9])  # on CPU: a matrix product and shifted sums; four 2x2 convolutions
def test_up_conv_is_flax_s_transposed_convolution_in_values_and_gradients(on_cpu, features, monkeypatch):
    """The CPU forms and lax's (elsewhere) all give nn.ConvTranspose's numbers, with its parameters."""
    monkeypatch.setattr(convnet, "_on_cpu", lambda: on_cpu)
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    reference = nn.ConvTranspose(features, (4, 4), (2, 2), padding="SAME")
    variables = reference.init(jax.random.key(1), x)
    ours = convnet.UpConv(features)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(ours.apply(variables, x), reference.apply(variables, x), atol=1e-5)
    assert ours.apply(variables, x).shape == (2, 10, 14, features)
    grad = lambda model: jax.grad(lambda v, x: jnp.sum(jnp.sin(model.apply(v, x))), argnums=(0, 1))(variables, x)
    for a, b in zip(jax.tree.leaves(grad(ours)), jax.tree.leaves(grad(reference))):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_eigen_convolutions_are_asked_for_unless_the_user_set_the_flag_or_jaxlib_lacks_it():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_cpu.prefer_eigen_convolutions(environ, (0, 10))
    assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {xla_cpu.EIGEN_CONVOLUTIONS}"
    assert not xla_cpu.prefer_eigen_convolutions(environ, (0, 10))  # once only
    own = {"XLA_FLAGS": f"{xla_cpu.FLAG}=individual_dot,individual_convolution"}
    assert not xla_cpu.prefer_eigen_convolutions(own, (0, 10)) and own["XLA_FLAGS"].endswith("convolution")
    untouched = {}
    assert not xla_cpu.prefer_eigen_convolutions(untouched, (0, 9)) and not untouched


def test_importing_bmjax_puts_convolutions_on_eigen_and_keeps_dots_on_ynnpack():
    program = ("import bmjax, jax, jax.numpy as jnp\n"
               "conv = jax.jit(lambda x, w: jax.lax.conv(x, w, (2, 2), 'SAME'))\n"
               "dot = jax.jit(jnp.matmul)\n"
               "print('ynn' in conv.lower(jnp.ones((8, 4, 14, 14)), jnp.ones((16, 4, 4, 4))).compile().as_text(),\n"
               "      'ynn' in dot.lower(jnp.ones((256, 256)), jnp.ones((256, 256))).compile().as_text())")
    if xla_cpu._jaxlib_release() not in xla_cpu.KNOWN_JAXLIB:
        pytest.skip("this jaxlib is not one known to have the flag, so bmjax leaves XLA_FLAGS alone")
    out = subprocess.run([sys.executable, "-c", program], env=subprocess_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]  # the convolution is XLA's own (Eigen), the dot YNNPACK's
