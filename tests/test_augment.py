"""Augmentation on the device: deterministic per key and per row of the global batch, each transform doing what
it says, labels mixed and smoothed as the images are; bad flags refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmjax.data import augment
from bmjax.errors import UsageError

KEY = jax.random.key(7)


def batch(rows=8, shape=(12, 10, 3)):
    x = jax.random.uniform(jax.random.key(0), (rows,) + shape)
    return {"x": x, "y": jnp.arange(rows) % 4}


def test_parse_takes_a_list_and_refuses_unknown_names():
    assert augment.parse("none") == () and augment.parse("") == ()
    assert augment.parse("crop, flip,mixup") == ("crop", "flip", "mixup")
    with pytest.raises(UsageError, match="unknown rotate; choose none or a comma-separated list of crop"):
        augment.parse("crop,rotate")


@pytest.mark.parametrize("names", [("crop", "flip"), ("resized_crop",), ("mixup", "cutmix")])
def test_same_key_same_images_and_rows_keyed_in_the_global_batch(names):
    aug = jax.jit(lambda b, key, first: augment.Augment(names, num_classes=4)(b, key, first), static_argnums=2)
    whole = aug(batch(), KEY, 0)
    np.testing.assert_array_equal(whole["x"], aug(batch(), KEY, 0)["x"])
    assert not np.allclose(whole["x"], aug(batch(), jax.random.key(8), 0)["x"])
    if "mixup" not in names:  # per-image transforms: a device's share of the batch is augmented as in the whole
        b = batch()
        share = aug({"x": b["x"][4:], "y": b["y"][4:]}, KEY, 4)
        np.testing.assert_array_equal(share["x"], whole["x"][4:])


def test_crop_is_a_shifted_window_of_the_padded_image_and_flip_mirrors():
    b = batch(rows=16)
    cropped = augment.Augment(("crop",), num_classes=4, crop_padding=2)(b, KEY)["x"]
    padded = np.pad(np.asarray(b["x"]), ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets = set()
    for i in range(16):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(padded[i, dy:dy + 12, dx:dx + 10], cropped[i])]
        assert found, f"image {i} is no window of its padded image"
        offsets.add(found[0])
    assert len(offsets) > 3  # the windows differ from image to image
    flipped = augment.Augment(("flip",), num_classes=4)(b, KEY)["x"]
    mirrored = [bool(np.array_equal(flipped[i], b["x"][i, :, ::-1])) for i in range(16)]
    kept = [bool(np.array_equal(flipped[i], b["x"][i])) for i in range(16)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 2 <= sum(mirrored) <= 14


def test_resized_crop_keeps_shape_and_range_and_grey_images_keep_their_axes():
    b = batch(shape=(16, 16))  # [B, H, W] without a channel axis
    out = augment.Augment(("resized_crop",), num_classes=4)(b, KEY)["x"]
    assert out.shape == b["x"].shape
    assert float(out.min()) >= 0 and float(out.max()) <= 1 and not np.allclose(out, b["x"])


def test_mixup_mixes_images_and_labels_by_one_weight():
    b = batch()
    out = augment.Augment(("mixup",), num_classes=4)(b, KEY)
    one_hot = jax.nn.one_hot(b["y"], 4)
    np.testing.assert_allclose(out["y"].sum(-1), 1, rtol=1e-6)
    # label of row 0 = w * onehot(y0) + (1 - w) * onehot(y7); y0 = 0 and y7 = 3 here.
    weight = float(out["y"][0, 0])
    assert 0 < weight < 1
    np.testing.assert_allclose(out["x"], weight * b["x"] + (1 - weight) * b["x"][::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["y"], weight * one_hot + (1 - weight) * one_hot[::-1], rtol=1e-5, atol=1e-6)


def test_cutmix_pastes_a_box_and_weighs_labels_by_the_area_kept():
    b = batch()
    out = augment.Augment(("cutmix",), num_classes=4)(b, jax.random.key(3))
    pasted = np.asarray(out["x"][0] != b["x"][0]).any(axis=-1)  # pixels taken from row 7
    np.testing.assert_array_equal(np.asarray(out["x"][0])[pasted], np.asarray(b["x"][7])[pasted])
    assert pasted.any() and not pasted.all()
    rows, cols = np.nonzero(pasted)
    assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all(), "the pasted pixels form a box"
    np.testing.assert_allclose(float(out["y"][0, 0]), 1 - pasted.mean(), rtol=1e-5)


def test_label_smoothing_spreads_each_label():
    out = augment.Augment((), num_classes=4, label_smoothing=0.2)(batch(), KEY)
    np.testing.assert_allclose(out["y"][1], [0.05, 0.85, 0.05, 0.05], rtol=1e-6)
