"""--prune: the cubic schedule, masks that reach their sparsity and keep pruned weights at zero, N:M groups, the
report, bitwise resume, and bad flags."""

import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import run_module

import bmjax
from bmjax import prune
from bmjax.config import Config
from bmjax.errors import UsageError

SETTINGS = dict(dataset="digits", model="mlp", hidden_sizes=(32,), batch_size=32, train_steps=60,
                checkpoint_every_steps=20, keep_checkpoints=5, log_every_steps=20, parallel="single",
                prune_start_step=5, prune_end_step=40, prune_every_steps=5)
KERNELS = ("Dense_0/kernel", "Dense_1/kernel")


def checkpoint(workdir, step=None):
    """(params, masks) of a run's checkpoint, each as {"Dense_0/kernel": array}."""
    with ocp.CheckpointManager(f"{workdir}/checkpoints") as manager:
        state = manager.restore(step or manager.latest_step(), args=ocp.args.StandardRestore())
    flat = {"/".join(k): np.asarray(v) for k, v in ocp.tree.to_flat_dict(state).items()}
    params = {k.removeprefix("params/"): v for k, v in flat.items() if k.startswith("params/")}
    masks = {k.removeprefix("opt_state/1/masks/"): v for k, v in flat.items() if "/masks/" in k}
    return flat, params, masks


@pytest.fixture(scope="module")
def magnitude(tmp_path_factory):
    config = Config(workdir=str(tmp_path_factory.mktemp("prune") / "magnitude"), prune="magnitude",
                    prune_sparsity=0.75, **SETTINGS)
    return config, bmjax.run(config)


def test_schedule_is_zhu_and_gupta_cubic():
    window = prune.Schedule(start=10, end=50, every=12)
    steps = np.arange(0, 70)
    expected = np.where(steps < 10, 0.0, 1 - (1 - np.clip((steps - 10) / 40, 0, 1)) ** 3)
    np.testing.assert_allclose(jax.vmap(window.fraction)(steps), expected, atol=1e-6)
    assert list(steps[jax.vmap(window.updates_mask)(steps)]) == [10, 22, 34, 46, 50]
    # Unset flags: 10% to 75% of the run, a mask update each 1%.
    config = Config(workdir="unused", prune="magnitude")
    assert prune.schedule(config, 2000) == prune.Schedule(start=200, end=1500, every=20)


def test_masks_reach_the_sparsity_per_layer_and_pruned_weights_stay_zero(magnitude):
    config, result = magnitude
    _, params, masks = checkpoint(config.workdir)
    for name in KERNELS:
        size = params[name].size
        assert result["sparsity_per_layer"][name] == round(0.75 * size) / size
        assert (~masks[name]).sum() == round(0.75 * size)
        assert np.all(params[name][~masks[name]] == 0) and np.all(params[name][masks[name]] != 0)
    assert masks["Dense_0/bias"].shape == masks["Dense_1/bias"].shape == (), "biases are not pruned"
    # The masks are fixed after --prune_end_step=40; the kept weights train on, the pruned stay exactly zero.
    _, at_40, masks_40 = checkpoint(config.workdir, 40)
    for name in KERNELS:
        np.testing.assert_array_equal(masks_40[name], masks[name])
        assert np.all(at_40[name][~masks[name]] == 0)
        assert not np.array_equal(at_40[name][masks[name]], params[name][masks[name]])
    # Halfway through the schedule (step 20), the sparsity is the cubic's, rounded to whole weights.
    _, _, masks_20 = checkpoint(config.workdir, 20)
    reached = 0.75 * (1 - (1 - (20 - 5) / 35) ** 3)
    for name in KERNELS:
        assert (~masks_20[name]).sum() == round(reached * masks_20[name].size)


