"""Initializers: exact spectral radius / singular values (numpy eig/svd), sparsity, seeds,
critical gains against Monte Carlo, config round trips and error messages."""

import keras
import numpy as np
import pytest

from keras_diffusion import initializers


@pytest.mark.parametrize("shape, nonzeros", [((50, 50), 15), ((30, 30), 1), ((40, 40), 40)])
def test_sparse_hits_spectral_radius_with_k_incoming_connections(shape, nonzeros):
    w = np.asarray(initializers.SparseRecurrent(nonzeros, spectral_radius=0.95, seed=3)(shape))
    np.testing.assert_allclose(np.max(np.abs(np.linalg.eigvals(w.astype("float64")))), 0.95,
                               rtol=1e-5)
    np.testing.assert_array_equal((w != 0).sum(axis=0), nonzeros)  # per unit (column)


@pytest.mark.parametrize("shape", [(40, 40), (20, 35), (35, 20)])
def test_sparse_hits_largest_singular_value(shape):
    w = np.asarray(initializers.SparseRecurrent(12, singular_value=1.0, seed=0)(shape))
    np.testing.assert_allclose(np.linalg.svd(w.astype("float64"), compute_uv=False)[0], 1.0,
                               rtol=1e-5)
    np.testing.assert_array_equal((w != 0).sum(axis=0), 12)


def test_sparse_seeds_reproduce_and_differ():
    init = initializers.SparseRecurrent(5, singular_value=2.0, seed=7)
    again = initializers.SparseRecurrent(5, singular_value=2.0, seed=7)
    other = initializers.SparseRecurrent(5, singular_value=2.0, seed=8)
    a, b, c = (np.asarray(i((16, 16))) for i in (init, again, other))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.asarray(init((16, 16))))
    assert not np.array_equal(a, c)
    unseeded = initializers.SparseRecurrent(5, singular_value=2.0)
    np.testing.assert_array_equal(np.asarray(unseeded((16, 16))), np.asarray(unseeded((16, 16))))


@pytest.mark.parametrize(
    "init",
    [
        initializers.SparseRecurrent(6, spectral_radius=1.1, seed=2),
        initializers.SparseRecurrent(6, singular_value=0.5, seed=None),
        initializers.DynamicalIsometry("relu", q_star=0.3, seed=4),
    ],
)
def test_config_round_trip(init):
    restored = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert type(restored) is type(init)
    assert restored.get_config() == init.get_config()
    if init.get_config()["seed"] is not None:
        np.testing.assert_array_equal(np.asarray(restored((9, 9))), np.asarray(init((9, 9))))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(nonzeros=-1, spectral_radius=1.0), "`nonzeros` must be an integer >= 1, got -1"),
        (dict(nonzeros=3, spectral_radius=0.0), "`spectral_radius` must be finite and > 0, got 0.0"),
        (dict(nonzeros=3, singular_value=-2.0), "`singular_value` must be finite and > 0, got -2.0"),
        (dict(nonzeros=3), "exactly one of spectral_radius"),
        (dict(nonzeros=3, spectral_radius=1.0, singular_value=1.0), "exactly one"),
    ],
)
def test_bad_sparse_configurations_name_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        initializers.SparseRecurrent(**kwargs)


def test_bad_sparse_shapes_name_the_fix():
    with pytest.raises(ValueError, match="nonzeros=9 exceeds.*nonzeros <= 4"):
        initializers.SparseRecurrent(9, singular_value=1.0)((4, 4))
    with pytest.raises(ValueError, match="square matrix.*singular_value"):
        initializers.SparseRecurrent(2, spectral_radius=1.0)((4, 6))


def _monte_carlo_mean_squared_slope(activation, q, n=400_000):
    x = np.random.default_rng(0).normal(scale=np.sqrt(q), size=n)
    slope = {
        "tanh": 1 - np.tanh(x) ** 2,
        "sigmoid": np.exp(-x) / (1 + np.exp(-x)) ** 2,
        "erf": 2 / np.sqrt(np.pi) * np.exp(-x * x),
        "relu": (x > 0).astype(float),
        "linear": np.ones_like(x),
    }[activation]
    return np.mean(slope**2)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "erf", "relu", "linear"])
@pytest.mark.parametrize("q", [0.25, 2.0])
def test_critical_gain_matches_monte_carlo(activation, q):
    expected = 1 / np.sqrt(_monte_carlo_mean_squared_slope(activation, q))
    assert initializers.critical_gain(activation, q) == pytest.approx(expected, rel=5e-3)


def test_critical_gain_closed_forms_at_origin():
    assert initializers.critical_gain("tanh") == pytest.approx(1.0)
    assert initializers.critical_gain("sigmoid") == pytest.approx(4.0)
    assert initializers.critical_gain("erf") == pytest.approx(np.sqrt(np.pi) / 2)
    assert initializers.critical_gain("relu") == pytest.approx(np.sqrt(2))


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_dynamical_isometry_singular_values_all_equal_gain(activation):
    w = np.asarray(initializers.DynamicalIsometry(activation, q_star=0.5, seed=1)((24, 24)))
    np.testing.assert_allclose(np.linalg.svd(w.astype("float64"), compute_uv=False),
                               initializers.critical_gain(activation, 0.5), rtol=1e-5)
    again = initializers.DynamicalIsometry(activation, q_star=0.5, seed=1)((24, 24))
    np.testing.assert_array_equal(w, np.asarray(again))


def test_dynamical_isometry_bad_activation_and_variance():
    with pytest.raises(ValueError, match="'sign'.*derivative is 0.*use one of"):
        initializers.DynamicalIsometry("sign")
    with pytest.raises(ValueError, match="`q_star` must be finite and >= 0, got -1.0. It is a variance"):
        initializers.critical_gain("tanh", -1.0)
