"""The image-classification experiment: every family of the zoo trains end to end (on TFDS's mock CIFAR-10),
BatchNorm and augmentation give the same numbers under single, pmap and mesh, an augmented run resumes
bitwise after SIGKILL, and bad flags get one line."""

import json
import random
import signal
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import bmjax
from bmjax import models
from bmjax.data import tfds_source
from conftest import kill_after_saving, read_metrics, run_module, saved_state
from experiments.image_classification import ImageClassification
from test_errors import assert_usage_error

EXPERIMENT = "experiments.image_classification"
TINY = ["--dataset=digits", "--train_steps=8", "--batch_size=16", "--log_every_steps=2", "--host_devices=8",
        "--checkpoint_every_steps=4", "--warmup_steps=2", "--validation_split=0.1"]


def test_every_zoo_name_is_a_registered_model():
    assert set(models.ZOO) <= set(models.names())
    assert len(models.ZOO) == 23


# Networks of each family through the runner (tests/test_resnet.py, test_vgg_alexnet.py and
# test_inception_efficientnet.py take a train step of the others, a pre-activation ResNet-18, GoogLeNet and
# EfficientNet among them, and count every one's parameters).
@pytest.mark.parametrize("model, settings", [
    ("alexnet", {"augment": "resized_crop,mixup"}),
    ("vgg11_bn", {}),
    ("resnet20", {"augment": "crop,flip,cutmix", "label_smoothing": 0.1}),
])
def test_each_family_trains_on_mock_cifar10(tmp_path, monkeypatch, model, settings):
    monkeypatch.setattr(tfds_source, "_any_host_reachable", lambda urls: True)  # as if online
    config = ImageClassification(workdir=str(tmp_path / "run"), data_dir=str(tmp_path / "tfds"), dataset="cifar10",
                                 model=model, train_steps=2, batch_size=8, eval_batch_size=20, log_every_steps=1,
                                 warmup_steps=1, validation_split=None, parallel="single", **settings)
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        result = bmjax.run(config)
    assert np.isfinite(result["test"]["loss"])
    assert 0 <= result["test"]["accuracy"] <= result["test"]["top_5_accuracy"] <= 1
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def test_batchnorm_and_augmentation_alike_under_every_strategy_and_after_sigkill(tmp_path):
    """Batch statistics over the whole batch, and each image cropped and flipped by its row of the global batch:
    the same losses under single, pmap and mesh on 8 devices; killed and rerun, the mesh run ends with the same
    parameters, optimizer state and running averages, bit for bit."""
    losses = {}
    for parallel in ("single", "pmap", "mesh"):
        out = run_module(EXPERIMENT, f"--workdir={tmp_path / parallel}", f"--parallel={parallel}", *TINY)
        assert out.returncode == 0, out.stderr
        losses[parallel] = [r["loss"] for r in read_metrics(tmp_path / parallel)]
    for parallel in ("pmap", "mesh"):
        np.testing.assert_allclose(losses[parallel], losses["single"], rtol=1e-5, err_msg=parallel)
    with open(tmp_path / "mesh" / "run.json") as f:
        assert json.load(f)["config"]["augment"] == "crop,flip"

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", EXPERIMENT, f"--workdir={killed}", "--parallel=mesh", *TINY]
    assert kill_after_saving(command, killed, 4, random.Random(1)) == -signal.SIGKILL
    resumed = run_module(EXPERIMENT, f"--workdir={killed}", "--parallel=mesh", *TINY)
    assert resumed.returncode == 0, resumed.stderr
    expected, got = saved_state(tmp_path / "mesh"), saved_state(killed)
    assert any("batch_stats" in k for k in expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


@pytest.mark.parametrize("flags, message", [
    (["--model=resnet"], "flag --model=resnet: value should be one of <alexnet|vgg11|"),
    (["--augment=crop,rotate"], "--augment=crop,rotate: unknown rotate; choose none or a comma-separated list"),
    (["--stem=tiny"], "flag --stem=tiny: value should be one of <auto|imagenet|small>"),
    (["--bn_momentum=1.5"], "--bn_momentum must lie in (0, 1), got 1.5"),
    (["--label_smoothing=1"], "--label_smoothing must lie in [0, 1), got 1.0"),
])
def test_bad_flags_get_one_line(tmp_path, flags, message):
    assert_usage_error(run_module(EXPERIMENT, f"--workdir={tmp_path}", "--dataset=digits", *flags), message)


def test_augmenting_what_is_not_an_image_is_refused(tmp_path):
    out = run_module("experiments.tabular_multiclass", f"--workdir={tmp_path}", "--augment=crop")
    assert_usage_error(out, "--augment=crop transforms images, but this dataset's inputs have shape (13,)")


def test_imagenet_decodes_and_resizes_on_the_host(tmp_path, monkeypatch):
    """Images of varying size (TFDS's mock ImageNet: random JPEGs of random sizes) are decoded in worker
    processes, resized and centre-cropped to --image_size, read alike twice, and train through the host feed."""
    from bmjax import data

    monkeypatch.setattr(tfds_source, "_any_host_reachable", lambda urls: True)
    config = ImageClassification(workdir=str(tmp_path / "run"), data_dir=str(tmp_path / "tfds"),
                                 dataset="imagenet2012", model="resnet20", image_size=32, data_workers=2,
                                 train_steps=2, batch_size=8, eval_batch_size=16, log_every_steps=1, warmup_steps=1,
                                 validation_split=None, parallel="single")
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        dataset = data.load(data.DataSpec.of(config))
        first, again = dataset.train[np.arange(5)], dataset.train[np.arange(5)]
        result = bmjax.run(config)
    assert dataset.info.feature_shape == (32, 32, 3) and dataset.info.num_classes == 1000
    assert first["x"].shape == (5, 32, 32, 3) and first["x"].dtype == np.uint8 and first["x"].std() > 0
    np.testing.assert_array_equal(first["x"], again["x"])
    assert np.isfinite(result["test"]["loss"]) and result["test"]["top_5_accuracy"] >= result["test"]["accuracy"]


def test_auxiliary_outputs_add_their_weighted_loss_in_training():
    """A model that returns (logits, auxiliary logits) in training, as GoogLeNet with --aux_heads: the step's
    loss is the main loss plus 0.3 times each auxiliary one; evaluation scores the logits alone."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from bmjax import tasks
    from bmjax.train import state as state_lib, step as step_lib

    class WithAuxiliary(nn.Module):
        @nn.compact
        def __call__(self, x, *, train=False):
            logits, auxiliary = nn.Dense(3, name="main")(x), nn.Dense(3, name="aux")(x)
            return (logits, (auxiliary,)) if train else logits

    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    state = state_lib.create(WithAuxiliary(), optax.sgd(0.0), x, jax.random.key(0))
    task = tasks.Classification(3)
    _, sums = jax.jit(step_lib.make_train_step(task))(state, {"x": x, "y": y})
    main, aux = (x @ state.params[n]["kernel"] + state.params[n]["bias"] for n in ("main", "aux"))
    expected = (optax.softmax_cross_entropy_with_integer_labels(main, y)
                + 0.3 * optax.softmax_cross_entropy_with_integer_labels(aux, y)).sum()
    np.testing.assert_allclose(sums["loss"], expected, rtol=1e-5)
    evaluated = step_lib.make_eval_step(task)(state, {"x": x, "y": y, "mask": np.ones(6, bool)})
    np.testing.assert_allclose(evaluated["loss"], optax.softmax_cross_entropy_with_integer_labels(main, y).sum(),
                               rtol=1e-5)
    assert jnp.ndim(sums["loss"]) == 0
