"""single, pmap and mesh run the same step to the same losses on 8 simulated devices."""

import jax
import numpy as np
import pytest
from conftest import read_metrics

from bmjax.config import Config
from bmjax.train.loop import run

STEPS = 20


def losses(tmp_path, parallel, placement, **overrides):
    settings = dict(dataset="digits", model="mlp", hidden_sizes=(32,), batch_size=64, train_steps=STEPS,
                    log_every_steps=1, learning_rate=3e-3)
    config = Config(workdir=str(tmp_path / f"{parallel}_{placement}"), parallel=parallel,
                    data_placement=placement, **{**settings, **overrides})
    result = run(config)
    return np.array([r["loss"] for r in read_metrics(config.workdir)]), result


def test_eight_devices_are_simulated():
    assert jax.device_count() == 8


@pytest.mark.parametrize("placement", ["device", "host"])
def test_single_pmap_mesh_give_the_same_losses(tmp_path, placement):
    reference, single = losses(tmp_path, "single", placement)
    assert len(reference) == STEPS and reference[-1] < reference[0]
    assert single["devices"] == 1
    for parallel in ("pmap", "mesh"):
        other, result = losses(tmp_path, parallel, placement)
        assert result["devices"] == 8
        np.testing.assert_allclose(other, reference, rtol=1e-5, err_msg=parallel)
        np.testing.assert_allclose(result["test"]["loss"], single["test"]["loss"], rtol=1e-5)


def test_device_and_host_placement_agree(tmp_path):
    on_device, _ = losses(tmp_path, "mesh", "device", optimizer="sgd", learning_rate=0.1)
    from_host, _ = losses(tmp_path, "mesh", "host", optimizer="sgd", learning_rate=0.1)
    np.testing.assert_allclose(on_device, from_host, rtol=1e-5)
