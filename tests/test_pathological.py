"""keras_diffusion/datasets/pathological.py: data statistics checked independently in numpy."""

import numpy as np
import pytest

from keras_diffusion.datasets import pathological as pt


def _ids(x):
    return np.argmax(x, axis=-1)


def _marked(ids, symbols):
    return np.argwhere(np.isin(ids, symbols))


@pytest.mark.parametrize("length", [10, 50, 137, 500])
def test_temporal_order_markers_positions_and_labels(length):
    task = pt.PathologicalTask("temporal_order", length)
    x, y = task.sample(2000, np.random.default_rng(1))
    assert x.shape == (2000, length, 6) and y.shape == (2000, 1) and y.dtype == np.int32
    np.testing.assert_array_equal(x.sum(-1), 1.0)  # one-hot
    ids = _ids(x)
    marks = _marked(ids, [0, 1])
    counts = np.bincount(marks[:, 0], minlength=2000)
    np.testing.assert_array_equal(counts, 2)  # exactly two of A/B per sequence
    pos = marks[:, 1].reshape(2000, 2)
    assert np.all((pos[:, 0] >= length // 10) & (pos[:, 0] < 2 * length // 10))
    assert np.all((pos[:, 1] >= 5 * length // 10) & (pos[:, 1] < 6 * length // 10))
    first = ids[np.arange(2000), pos[:, 0]]
    second = ids[np.arange(2000), pos[:, 1]]
    np.testing.assert_array_equal(y[:, 0], 2 * first + second)
    freq = np.bincount(y[:, 0], minlength=4) / 2000
    np.testing.assert_allclose(freq, 0.25, atol=0.04)  # AA, AB, BA, BB balanced
    distractor = np.bincount(ids[~np.isin(ids, [0, 1])], minlength=6)[2:]
    np.testing.assert_allclose(distractor / distractor.sum(), 0.25, atol=0.02)


def test_temporal_order_3bit_three_markers_and_eight_classes():
    task = pt.PathologicalTask("temporal_order_3bit", 100)
    x, y = task.sample(4000, np.random.default_rng(2))
    ids = _ids(x)
    pos = _marked(ids, [0, 1])[:, 1].reshape(4000, 3)
    for k, (lo, hi) in enumerate([(10, 20), (30, 40), (60, 70)]):
        assert np.all((pos[:, k] >= lo) & (pos[:, k] < hi))
    bits = np.take_along_axis(ids, pos, axis=1)
    np.testing.assert_array_equal(y[:, 0], bits @ np.array([4, 2, 1]))
    np.testing.assert_allclose(np.bincount(y[:, 0], minlength=8) / 4000, 1 / 8, atol=0.03)
    assert task.num_outputs == 8


@pytest.mark.parametrize("name", ["addition", "multiplication"])
def test_marked_pair_tasks(name):
    length = 100
    task = pt.PathologicalTask(name, length)
    rng = np.random.default_rng(3)
    lengths = set()
    for _ in range(30):
        x, y = task.sample(200, rng)
        steps = x.shape[1]
        lengths.add(steps)
        assert length <= steps <= 110
        values, marker = x[..., 0], x[..., 1]
        assert values.min() >= 0.0 and values.max() <= 1.0
        marks = np.argwhere(marker == 1.0)
        np.testing.assert_array_equal(np.bincount(marks[:, 0], minlength=200), 2)
        assert set(np.unique(marker)) <= {0.0, 1.0}
        pos = marks[:, 1].reshape(200, 2)
        assert np.all(pos[:, 0] < steps // 10)
        assert np.all((pos[:, 1] >= 4 * steps // 10) & (pos[:, 1] < 5 * steps // 10))
        a = values[np.arange(200), pos[:, 0]]
        b = values[np.arange(200), pos[:, 1]]
        expected = (a + b) / 2 if name == "addition" else a * b
        np.testing.assert_allclose(y[:, 0], expected, rtol=1e-6)
    assert len(lengths) > 3  # T' varies between batches
    assert task.regression and task.num_outputs == 1


def test_random_permutation():
    task = pt.PathologicalTask("random_permutation", 60)
    x, y = task.sample(3000, np.random.default_rng(4))
    assert x.shape == (3000, 59, 100)
    ids = _ids(x)
    np.testing.assert_array_equal(y[:, 0], ids[:, 0])
    assert set(np.unique(ids[:, 0])) == {0, 1}
    assert ids[:, 1:].min() == 2 and ids[:, 1:].max() == 99
    np.testing.assert_allclose(np.mean(y), 0.5, atol=0.03)


@pytest.mark.parametrize("name,k,s", [("memorization_5bit", 5, 2), ("memorization_20bit", 10, 5)])
def test_memorization(name, k, s):
    length = 50
    task = pt.PathologicalTask(name, length)
    x, y = task.sample(1000, np.random.default_rng(5))
    assert x.shape == (1000, 2 * k + length, s + 2) and y.shape == (1000, k)
    assert task.target_steps == k and task.num_outputs == s
    ids = _ids(x)
    np.testing.assert_array_equal(ids[:, :k], y)  # target = the pattern
    blank, trigger = s, s + 1
    rest = ids[:, k:]
    np.testing.assert_array_equal(np.argwhere(rest == trigger)[:, 1], length - 1)
    assert np.sum(rest == blank) == 1000 * (length - 1 + k)
    np.testing.assert_allclose(np.bincount(y.ravel(), minlength=s) / y.size, 1 / s, atol=0.02)


def test_same_seed_same_data_and_fresh_batches():
    task = pt.PathologicalTask("addition", 50)
    a = [b for _, b in zip(range(3), task.batches(20, seed=7))]
    b = [b for _, b in zip(range(3), task.batches(20, seed=7))]
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][1], a[1][1])  # fresh sequences each batch
    ds = list(task.dataset(20, seed=7).take(3))
    for (xd, yd), (xa, ya) in zip(ds, a):
        np.testing.assert_array_equal(xd.numpy(), xa)
        np.testing.assert_array_equal(yd.numpy(), ya)


def _oracle(task):
    """An independent perfect predictor computed from the inputs."""

    def predict(x):
        ids = np.argmax(x, -1)
        if task.name == "temporal_order":
            marks = np.sort(np.where(ids < 2, np.arange(x.shape[1]), 10**9), axis=1)[:, :2]
            label = 2 * np.take_along_axis(ids, marks[:, :1], 1) + np.take_along_axis(
                ids, marks[:, 1:2], 1
            )
            return np.eye(4)[label[:, 0]]
        if task.name == "addition":
            return (x[..., 0] * x[..., 1]).sum(1) / 2
        k = task.target_steps
        return np.eye(task.num_outputs)[ids[:, :k]]

    return predict


@pytest.mark.parametrize("name", ["temporal_order", "addition", "memorization_20bit"])
def test_evaluate_success_perfect_and_wrong_predictors(name):
    task = pt.PathologicalTask(name, 30)
    rate, ok = pt.evaluate_success(_oracle(task), task, n=3000, seed=0)
    assert rate == 0.0 and ok
    wrong = lambda x: -_oracle(task)(x) if task.regression else 1.0 - _oracle(task)(x)  # noqa
    rate, ok = pt.evaluate_success(wrong, task, n=3000, seed=0)
    if task.regression:
        # -target is wrong exactly when 4 target^2 > 0.04, i.e. target > 0.1
        rng = np.random.default_rng(0)
        ys = np.concatenate([task.sample(1000, rng)[1] for _ in range(3)])
        assert rate == pytest.approx(np.mean(ys[:, 0] > 0.1))
    else:
        assert rate == 1.0
    assert not ok


def test_error_rate_threshold_at_one_percent():
    task = pt.PathologicalTask("temporal_order", 20)
    oracle = _oracle(task)
    for flip_every, expected_ok in ((50, False), (200, True)):

        def partly_wrong(x, flip_every=flip_every):
            out = oracle(x)
            out[::flip_every] = out[::flip_every][:, ::-1]  # AA<->BB, AB<->BA: always wrong
            return out

        rate, ok = pt.evaluate_success(partly_wrong, task, n=10000, seed=1, batch_size=1000)
        assert rate == pytest.approx(1 / flip_every) and ok == expected_ok


def test_regression_threshold():
    task = pt.PathologicalTask("multiplication", 10)
    y = np.array([[0.5], [0.5], [0.5]], dtype=np.float32)
    flags = pt.sequence_errors(task, np.array([0.5, 0.69, 0.71]), y)
    np.testing.assert_array_equal(flags, [False, False, True])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="temporal_order", length=9), "length=9 is too short"),
        (dict(name="addition", length=0), "`length` must be an integer >= 1, got 0"),
        (dict(name="memorization_5bit", length=-3), "`length` must be an integer >= 1, got -3"),
        (dict(name="random_permutation", length=2), "too short"),
        (dict(name="xor", length=50), "Unknown task"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pt.PathologicalTask(**kwargs)


def test_bad_counts():
    task = pt.PathologicalTask("temporal_order", 20)
    with pytest.raises(ValueError, match="`n` must be an integer >= 1, got 0"):
        pt.evaluate_success(_oracle(task), task, n=0)
    with pytest.raises(ValueError, match="`n` must be an integer >= 1"):
        task.sample(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="batch_size"):
        task.dataset(0, seed=0)
