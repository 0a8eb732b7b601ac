"""GaussianContinuation on the 2-D test functions of the paper (eq. 9, Figure 4; Ackley, App. D).

The optimizer's ``step(closure)`` needs only ``variables``, ``params``, ``local_loss`` and
``all_reduce`` of a closure; :class:`FunctionClosure` gives them for a function of one weight
vector, so that thousands of steps run in one ``tf.function`` (the same code path as
``model.fit``: only the loss differs).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_diffusion.optimizers import GaussianContinuation

_CENTER = np.array([2.0, 2.0], "float32")


class FunctionClosure:
    """The closure of ``f(theta)`` for a single weight vector ``theta``."""

    def __init__(self, function, theta):
        self.function = function
        self.variables = [keras.Variable(np.asarray(theta, "float32"), name="theta")]

    @property
    def params(self):
        return [v.value for v in self.variables]

    def local_loss(self, params):
        return self.function(params[0])

    def all_reduce(self, values):
        return values


def saddle(a):
    """Eq. (9) with minima near (2, 2) and (-2, -2) and the saddle at the origin."""

    def f(theta):
        d1 = tf.reduce_sum((theta - _CENTER) ** 2)
        d2 = tf.reduce_sum((theta + _CENTER) ** 2)
        return a * (d1 + d2) - tf.exp(-d1 / 2) - tf.exp(-d2 / 2)

    return f


def saddle_smoothed_lambda_gradient(a, variance):
    """Closed-form dg/dlambda of eq. (9) at the origin (m = 2, ||theta_hat||^2 = 8).

    ``g = a (d1 + d2 + 2 m lambda) - sum_k exp(-d_k / (2u)) / u`` with ``u = 1 + lambda``.
    """
    u = 1.0 + variance
    return 4 * a + 2 * np.exp(-4 / u) * (u - 4) / u**3


def ackley(theta):
    r = tf.sqrt(0.5 * tf.reduce_sum(theta**2) + 1e-12)
    c = 0.5 * tf.reduce_sum(tf.cos(2 * np.pi * theta))
    return -20 * tf.exp(-0.2 * r) - tf.exp(c) + 20 + np.e


def run(optimizer, closure, steps):
    optimizer.build(closure.variables)

    @tf.function
    def loop():
        lambdas = tf.TensorArray("float32", size=steps)
        for i in tf.range(steps):
            optimizer.minimize_closure(closure)
            lambdas = lambdas.write(i, optimizer.variance.value)
        return lambdas.stack()

    return loop().numpy(), closure.variables[0].numpy()


def minimizer(function, start, steps=3000, learning_rate=0.1):
    theta = tf.Variable(np.asarray(start, "float32"))
    sgd = keras.optimizers.SGD(learning_rate)

    @tf.function
    def loop():
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                loss = function(theta)
            sgd.apply([tape.gradient(loss, theta)], [theta])

    loop()
    return theta.numpy()


def continuation(a_lr, regularization=0.0, warmup=300, b_lr=0.01, **kwargs):
    return GaussianContinuation(
        keras.optimizers.SGD(a_lr),
        variance=3.0,
        variance_optimizer=keras.optimizers.SGD(b_lr),
        regularization=regularization,
        warmup_steps=warmup,
        seed=3,
        **kwargs,
    )


def test_good_saddle_lambda_falls_and_a_minimum_is_reached():
    """a = 0.01 (Figure 4b): lambda decreases from 3 toward 0 and theta reaches a minimum."""
    f = saddle(0.01)
    lambdas, theta = run(
        continuation(0.2, num_samples=4, b_lr=0.02), FunctionClosure(f, [1.0, -1.0]), 2500
    )
    target = minimizer(f, np.sign(theta[0]) * _CENTER)
    assert np.linalg.norm(theta - target) < 0.25, (theta, target)  # sigma ~ 0.2 left
    assert lambdas[299] == pytest.approx(3.0)  # held during the warm-up
    assert lambdas[-1] < 0.06


def test_bad_saddle_stalls_without_regularization_and_escapes_with_it():
    """a = 0.02 (Figure 4a): at the convex minimum of the warm-up (the origin), plain
    Algorithm 2 stops at the lambda* > 0 where dg/dlambda = tr(H)/2 = 0; with beta m added
    (eq. 12) lambda keeps falling and theta reaches a minimum of f."""
    a = 0.02
    grid = np.linspace(0.05, 3.0, 20000)
    roots = grid[np.where(np.diff(np.sign(saddle_smoothed_lambda_gradient(a, grid))))[0]]
    assert len(roots) == 1
    stall = roots[0]
    # theta held at the origin (a negligible step: the symmetric, many-sample limit).
    lambdas, theta = run(
        continuation(1e-9, num_samples=8, warmup=0, b_lr=0.05, estimator="pathwise"),
        FunctionClosure(saddle(a), [0.0, 0.0]),
        2000,
    )
    assert np.linalg.norm(theta) < 1e-3
    assert np.mean(lambdas[-500:]) == pytest.approx(stall, rel=0.1)
    assert np.all(lambdas[-500:] > 0.5 * stall)
    # beta m (m = 2) above max(-dg/dlambda) on (0, 3): lambda falls past lambda*, theta escapes.
    beta = 0.6 * float(-saddle_smoothed_lambda_gradient(a, grid).min())
    f = saddle(a)
    lambdas, theta = run(
        continuation(0.2, regularization=beta, num_samples=4, warmup=0, b_lr=0.02),
        FunctionClosure(f, [0.0, 0.0]),
        1500,
    )
    assert lambdas[-1] < 0.1 * stall
    target = minimizer(f, np.sign(theta[0]) * _CENTER)
    assert np.linalg.norm(theta - target) < 0.25, (theta, target)  # sigma ~ 0.2 left


def test_ackley_continuation_reaches_the_global_basin_where_gradient_descent_stalls():
    start = [3.3, -2.7]
    descent = minimizer(ackley, start, steps=2000, learning_rate=0.01)
    assert np.linalg.norm(descent) > 2.0  # a local minimum far from the origin
    optimizer = GaussianContinuation(
        keras.optimizers.SGD(0.01),
        variance=1.0,
        schedule="geometric",
        decay=0.995,
        warmup_steps=200,
        num_samples=8,
        seed=5,
    )
    lambdas, theta = run(optimizer, FunctionClosure(ackley, start), 2000)
    assert lambdas[-1] < 1e-3
    assert np.linalg.norm(theta) < 0.1  # the global minimum (the next minima are at ~1)


@pytest.mark.parametrize("estimator", ["pathwise", "score"])
def test_lambda_gradient_is_half_the_hessian_trace(estimator):
    """Theorem 2 (eq. 6): E[the lambda gradient] = dg/dlambda = tr(d2g/dtheta2) / 2.

    f = sum(sin theta) + theta^T Q theta / 2 has the closed form
    g = exp(-lambda/2) sum(sin theta) + theta^T Q theta / 2 + lambda tr(Q) / 2; the trace of
    its Hessian is also estimated by ``keras_diffusion.curvature.hutchinson_trace`` on
    ``E_eps Hf(theta + sqrt(lambda) eps)``.
    """
    from keras_diffusion.curvature import products, spectra

    rng = np.random.default_rng(0)
    m, variance = 6, 0.5
    root = rng.standard_normal((m, m)).astype("float32")
    q = tf.constant(root @ root.T / m + np.eye(m, dtype="float32"))
    theta0 = rng.uniform(-2, 2, m).astype("float32")

    def f(theta):  # rows of a matrix or one vector
        quadratic = 0.5 * tf.reduce_sum(theta * tf.linalg.matvec(q, theta), -1)
        return tf.reduce_sum(tf.sin(theta), -1) + quadratic

    exact = -0.5 * np.exp(-variance / 2) * np.sin(theta0).sum() + 0.5 * np.trace(q.numpy())
    draws = tf.constant(rng.standard_normal((2000, m)).astype("float32"))

    def smoothed(params):
        return tf.reduce_mean(f(params[0] + np.sqrt(variance) * draws))

    trace = spectra.hutchinson_trace(
        lambda v: products.hvp(smoothed, [tf.constant(theta0)], v), [theta0], num_probes=100
    )
    assert 0.5 * float(trace.trace) == pytest.approx(exact, abs=4 * float(trace.standard_error))
    steps, samples = (600, 4) if estimator == "pathwise" else (1500, 8)
    optimizer = GaussianContinuation(
        keras.optimizers.SGD(1e-30),  # theta fixed: every step estimates at theta0
        variance=variance,
        variance_optimizer=keras.optimizers.SGD(1e-30),
        estimator=estimator,
        num_samples=samples,
        seed=11,
    )
    closure = FunctionClosure(f, theta0)
    optimizer.build(closure.variables)

    @tf.function
    def loop():
        values = tf.TensorArray("float32", size=steps)
        for i in tf.range(steps):
            optimizer.minimize_closure(closure)
            values = values.write(i, optimizer.variance_gradient.value)
        return values.stack()

    estimates = loop().numpy()
    error = estimates.std() / np.sqrt(steps)
    assert estimates.mean() == pytest.approx(0.5 * float(trace.trace), abs=5 * error + 0.05)
    assert estimates.mean() == pytest.approx(exact, abs=5 * error)
