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


# One network of each family through the runner (tests/test_resnet.py, test_vgg_alexnet.py and
# test_inception_efficientnet.py take a train step of the others, and count every one's parameters).
@pytest.mark.parametrize("model, settings", [
    ("alexnet", {"augment": "resized_crop,mixup"}),
    ("vgg11_bn", {}),
    ("resnet18", {"preactivation": True}),
    ("resnet20", {"augment": "crop,flip,cutmix", "label_smoothing": 0.1}),
    ("googlenet", {"aux_heads": True}),  # auxiliary outputs through the train step's loss
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


def test_batchnorm_and_augmentation_alike_under_every_strategy(tmp_path):
    """Batch statistics over the whole batch, and each image cropped and flipped by its row of the global batch:
    the same losses under single, pmap and mesh on 8 devices."""
    losses = {}
    for parallel in ("single", "pmap", "mesh"):
        out = run_module(EXPERIMENT, f"--workdir={tmp_path / parallel}", f"--parallel={parallel}", *TINY)
        assert out.returncode == 0, out.stderr
        losses[parallel] = [r["loss"] for r in read_metrics(tmp_path / parallel)]
    for parallel in ("pmap", "mesh"):
        np.testing.assert_allclose(losses[parallel], losses["single"], rtol=1e-5, err_msg=parallel)
    with open(tmp_path / "mesh" / "run.json") as f:
        assert json.load(f)["config"]["augment"] == "crop,flip"


def test_augmented_run_resumes_bitwise_after_sigkill(tmp_path):
    args = [*TINY, "--parallel=mesh", "--augment=crop,flip,mixup,cutmix", "--label_smoothing=0.1"]
    whole = run_module(EXPERIMENT, f"--workdir={tmp_path / 'whole'}", *args)
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", EXPERIMENT, f"--workdir={killed}", *args]
    assert kill_after_saving(command, killed, 4, random.Random(1)) == -signal.SIGKILL
    resumed = run_module(EXPERIMENT, f"--workdir={killed}", *args)
    assert resumed.returncode == 0, resumed.stderr
    expected, got = saved_state(tmp_path / "whole"), saved_state(killed)
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
