"""EntropySGD, HJ and HEAT (Chaudhari et al. 2018, sec. 7) against numpy transcriptions.

The model is linear, ``f_mb(w) = mean((X_b w - y_b)^2)``, so each mini-batch gradient is
``2 X_b^T (X_b w - y_b) / B`` in numpy; every train step of ``fit`` is one inner step on the
next mini-batch (``shuffle=False``), as in the paper.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_diffusion as kd
from keras_diffusion.optimizers import HEAT, HJ, EntropySGD

BATCH = 4


def data(steps, seed=0, features=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps * BATCH, features)).astype("float32")
    y = rng.normal(size=(steps * BATCH, 1)).astype("float32")
    return x, y


def linear_model(w0):
    model = kd.Sequential([keras.Input((w0.shape[0],)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign(w0)
    return model


def gradient(w, xb, yb):
    return 2.0 * xb.T @ (xb @ w - yb) / len(xb)


def reference(optimizer, w0, x, y, draws):
    """Eqs. (32)-(33) (Entropy-SGD, HJ) or (35) (HEAT), momentum (7.4), scoping (7.5)."""
    c = optimizer.get_config()
    L, eta, delta = c["num_inner_steps"], c["learning_rate"], c["momentum"]
    heat = isinstance(optimizer, HEAT)
    w0 = w0.astype("float64")
    xk, z, gammas = w0, w0, []
    for k in range(len(x) // BATCH):
        xb, yb = x[k * BATCH:(k + 1) * BATCH], y[k * BATCH:(k + 1) * BATCH]
        phase, outer = k % L, k // L
        gamma = c["gamma"] * (1.0 - c["gamma_decay"]) ** outer
        gammas.append(gamma)
        if phase == 0:
            yk, mu = z.copy(), (np.zeros_like(z) if heat else z.copy())
        if heat:
            yk = z + np.sqrt(gamma) * draws[k]
            mu = mu + gradient(yk, xb, yb)
        else:
            eta_y = c["inner_learning_rate"]
            yk = (
                yk
                - eta_y * (gradient(yk, xb, yb) + (yk - z) / gamma)
                + np.sqrt(eta_y * c["extrinsic_noise"]) * draws[k]
            )
            mu = c["alpha"] * mu + (1.0 - c["alpha"]) * yk
        if phase == L - 1:
            direction = mu / L if heat else (z - mu) / gamma
            x_new = z - eta * direction
            z = x_new + delta * (x_new - xk)
            xk = x_new
    return dict(x=xk, z=z, y=yk, mu=mu, gammas=gammas)


class GammaTrace(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.gammas = []

    def on_train_batch_end(self, batch, logs=None):
        self.gammas.append(float(self.model.optimizer.current_gamma.numpy()))


def train(optimizer, steps, w0=None, seed=0, jit_compile=False):
    x, y = data(steps, seed)
    w0 = np.random.default_rng(seed + 1).normal(size=(3, 1)).astype("float32") if w0 is None else w0
    model = linear_model(w0)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    trace = GammaTrace()
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[trace])
    draws = [optimizer.noise([model.layers[0].kernel], k)[0].numpy() for k in range(steps)]
    return model, reference(optimizer, w0, x, y, draws), trace.gammas


def state(optimizer, name):
    return getattr(optimizer, name)[0].numpy()


OPTIMIZERS = {
    "entropy_sgd": lambda: EntropySGD(
        0.3, num_inner_steps=3, alpha=0.75, extrinsic_noise=1e-2, gamma=0.5,
        gamma_decay=0.1, momentum=0.9, seed=3, steps_per_epoch=4,
    ),
    "hj": lambda: HJ(0.3, num_inner_steps=3, gamma=0.5, gamma_decay=0.1, momentum=0.9),
    "heat": lambda: HEAT(0.2, num_inner_steps=3, gamma=0.05, gamma_decay=0.1, momentum=0.9, seed=3),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_update_matches_numpy_transcription(name):
    # 7 steps with L = 3: two outer steps (with momentum and a scoped gamma), then one
    # inner step of the third.
    optimizer = OPTIMIZERS[name]()
    model, ref, gammas = train(optimizer, steps=7)
    kernel = model.layers[0].kernel.numpy()
    np.testing.assert_allclose(kernel, ref["x"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state(optimizer, "anchor"), ref["z"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state(optimizer, "inner_iterate"), ref["y"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state(optimizer, "average"), ref["mu"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(ref["x"], ref["z"])  # the momentum acted
    # Scoping: gamma_0 (1 - gamma_1)^(k // L) at step k (sec. 7.5).
    np.testing.assert_allclose(gammas, ref["gammas"], rtol=1e-6)
    assert int(optimizer.outer_steps.numpy()) == 2
    assert int(optimizer.gradient_evaluations.numpy()) == 7
    if name == "entropy_sgd":
        assert float(optimizer.effective_epochs.numpy()) == pytest.approx(7 / 4)


def test_hj_under_jit_compile_matches_the_transcription():
    optimizer = OPTIMIZERS["hj"]()
    model, ref, _ = train(optimizer, steps=7, jit_compile=True)
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), ref["x"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state(optimizer, "inner_iterate"), ref["y"], rtol=1e-5, atol=1e-6)


def test_hj_approximates_the_proximal_point_step():
    # f(w) = mean((X w - y)^2) = w^T A w / 2 - b^T w + c on one fixed batch. With eta = gamma
    # and enough inner steps, one HJ outer step lands on prox_{gamma f}(x), the minimizer of
    # f(w) + |w - x|^2 / (2 gamma): (A + I / gamma) w = b + x / gamma, i.e. the implicit
    # gradient step w = x - gamma grad f(w).
    rng = np.random.default_rng(4)
    xb = (rng.normal(size=(BATCH, 3)) * 0.4).astype("float32")
    yb = rng.normal(size=(BATCH, 1)).astype("float32")
    a = 2.0 * xb.T.astype("float64") @ xb / BATCH
    b = 2.0 * xb.T.astype("float64") @ yb / BATCH
    gamma, steps = 1.0, 30
    w0 = rng.normal(size=(3, 1)).astype("float32")
    model = linear_model(w0)
    optimizer = HJ(gamma, num_inner_steps=steps, inner_learning_rate=0.5, gamma=gamma,
                   gamma_decay=0.0, momentum=0.0)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.tile(xb, (steps, 1)), np.tile(yb, (steps, 1)), batch_size=BATCH,
              shuffle=False, verbose=0)
    prox = np.linalg.solve(a + np.eye(3) / gamma, b + w0 / gamma)
    kernel = model.layers[0].kernel.numpy()
    np.testing.assert_allclose(kernel, prox, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kernel, w0 - gamma * (a @ prox - b), rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(prox - w0) > 0.1


def test_evaluate_predict_and_save_see_the_anchor(tmp_path):
    # Stopped mid-inner-loop (6 steps, L = 4): the model holds x, the optimizer y.
    optimizer = OPTIMIZERS["entropy_sgd"]()
    optimizer_config = optimizer.get_config()
    optimizer = EntropySGD.from_config({**optimizer_config, "num_inner_steps": 4})
    model, ref, _ = train(optimizer, steps=6)
    x, y = data(6, seed=9)
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), ref["x"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(x, verbose=0), x @ ref["x"], rtol=1e-5, atol=1e-5)
    loss = model.evaluate(x, y, verbose=0)
    assert loss == pytest.approx(np.mean((x @ ref["x"] - y) ** 2), rel=1e-5)
    assert loss != pytest.approx(np.mean((x @ ref["y"] - y) ** 2), rel=1e-3)

    path = str(tmp_path / "mid_loop.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is EntropySGD
    assert loaded.optimizer.get_config() == optimizer.get_config()
    np.testing.assert_array_equal(loaded.layers[0].kernel.numpy(), model.layers[0].kernel.numpy())
    for name in ("anchor", "inner_iterate", "average"):
        np.testing.assert_array_equal(state(loaded.optimizer, name), state(optimizer, name))
    assert int(loaded.optimizer.inner_steps.numpy()) == 6
    # Both continue identically: the inner loop resumes at phase 2.
    for m in (model, loaded):
        m.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    np.testing.assert_array_equal(loaded.layers[0].kernel.numpy(), model.layers[0].kernel.numpy())
    assert int(loaded.optimizer.outer_steps.numpy()) == 3


def test_non_finite_gradient_is_rejected_and_the_inner_loop_holds():
    x, y = data(3)
    x[BATCH:2 * BATCH] = np.nan
    w0 = np.ones((3, 1), "float32")
    model = linear_model(w0)
    optimizer = EntropySGD(num_inner_steps=2)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    assert int(optimizer.rejected_steps.numpy()) == 1
    assert int(optimizer.inner_steps.numpy()) == 2
    assert int(optimizer.gradient_evaluations.numpy()) == 3
    assert np.all(np.isfinite(model.layers[0].kernel.numpy()))
    assert np.all(np.isfinite(state(optimizer, "inner_iterate")))


def mlp():
    return kd.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(4, "tanh", kernel_initializer=keras.initializers.GlorotNormal(1)),
        keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotNormal(2)),
    ])


@pytest.mark.parametrize("make", [
    lambda: EntropySGD(0.3, num_inner_steps=3, extrinsic_noise=1e-2, gamma=0.5, seed=1),
    lambda: HEAT(0.2, num_inner_steps=3, gamma=0.05, seed=1),
], ids=["entropy_sgd", "heat"])
def test_two_replicas_equal_one_device(mirrored_strategy, make):
    x, y = data(7)
    x = x[: 4 * 8]
    y = y[: 4 * 8]
    results = []
    for strategy in (tf.distribute.get_strategy(), mirrored_strategy):
        with strategy.scope():
            model = mlp()
            model.compile(optimizer=make(), loss="mse")
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
        results.append((model.get_weights(), state(model.optimizer, "inner_iterate")))
    for single, mirrored in zip(results[0][0] + [results[0][1]], results[1][0] + [results[1][1]]):
        np.testing.assert_allclose(mirrored, single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: EntropySGD(gamma=0.0), "gamma"),
    (lambda: EntropySGD(alpha=1.0), "alpha"),
    (lambda: HJ(momentum=1.0), "momentum"),
    (lambda: HEAT(num_inner_steps=0), "num_inner_steps"),
    (lambda: HEAT(gamma_decay=1.0), "gamma_decay"),
    (lambda: EntropySGD(extrinsic_noise=-1.0), "extrinsic_noise"),
    (lambda: EntropySGD(steps_per_epoch=0), "steps_per_epoch"),
])
def test_bad_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_config_round_trips(name):
    optimizer = OPTIMIZERS[name]()
    config = optimizer.get_config()
    restored = type(optimizer).from_config(config)
    assert restored.get_config() == config
    assert keras.optimizers.deserialize(keras.optimizers.serialize(optimizer)).get_config() == config
