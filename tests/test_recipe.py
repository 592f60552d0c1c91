"""Training-recipe pieces: a moving average of the weights (evaluated, saved and restored), fine-tuning with a
new head (--reinit), and refused values."""

import jax
import numpy as np
import pytest
from conftest import run_module

import bmjax
from bmjax.config import Config
from bmjax.train.checkpoint import load_params, read_saved
from test_errors import assert_usage_error

DIGITS = dict(dataset="digits", model="mlp", hidden_sizes=(32,), epochs=3, batch_size=64, log_every_steps=10,
              parallel="single")


def test_moving_average_is_evaluated_saved_and_restored(tmp_path):
    result = bmjax.run(Config(workdir=str(tmp_path / "ema"), ema_decay=0.9, **DIGITS))
    saved, _ = read_saved(str(tmp_path / "ema"))
    averaged, trained = jax.tree.leaves(saved["ema_params"]), jax.tree.leaves(saved["params"])
    assert all(a.shape == t.shape for a, t in zip(averaged, trained))
    assert max(float(np.abs(a - t).max()) for a, t in zip(averaged, trained)) > 1e-4, "the average lags the weights"

    restored = bmjax.restore(str(tmp_path / "ema"))
    for got, expected in zip(jax.tree.leaves(restored.params), averaged):
        np.testing.assert_array_equal(got, expected)
    # The test split's accuracy is the average's: the restored model reproduces it.
    from bmjax import data
    test = data.load("digits").test
    logits = restored.model.apply(restored.variables, np.asarray(test.x, np.float32))
    accuracy = float(np.mean(np.asarray(np.argmax(logits, -1)) == test.y))
    assert accuracy == pytest.approx(result["test"]["accuracy"], abs=1e-9)

    plain = bmjax.run(Config(workdir=str(tmp_path / "plain"), **DIGITS))
    assert read_saved(str(tmp_path / "plain"))[0].get("ema_params") is None
    assert plain["test"]["accuracy"] != result["test"]["accuracy"] or plain["test"]["loss"] != result["test"]["loss"]


def test_reinit_starts_the_named_layers_afresh(tmp_path):
    bmjax.run(Config(workdir=str(tmp_path / "source"), **{**DIGITS, "epochs": 1}))
    saved, _ = read_saved(str(tmp_path / "source"))
    ours = jax.tree.map(np.zeros_like, saved["params"])
    params, _, _ = load_params(str(tmp_path / "source"), ours, {}, reinit="Dense_1/")
    np.testing.assert_array_equal(params["Dense_0"]["kernel"], saved["params"]["Dense_0"]["kernel"])
    assert not params["Dense_1"]["kernel"].any() and not params["Dense_1"]["bias"].any(), "the head starts afresh"

    # A head of another size is refused, and the message names the flag that starts it afresh.
    three = tmp_path / "three_classes"
    bmjax.run(Config(workdir=str(three), **{**DIGITS, "epochs": 1, "dataset": "synthetic", "synthetic_features": 64,
                                            "synthetic_classes": 3}))
    fine_tune = ["experiments.mnist_mlp", "--dataset=digits", "--hidden_sizes=32", "--epochs=1",
                 f"--restore_from={three}"]
    out = run_module(*fine_tune, f"--workdir={tmp_path / 'refused'}")
    assert_usage_error(out, "params/Dense_1/bias is (3,) there and (10,) here", "--reinit=Dense_1/")
    out = run_module(*fine_tune, f"--workdir={tmp_path / 'new_head'}", "--reinit=Dense_1/")
    assert out.returncode == 0, out.stderr
    assert "restored 2 of 4 arrays" in out.stdout + out.stderr


@pytest.mark.parametrize("flags, message", [
    (["--ema_decay=1"], "--ema_decay must lie in [0, 1), got 1.0"),
    (["--reinit=["], "--reinit='[' is not a regular expression"),
])
def test_bad_recipe_flags(tmp_path, flags, message):
    assert_usage_error(run_module("experiments.mnist_mlp", f"--workdir={tmp_path}", "--dataset=digits", *flags),
                       message)
