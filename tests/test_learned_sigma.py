"""Learned sigma (Algorithm 2 of Lersch et al. on the closed-form diffused cost)."""

import math

import keras
import numpy as np
import pytest

import keras_diffusion as kd

X = np.random.default_rng(0).standard_normal((16, 3)).astype("float32")
Y = np.random.default_rng(1).standard_normal((16, 1)).astype("float32")
_erf = np.vectorize(math.erf)


def diffused_model(bandwidth):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4)(inputs)
    hidden = kd.layers.DiffusedActivation("erf", bandwidth=bandwidth)(hidden)
    return keras.Model(inputs, keras.layers.Dense(1)(hidden))


def numpy_loss(weights, log_variance):
    """mse of Dense -> E[erf(h + sigma z)] = erf(h / sqrt(1 + 2 sigma^2)) -> Dense."""
    w1, b1, w2, b2 = weights
    sigma2 = np.exp(log_variance)
    hidden = _erf((X @ w1 + b1) / np.sqrt(1 + 2 * sigma2))
    return np.mean((hidden @ w2 + b2 - Y) ** 2)


def test_sigma_step_is_gradient_descent_on_log_variance_with_the_penalty():
    c, lr = 0.3, 0.1
    bandwidth = kd.Bandwidth(0.7, learned=True, regularization=c)
    model = diffused_model(bandwidth)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    weights = [v.numpy().astype("float64") for v in model.trainable_variables
               if v is not bandwidth.variable]
    s = float(bandwidth.variable.numpy())
    assert s == pytest.approx(2 * np.log(0.7))
    assert float(bandwidth.value) == pytest.approx(0.7)
    h = 1e-4
    exact_gradient = (numpy_loss(weights, s + h) - numpy_loss(weights, s - h)) / (2 * h)
    history = model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    # The logged loss includes the penalty c * sigma^2 (eq. 12: c added to dg/dlambda).
    assert history.history["loss"][0] == pytest.approx(
        numpy_loss(weights, s) + c * np.exp(s), rel=1e-5
    )
    expected = s - lr * (exact_gradient + c * np.exp(s))
    assert float(bandwidth.variable.numpy()) == pytest.approx(expected, rel=1e-4)
    assert kd.get_sigma(model) == pytest.approx(np.exp(expected / 2), rel=1e-4)


def test_a_schedule_cannot_drive_a_learned_bandwidth():
    model = diffused_model(kd.Bandwidth(0.5, learned=True))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="learned"):
        model.fit(X, Y, verbose=0, callbacks=[kd.callbacks.LinearSigma(1.0, duration=2)])
    with pytest.raises(ValueError, match="learned"):
        kd.set_sigma(model, 0.1)


def test_learned_bandwidth_round_trips(tmp_path):
    bandwidth = kd.Bandwidth(0.5, learned=True, regularization=0.01)
    model = diffused_model(bandwidth)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(X, Y, epochs=2, verbose=0)
    path = str(tmp_path / "learned.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    (restored,) = kd.bandwidth.bandwidths(loaded)
    assert restored.learned and restored.regularization == 0.01
    assert kd.get_sigma(loaded) == pytest.approx(kd.get_sigma(model))
    assert kd.get_sigma(model) != pytest.approx(0.5)
    np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0),
                               rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="sigma > 0"):
        kd.Bandwidth(0.0, learned=True)
    with pytest.raises(ValueError, match="learned=True"):
        kd.Bandwidth(0.5, regularization=0.1)
    with pytest.raises(ValueError, match="regularization"):
        kd.Bandwidth(0.5, learned=True, regularization=-1.0)
