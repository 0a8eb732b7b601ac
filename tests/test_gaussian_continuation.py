"""GaussianContinuation in model.fit: numpy transcription of a step, schedules, guard, saving,
distribution and argument checks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_diffusion as kd
from keras_diffusion.optimizers import GaussianContinuation

X = np.random.default_rng(0).standard_normal((8, 3)).astype("float32")
Y = np.random.default_rng(1).standard_normal((8, 2)).astype("float32")


def linear_model(seed=0):
    keras.utils.set_random_seed(seed)
    return kd.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


def numpy_step(w, b, eps, variance, x, y, lr, estimator):
    """Eq. (7) + (8) for ``mse`` of ``x w + b``: mean over the samples of loss, gradient and
    lambda gradient at ``theta + sqrt(lambda) eps``."""
    losses, gw, gb, lam = [], 0.0, 0.0, []
    for ew, eb in eps:
        pw, pb = w + np.sqrt(variance) * ew, b + np.sqrt(variance) * eb
        r = x @ pw + pb - y
        loss = np.mean(r**2)
        dw, db = 2 * x.T @ r / r.size, 2 * r.sum(0) / r.size
        squared = (ew**2).sum() + (eb**2).sum()
        if estimator == "score":
            lam.append((squared - w.size - b.size) / (2 * variance) * loss)
        else:
            lam.append(((dw * ew).sum() + (db * eb).sum()) / (2 * np.sqrt(variance)))
        losses.append(loss)
        gw, gb = gw + dw / len(eps), gb + db / len(eps)
    return w - lr * gw, b - lr * gb, np.mean(lam)


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_steps_match_a_numpy_transcription(estimator):
    model = linear_model()
    beta, lr, b_lr, variance = 0.01, 0.1, 0.05, 0.3
    optimizer = GaussianContinuation(
        keras.optimizers.SGD(lr), variance=variance, variance_optimizer=keras.optimizers.SGD(b_lr),
        regularization=beta, warmup_steps=1, estimator=estimator, num_samples=2, seed=7,
    )
    model.compile(optimizer=optimizer, loss="mse")
    optimizer.build(model.trainable_variables)
    log_variance = np.log(variance)
    for step in range(3):
        w, b = (v.numpy() for v in model.trainable_variables)
        eps = [[e.numpy() for e in optimizer.draw(model.trainable_variables, j)] for j in range(2)]
        lam = np.exp(log_variance)
        w, b, lam_grad = numpy_step(w, b, eps, lam, X, Y, lr, estimator)
        history = model.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        np.testing.assert_allclose(model.trainable_variables[0].numpy(), w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.trainable_variables[1].numpy(), b, rtol=1e-5, atol=1e-6)
        assert history.history["variance"][-1] == pytest.approx(lam, rel=1e-5)
        if step >= 1:  # after the warm-up: s = log lambda by gradient descent, eq. (12)
            expected = lam_grad + beta * 8
            assert history.history["variance_gradient"][-1] == pytest.approx(expected, rel=1e-4)
            log_variance -= b_lr * lam * expected
        else:
            assert history.history["variance_gradient"][-1] == 0.0
        distance = np.mean([np.sqrt(lam * sum((e**2).sum() for e in pair)) for pair in eps])
        assert history.history["perturbation_norm"][-1] == pytest.approx(distance, rel=1e-5)
    assert optimizer.log_variance.numpy() == pytest.approx(log_variance, rel=1e-5)
    # Evaluation and predict see the unperturbed weights.
    np.testing.assert_allclose(model.predict(X, verbose=0), X @ w + b, rtol=1e-5, atol=1e-5)


def test_inner_adam_gets_the_perturbed_gradient():
    model, reference = linear_model(), linear_model()
    optimizer = GaussianContinuation(keras.optimizers.Adam(0.01), variance=0.1, schedule="constant",
                                     seed=2)
    model.compile(optimizer=optimizer, loss="mse")
    optimizer.build(model.trainable_variables)
    adam = keras.optimizers.Adam(0.01)
    for _ in range(3):
        eps = [e.numpy() for e in optimizer.draw(model.trainable_variables)]
        w, b = (v.numpy() for v in reference.trainable_variables)
        grads = numpy_step(w, b, [eps], 0.1, X, Y, 1.0, "score")
        adam.apply([w - grads[0], b - grads[1]], reference.trainable_variables)
        model.fit(X, Y, batch_size=8, verbose=0)
    for a, b in zip(model.trainable_variables, reference.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert int(optimizer.inner_optimizer.iterations.numpy()) == 3


@pytest.mark.parametrize(
    "schedule, decay, expected",
    [("geometric", 0.5, lambda k: 0.8 * 0.5**k), ("polynomial", 2.0, lambda k: 0.8 / (1 + k) ** 2)],
)
def test_fixed_schedules_after_the_warmup(schedule, decay, expected):
    model = linear_model()
    optimizer = GaussianContinuation(keras.optimizers.SGD(0.01), variance=0.8, schedule=schedule,
                                     decay=decay, warmup_steps=2, seed=1)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(X, Y, batch_size=2, epochs=1, verbose=0)  # steps 0-3
    values = []
    for _ in range(3):
        values.append(float(model.fit(X, Y, batch_size=8, verbose=0).history["variance"][-1]))
    # steps 4, 5, 6 -> k = 2, 3, 4
    np.testing.assert_allclose(values, [expected(k) for k in (2, 3, 4)], rtol=1e-5)
    assert optimizer.log_variance.numpy() == pytest.approx(np.log(expected(4)), rel=1e-5)


def test_non_finite_step_is_rejected_whole():
    model = linear_model()
    optimizer = GaussianContinuation(keras.optimizers.Adam(0.01), variance=0.1, seed=1,
                                     variance_learning_rate=0.1)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(X, Y, batch_size=8, verbose=0)
    published = {id(v) for v in optimizer.diagnostics.values()}
    state = [v for v in optimizer.variables  # all but the diagnostics and the step counter
             if id(v) not in published and v is not optimizer.iterations]
    before = [v.numpy().copy() for v in state]
    weights = [v.numpy().copy() for v in model.trainable_variables]
    bad = X.copy()
    bad[0, 0] = np.nan
    model.fit(bad, Y, batch_size=8, verbose=0)
    for a, b in zip(weights, model.trainable_variables):
        np.testing.assert_array_equal(a, b.numpy())
    for a, b in zip(before, state):
        np.testing.assert_array_equal(a, b.numpy())
    assert int(optimizer.rejected_steps.numpy()) == 1
    assert int(optimizer.inner_optimizer.iterations.numpy()) == 1


def test_keras_round_trip_keeps_the_state_and_continues_identically(tmp_path):
    model = linear_model()
    model.compile(
        optimizer=GaussianContinuation(keras.optimizers.Adam(0.01), variance=0.2,
                                       regularization=1e-3, seed=4),
        loss="mse",
    )
    model.fit(X, Y, batch_size=4, epochs=2, verbose=0)
    path = str(tmp_path / "gc.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    model.fit(X, Y, batch_size=4, epochs=1, verbose=0)
    loaded.fit(X, Y, batch_size=4, epochs=1, verbose=0)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    assert loaded.optimizer.log_variance.numpy() == pytest.approx(
        model.optimizer.log_variance.numpy(), rel=1e-6
    )


def _fit_under(strategy, **kwargs):
    with strategy.scope():
        model = linear_model()
        model.compile(
            optimizer=GaussianContinuation(keras.optimizers.Adam(0.01), variance=0.2,
                                           regularization=1e-3, seed=4, num_samples=2, **kwargs),
            loss="mse",
        )
    history = model.fit(X, Y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    return [v.numpy() for v in model.trainable_variables], history.history


def test_two_replicas_match_one_device(mirrored_strategy):
    single, single_logs = _fit_under(tf.distribute.get_strategy())
    mirrored, mirrored_logs = _fit_under(mirrored_strategy)
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key in ("variance", "variance_gradient", "perturbation_norm", "loss"):
        np.testing.assert_allclose(single_logs[key], mirrored_logs[key], rtol=1e-4)
    independent, _ = _fit_under(mirrored_strategy, independent_replicas=True)
    assert not np.allclose(independent[0], mirrored[0])


def test_argument_checks():
    sgd = keras.optimizers.SGD(0.1)
    with pytest.raises(ValueError, match="gradient-based"):
        GaussianContinuation(kd.optimizers.GaussNewton())
    with pytest.raises(ValueError, match="decay"):
        GaussianContinuation(sgd, schedule="geometric")
    with pytest.raises(ValueError, match="schedule"):
        GaussianContinuation(sgd, schedule="cosine")
    with pytest.raises(ValueError, match="variance"):
        GaussianContinuation(sgd, variance=0.0)
    with pytest.raises(ValueError, match="clipnorm"):
        GaussianContinuation(keras.optimizers.SGD(0.1, clipnorm=1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        GaussianContinuation(keras.optimizers.AdamW(0.1))
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    plain.compile(optimizer=GaussianContinuation(sgd), loss="mse")
    with pytest.raises(TypeError, match="closure optimizer"):
        plain.fit(X, Y, verbose=0)


def test_jit_compile_gives_the_same_steps():
    results = []
    for jit in (False, True):
        model = linear_model()
        model.compile(GaussianContinuation(keras.optimizers.Adam(0.01), variance=0.1, seed=3,
                                           num_samples=2), "mse", jit_compile=jit)
        model.fit(X, Y, batch_size=4, epochs=2, verbose=0, shuffle=False)
        results.append([v.numpy() for v in model.trainable_variables]
                       + [model.optimizer.log_variance.numpy()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
