"""The adding problem of Mobahi (2016), sec. 7, and its long-sequence variant."""

import numpy as np
import pytest

from keras_diffusion.datasets import adding


def test_mobahi_task_shapes_and_targets():
    task = adding.mobahi_adding_task(seed=3)
    x, y = task.arrays("train")
    x_test, y_test = task.arrays("test")
    assert x.shape == (1000, 10, 2) and y.shape == (1000, 1)
    assert x_test.shape == (100, 10, 2) and y_test.shape == (100, 1)
    assert x.dtype == np.float32 and y.dtype == np.float32
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values <= 1)).all()
    assert set(np.unique(markers)) == {0.0, 1.0}
    np.testing.assert_array_equal(markers.sum(axis=1), 2.0)
    # Target: explicit loop over the two marked positions.
    for seq in range(20):
        marked = [t for t in range(10) if markers[seq, t] == 1.0]
        assert y[seq, 0] == pytest.approx(values[seq, marked[0]] + values[seq, marked[1]])


def test_uniform_placement_covers_all_pairs_evenly():
    x, _ = adding.adding_arrays(20000, 4, "uniform", np.random.default_rng(0))
    pairs = [tuple(np.flatnonzero(row)) for row in x[..., 1]]
    counts = np.array([pairs.count(p) for p in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]])
    assert counts.sum() == 20000
    # 6 equally likely pairs: each ~ 3333 +- 3 sd (sd ~ 53).
    np.testing.assert_allclose(counts, 20000 / 6, atol=160)


def test_values_are_uniform_on_unit_interval():
    x, y = adding.adding_arrays(20000, 10, "uniform", np.random.default_rng(1))
    assert x[..., 0].mean() == pytest.approx(0.5, abs=0.005)
    assert x[..., 0].var() == pytest.approx(1 / 12, abs=0.002)
    assert y.mean() == pytest.approx(1.0, abs=0.01)
    assert y.var() == pytest.approx(1 / 6, abs=0.006)


def test_long_task_puts_one_marker_in_each_half():
    task = adding.long_adding_task(length=200, seed=0, num_train=300, num_test=50)
    x, y = task.arrays("train")
    assert x.shape == (300, 200, 2)
    positions = np.array([np.flatnonzero(row) for row in x[..., 1]])
    assert (positions[:, 0] < 100).all() and (positions[:, 1] >= 100).all()
    assert positions[:, 0].min() < 10 and positions[:, 1].max() > 190
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * x[..., 1]).sum(axis=1), rtol=1e-6)


def test_same_seed_same_data_other_seed_other_data():
    a = adding.mobahi_adding_task(seed=7)
    b = adding.mobahi_adding_task(seed=7)
    c = adding.mobahi_adding_task(seed=8)
    for split in ("train", "test"):
        np.testing.assert_array_equal(a.arrays(split)[0], b.arrays(split)[0])
        assert not np.array_equal(a.arrays(split)[0], c.arrays(split)[0])
    assert not np.array_equal(a.arrays("train")[0][:100], a.arrays("test")[0])


def test_validation_split_partitions_training_pool_and_keeps_test():
    full = adding.mobahi_adding_task(seed=2)
    split = adding.mobahi_adding_task(seed=2, validation_fraction=0.2)
    x_full, _ = full.arrays("train")
    x_train, _ = split.arrays("train")
    x_val, _ = split.arrays("validation")
    assert len(x_train) == 800 and len(x_val) == 200
    np.testing.assert_array_equal(np.concatenate([x_train, x_val]), x_full)
    np.testing.assert_array_equal(split.arrays("test")[0], full.arrays("test")[0])
    with pytest.raises(ValueError, match="validation_fraction > 0"):
        full.arrays("validation")


def test_dataset_matches_arrays_and_shuffles_reproducibly():
    task = adding.AddingTask(length=5, num_train=30, num_test=7, seed=1)
    batches = list(task.dataset("test", batch_size=3))
    assert [len(b[0]) for b in batches] == [3, 3, 1]
    x_test, y_test = task.arrays("test")
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x_test)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y_test)

    def epoch_order(dataset):
        return np.concatenate([b[1].numpy()[:, 0] for b in dataset])

    first = task.dataset("train", batch_size=4, shuffle=True)
    second = task.dataset("train", batch_size=4, shuffle=True)
    order = epoch_order(first)
    np.testing.assert_array_equal(order, epoch_order(second))
    np.testing.assert_allclose(np.sort(order), np.sort(task.arrays("train")[1][:, 0]))
    assert not np.array_equal(order, task.arrays("train")[1][:, 0])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: adding.AddingTask(length=1), "`length` must be an integer >= 2, got 1"),
        (lambda: adding.AddingTask(num_train=0), "`num_train` must be an integer >= 1, got 0"),
        (lambda: adding.AddingTask(num_test=0), "`num_test` must be an integer >= 1, got 0"),
        (lambda: adding.AddingTask(length=2.5), "`length` must be an integer >= 2, got 2.5"),
        (lambda: adding.AddingTask(placement="ends"), "'ends'"),
        (lambda: adding.AddingTask(validation_fraction=1.0), r"in \[0, 1\), got 1.0"),
        (lambda: adding.AddingTask(num_train=2, validation_fraction=0.9), "no training"),
        (lambda: adding.long_adding_task(length=50), "`length` must be an integer >= 200, got 50"),
        (lambda: adding.AddingTask().dataset(batch_size=0), "`batch_size` must be an integer >= 1"),
        (lambda: adding.AddingTask().dataset(batch_size=-5), "-5"),
        (lambda: adding.AddingTask().arrays("dev"), "'dev'"),
        (lambda: adding.adding_arrays(0, 10), "num_sequences"),
    ],
)
def test_bad_parameters_are_named(make, message):
    # Every bad argument is a ValueError (a float where a count is expected included).
    with pytest.raises(ValueError, match=message):
        make()