def test_report_counts_the_zeros(magnitude):
    config, result = magnitude
    _, params, _ = checkpoint(config.workdir)
    zeros = sum(int((params[k] == 0).sum()) for k in KERNELS)
    assert result["sparsity"] == pytest.approx(zeros / sum(params[k].size for k in KERNELS))
    assert prune.report(bmjax.restore(config.workdir).params) == {
        "sparsity": result["sparsity"], "sparsity_per_layer": result["sparsity_per_layer"]}


def test_resume_continues_bitwise(magnitude, tmp_path):
    config, _ = magnitude
    resumed = config.replace(workdir=str(tmp_path / "resumed"), restore_step=20)
    shutil.copytree(config.workdir, resumed.workdir)
    bmjax.run(resumed)
    whole, _, _ = checkpoint(config.workdir, 60)
    again, _, _ = checkpoint(resumed.workdir, 60)
    assert whole.keys() == again.keys()
    for key in whole:
        np.testing.assert_array_equal(whole[key], again[key], err_msg=key)


def test_n_m_keeps_n_of_every_m_along_the_input_dimension(tmp_path):
    config = Config(workdir=str(tmp_path / "2of4"), prune="2:4", **{**SETTINGS, "parallel": "mesh"})
    result = bmjax.run(config)
    assert jax.device_count() == 8 and result["devices"] == 8
    _, params, _ = checkpoint(config.workdir)
    for name in KERNELS:
        fan_in, fan_out = params[name].shape
        groups = params[name].reshape(fan_in // 4, 4, fan_out)  # 4 consecutive inputs of each output
        np.testing.assert_array_equal((groups != 0).sum(axis=1), 2)
        assert result["sparsity_per_layer"][name] == 0.5


def test_n_m_leaves_matrices_m_does_not_fit_dense():
    masks = lambda w: prune.transformation((2, 4), 0.0, prune.Schedule(0, 0, 1)).init(w).masks
    shapes = {"Conv_0": {"kernel": np.ones((3, 3, 1, 8))}, "Conv_1": {"kernel": np.ones((3, 3, 8, 4))}}
    assert masks(shapes)["Conv_0"]["kernel"].shape == () and masks(shapes)["Conv_1"]["kernel"].shape == (3, 3, 8, 4)
    with pytest.raises(UsageError, match="no weight matrix"):
        masks({"Conv_0": {"kernel": np.ones((3, 3, 1, 8))}})


def test_mask_functions_prune_exactly():
    w = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 8, 5))  # a conv kernel: groups along its 8 inputs
    keep = np.asarray(prune.n_m_mask(w, 1, 4))
    groups = np.moveaxis(np.abs(np.asarray(w)), 2, -1).reshape(3, 3, 5, 2, 4)
    np.testing.assert_array_equal(np.moveaxis(keep, 2, -1).reshape(groups.shape),
                                  groups == groups.max(axis=-1, keepdims=True))
    kept = np.asarray(prune.magnitude_mask(w, 0.9))
    assert (~kept).sum() == round(0.9 * w.size) and np.abs(w)[kept].min() > np.abs(w)[~kept].max()


@pytest.mark.parametrize("flags, message", [
    (dict(prune="fine"), "is not none, magnitude or N:M"),
    (dict(prune="4:4"), "needs 0 < N < M"),
    (dict(prune="magnitude", prune_sparsity=1.0), "must lie in \\[0, 1\\)"),
    (dict(prune="magnitude", prune_start_step=50, prune_end_step=10), "comes before"),
    (dict(prune="magnitude", prune_every_steps=0), "must be positive"),
    (dict(prune="2:4", ema_decay=0.99), "drop --ema_decay or --prune"),
])
def test_bad_flags_are_usage_errors(flags, message):
    with pytest.raises(UsageError, match=message):
        Config(workdir="unused", **flags).validate()


def test_bad_flag_exits_with_one_line(tmp_path):
    out = run_module("experiments.mnist_mlp", f"--workdir={tmp_path}", "--dataset=digits", "--prune=3:2")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --prune=3:2 needs 0 < N < M (N of every M weights are kept), e.g. 2:4"
