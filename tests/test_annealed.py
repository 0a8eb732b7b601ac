"""AnnealedStep (Mobahi 2016, sec. 5.2) against a dense numpy version of the same step."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_diffusion
from keras_diffusion.optimizers import AnnealedStep


@keras.saving.register_keras_serializable(package="keras_diffusion_tests")
class SigmaOffset(keras.layers.Layer):
    """Adds sigma to its input: a minimal layer holding a shared Bandwidth."""

    def __init__(self, bandwidth=None, **kwargs):
        super().__init__(**kwargs)
        self.bandwidth = keras_diffusion.bandwidth.resolve(bandwidth)

    def call(self, inputs):
        return inputs + self.bandwidth.value

    def get_config(self):
        return {**super().get_config(), "bandwidth": self.bandwidth}


def linear_model(bandwidth, seed=0):
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(2, kernel_initializer=keras.initializers.GlorotUniform(seed))
    outputs = SigmaOffset(bandwidth)(dense(inputs))
    return keras.Model(inputs, outputs)


def numpy_step(kernel, bias, x, y, sigma, eta, floor):
    """One annealed step on mean((x @ kernel + bias + sigma - y)**2), gradients by hand."""
    residual = x @ kernel + bias + sigma - y
    scale = 2.0 / residual.size
    g_kernel, g_bias = scale * x.T @ residual, scale * residual.sum(0)
    norm = math.sqrt((g_kernel**2).sum() + (g_bias**2).sum())
    step = eta * max(sigma, floor) / norm
    return kernel - step * g_kernel, bias - step * g_bias


def data(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("sigma", [0.7, 0.0])
def test_fit_matches_numpy_step(jit_compile, sigma):
    x, y = data()
    bandwidth = keras_diffusion.Bandwidth(sigma)
    model = linear_model(bandwidth)
    kernel, bias = (v.numpy().astype("float64") for v in model.trainable_variables)
    optimizer = AnnealedStep(0.3, bandwidth=model, sigma_floor=0.05)
    model.compile(optimizer, "mse", jit_compile=jit_compile)
    expected = (kernel, bias)
    for _ in range(3):
        expected = numpy_step(*expected, x, y, sigma, eta=0.3, floor=0.05)
    model.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0)
    for variable, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-5, atol=1e-6)


def test_step_length_follows_bandwidth():
    x, y = data()
    bandwidth = keras_diffusion.Bandwidth(1.0)
    model = linear_model(bandwidth)
    optimizer = AnnealedStep(0.2, bandwidth=bandwidth, sigma_floor=0.0)
    model.compile(optimizer, "mse")
    lengths = []
    for sigma in [1.0, 0.5, 0.25, 0.0]:
        bandwidth.assign(sigma)
        before = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
        after = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
        lengths.append(np.linalg.norm(after - before))
    np.testing.assert_allclose(lengths, [0.2, 0.1, 0.05, 0.0], rtol=1e-5, atol=1e-7)


def test_constant_sigma_and_floor():
    variable = keras.Variable(np.zeros(4, "float32"))
    gradient = tf.constant([3.0, 0.0, 4.0, 0.0])
    AnnealedStep(0.5, bandwidth=2.0).apply([gradient], [variable])
    np.testing.assert_allclose(variable.numpy(), [-0.6, 0.0, -0.8, 0.0], rtol=1e-6)
    floored = keras.Variable(np.zeros(4, "float32"))
    AnnealedStep(1.0, bandwidth=0.0, sigma_floor=0.1).apply([gradient], [floored])
    np.testing.assert_allclose(floored.numpy(), [-0.06, 0.0, -0.08, 0.0], rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_is_rejected_and_counted(bad):
    variables = [keras.Variable(np.ones(3, "float32")), keras.Variable(np.ones(2, "float32"))]
    optimizer = AnnealedStep(0.5, bandwidth=1.0)
    step = tf.function(lambda grads: optimizer.apply(grads, variables), jit_compile=True)
    step([tf.constant([1.0, bad, 1.0]), tf.constant([1.0, 1.0])])
    for v in variables:
        np.testing.assert_array_equal(v.numpy(), np.ones(v.shape))
    assert int(optimizer.rejected_steps.numpy()) == 1
    step([tf.constant([0.0, 0.0, 0.0]), tf.constant([3.0, 4.0])])
    np.testing.assert_allclose(variables[1].numpy(), [0.7, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(variables[0].numpy(), np.ones(3))
    assert int(optimizer.rejected_steps.numpy()) == 1
    assert int(optimizer.iterations.numpy()) == 2


def test_zero_gradient_gives_zero_step():
    variable = keras.Variable(np.ones(3, "float32"))
    optimizer = AnnealedStep(0.5, bandwidth=1.0)
    optimizer.apply([tf.zeros(3)], [variable])
    np.testing.assert_array_equal(variable.numpy(), np.ones(3))
    assert int(optimizer.rejected_steps.numpy()) == 0


def test_mirrored_strategy_takes_one_global_step(mirrored_strategy):
    x, y = data(n=16)
    strategy = mirrored_strategy
    with strategy.scope():
        bandwidth = keras_diffusion.Bandwidth(0.5)
        model = linear_model(bandwidth)
        model.compile(AnnealedStep(0.4, bandwidth=bandwidth, sigma_floor=0.0), "mse")
    kernel, bias = (v.numpy().astype("float64") for v in model.trainable_variables)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    expected = numpy_step(kernel, bias, x, y, 0.5, eta=0.4, floor=0.0)
    for variable, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-5, atol=1e-6)


def test_config_round_trip():
    optimizer = AnnealedStep(0.25, bandwidth=0.3, sigma_floor=0.02, clipvalue=5.0)
    restored = AnnealedStep.from_config(optimizer.get_config())
    assert restored.get_config() == optimizer.get_config()
    serialized = keras.saving.serialize_keras_object(
        AnnealedStep(0.25, bandwidth=keras_diffusion.Bandwidth(0.4))
    )
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored.get_bandwidth(), keras_diffusion.Bandwidth)
    assert float(restored.get_bandwidth().value) == pytest.approx(0.4)


def test_keras_round_trip_keeps_training(tmp_path):
    x, y = data()
    bandwidth = keras_diffusion.Bandwidth(0.6)
    model = linear_model(bandwidth)
    model.compile(AnnealedStep(0.1, bandwidth=bandwidth, sigma_floor=0.03), "mse")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    path = str(tmp_path / "annealed.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    optimizer = restored.optimizer
    assert isinstance(optimizer, AnnealedStep)
    assert optimizer.sigma_floor == pytest.approx(0.03)
    assert float(optimizer.learning_rate) == pytest.approx(0.1)
    assert int(optimizer.iterations.numpy()) == 1
    # Re-linked as documented, the optimizer reads the restored model's sigma.
    optimizer.set_bandwidth(restored)
    assert optimizer.get_bandwidth() is keras_diffusion.bandwidths(restored)[0]
    keras_diffusion.set_sigma(restored, 0.2)
    assert float(optimizer.sigma()) == pytest.approx(0.2)
    before = restored.get_weights()
    restored.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    moved = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(restored.get_weights(), before)))
    assert moved == pytest.approx(0.1 * 0.2, rel=1e-4)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="-0.1"):
        AnnealedStep(0.1, bandwidth=1.0, sigma_floor=-0.1)
    with pytest.raises(ValueError, match="nan"):
        AnnealedStep(0.1, bandwidth=float("nan"))
    with pytest.raises(ValueError, match="'wide'"):
        AnnealedStep(0.1, bandwidth="wide")
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="0 distinct bandwidths"):
        AnnealedStep(0.1, bandwidth=plain)
