"""DiffusedActivation: the diffused forms against quadrature, sigma = 0, sharing, round trip."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, special, stats

import keras_diffusion as kd
from keras_diffusion.layers.diffused_activation import DiffusedActivation

SLOPE = 1.7
# h(x) = g(slope * x) for every activation (keras_diffusion.activations)
PLAIN = {
    "linear": lambda x: SLOPE * x,
    "relu": lambda x: np.maximum(SLOPE * x, 0.0),
    "erf": lambda x: special.erf(SLOPE * x),
    "sign": np.sign,
}


def quadrature_mean(h, x, sigma):
    """E[h(x + sigma z)] by adaptive quadrature split at the kink z = -x / sigma."""
    density = stats.norm.pdf
    return np.array(
        [
            integrate.quad(lambda z: h(v + sigma * z) * density(z), -12, 12, points=[-v / sigma], epsabs=1e-11)[0]
            for v in x
        ]
    )


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_layer_is_the_gaussian_smoothed_activation(name):
    x = np.linspace(-2.5, 2.5, 41)
    layer = DiffusedActivation(name, bandwidth=0.6, slope=SLOPE)
    expected = quadrature_mean(PLAIN[name], x, 0.6)
    np.testing.assert_allclose(layer(x[None].astype("float32"))[0], expected, atol=2e-6, rtol=2e-6)


def test_sigma_zero_is_the_plain_activation_and_assign_does_not_retrace():
    sigma = kd.Bandwidth(0.9)
    layer = DiffusedActivation("erf", bandwidth=sigma, slope=SLOPE)
    traces = []

    @tf.function
    def f(v):
        traces.append(1)
        return layer(v)

    x = np.linspace(-2.0, 2.0, 9)[None].astype("float32")
    smoothed = f(x)
    sigma.assign(0.0)
    np.testing.assert_allclose(f(x), special.erf(SLOPE * x), rtol=1e-6, atol=1e-7)
    assert len(traces) == 1
    assert np.max(np.abs(smoothed - special.erf(SLOPE * x))) > 1e-2


def test_shared_bandwidth_survives_a_keras_round_trip(tmp_path):
    sigma = kd.Bandwidth(0.5)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            DiffusedActivation("tanh", bandwidth=sigma),
            keras.layers.Dense(3),
            DiffusedActivation("relu", bandwidth=sigma),
        ]
    )
    kd.set_sigma(model, 0.2)
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    first, _, last = loaded.layers
    assert first.bandwidth is last.bandwidth and len(kd.bandwidths(loaded)) == 1
    assert (first.activation, last.activation) == ("tanh", "relu")
    assert kd.get_sigma(loaded) == pytest.approx(0.2)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"activation": "swish"}, "'swish'.*known activations.*'erf'"),
        ({"activation": "erf", "slope": 0.0}, "slope.*0.0"),
        ({"activation": "erf", "bandwidth": -1.0}, "-1.0"),
        ({"activation": "erf", "method": "exact"}, "method.*'fast', 'accurate'.*'exact'"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusedActivation(**kwargs)
