"""Bandwidth: validation, sharing by reference, and identity through a .keras round trip."""

import keras
import tensorflow as tf
import numpy as np
import pytest
from keras import ops

import keras_diffusion as kd


@keras.saving.register_keras_serializable(package="keras_diffusion_tests")
class ScaleBySigma(keras.layers.Layer):
    """A minimal layer holding a bandwidth the way diffused layers do."""

    def __init__(self, bandwidth=None, **kwargs):
        super().__init__(**kwargs)
        self.bandwidth = kd.bandwidth.resolve(bandwidth)

    def call(self, x):
        return x * (1.0 + ops.cast(self.bandwidth.value, x.dtype))

    def get_config(self):
        return {**super().get_config(), "bandwidth": self.bandwidth}


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_sigma_is_an_error_naming_the_value(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        kd.Bandwidth(bad)


def test_non_numeric_values_are_errors_naming_the_value():
    with pytest.raises(ValueError, match="`sigma` must be a finite real number, got 'wide'"):
        kd.Bandwidth("wide")
    with pytest.raises(ValueError, match="penalty.*None"):
        kd.bandwidth.check_nonnegative("penalty", None)
    assert kd.bandwidth.check_nonnegative("penalty", np.float32(0.5)) == 0.5
    assert kd.bandwidth.check_nonnegative("penalty", np.array(0.25)) == 0.25
    with pytest.raises(ValueError, match=r"`gamma` must be finite and >= 0, got -2. \(a note\)"):
        kd.bandwidth.check_nonnegative("gamma", -2, " (a note)")


def test_set_sigma_on_a_model_without_diffused_layers_names_the_problem():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="no diffused layers"):
        kd.set_sigma(model, 0.5)


def test_disagreeing_private_bandwidths_are_reported():
    model = keras.Sequential([keras.Input((2,)), ScaleBySigma(0.1), ScaleBySigma(0.2)])
    with pytest.raises(ValueError, match="different values"):
        kd.get_sigma(model)
    kd.set_sigma(model, 0.3)
    assert kd.get_sigma(model) == pytest.approx(0.3)


def test_shared_bandwidth_survives_save_and_load(tmp_path):
    sigma = kd.Bandwidth(0.7)
    model = keras.Sequential([keras.Input((3,)), ScaleBySigma(sigma), keras.layers.Dense(2), ScaleBySigma(sigma)])
    assert len([w for w in model.weights if w.name == "sigma"]) == 1
    kd.set_sigma(model, 0.25)
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    scales = [layer for layer in loaded.layers if isinstance(layer, ScaleBySigma)]
    assert scales[0].bandwidth is scales[1].bandwidth
    assert kd.get_sigma(loaded) == pytest.approx(0.25)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


def test_assigning_sigma_does_not_retrace():
    sigma = kd.Bandwidth(1.0)
    layer = ScaleBySigma(sigma)
    traces = []

    @tf.function
    def f(x):
        traces.append(1)
        return layer(x)

    x = np.ones((1, 2), "float32")
    first = f(x)
    sigma.assign(0.0)
    second = f(x)
    assert len(traces) == 1
    np.testing.assert_allclose(first, 2 * np.ones((1, 2)))
    np.testing.assert_allclose(second, np.ones((1, 2)))
