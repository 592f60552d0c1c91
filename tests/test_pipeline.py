"""Data order: deterministic per (seed, epoch); process parts disjoint and covering; eval covers once."""

import numpy as np

from bmjax.data import pipeline


def test_epoch_order_is_deterministic_and_a_permutation():
    a = pipeline.epoch_order(seed=3, epoch=2, num_examples=1000)
    np.testing.assert_array_equal(a, pipeline.epoch_order(3, 2, 1000))
    np.testing.assert_array_equal(np.sort(a), np.arange(1000))
    assert not np.array_equal(a, pipeline.epoch_order(3, 3, 1000)), "each epoch has its own order"
    assert not np.array_equal(a, pipeline.epoch_order(4, 2, 1000)), "each seed has its own order"


def test_train_indices_resume_mid_epoch_continue_the_same_order():
    whole = pipeline.train_indices(0, 1, 1000, 32, first_step=0, num_steps=31)
    tail = pipeline.train_indices(0, 1, 1000, 32, first_step=10, num_steps=21)
    np.testing.assert_array_equal(whole[10:], tail)
    assert len(np.unique(whole)) == whole.size, "no example repeats within an epoch"


def test_process_parts_are_disjoint_and_cover_each_batch():
    batches = pipeline.train_indices(7, 0, 1000, 48, 0, 20)
    for count in (1, 2, 3, 4):
        parts = [pipeline.process_part(batches, p, count) for p in range(count)]
        joined = np.concatenate(parts, axis=-1)
        np.testing.assert_array_equal(joined, batches)
        for p in range(count):
            for q in range(p + 1, count):
                assert not set(parts[p].ravel()) & set(parts[q].ravel())


def test_eval_indices_cover_every_example_once():
    indices, mask = pipeline.eval_indices(1003, 64)
    assert indices.shape == mask.shape == (16, 64)
    np.testing.assert_array_equal(np.sort(indices[mask]), np.arange(1003))
    assert mask.sum() == 1003
