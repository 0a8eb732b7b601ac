"""keras_diffusion.activations against numerical integration of h(x + sigma z) phi(z)."""

import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special

import keras_diffusion as kd
from keras_diffusion import activations

PLAIN = {  # g with h(x) = g(slope x), in numpy (independent of the library)
    "linear": lambda y: y,
    "relu": lambda y: np.maximum(y, 0.0),
    "sign": np.sign,
    "erf": special.erf,
    "tanh": np.tanh,
    "sigmoid": special.expit,
}
EXACT = ("linear", "relu", "sign")
APPROXIMATE = ("erf", "tanh", "sigmoid")

_GL_T, _GL_W = np.polynomial.legendre.leggauss(32)


def expect(g, x, sigma, panels=100, half_width=10.0):
    """E[g(x + sigma z)], z ~ N(0, 1), by composite Gauss-Legendre in z split at z = -x / sigma.

    ``panels`` panels of 32 nodes on each side of the split, on ``z in [-10, 10]``; float64.
    """
    x, sigma = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(sigma, np.float64))
    split = np.clip(-x / np.where(sigma > 0, sigma, 1.0), -half_width, half_width)
    split = np.where(sigma > 0, split, 0.0)[..., None]
    edges = np.arange(panels)[:, None] / panels
    v = (edges + (_GL_T + 1) / (2 * panels)).ravel()
    wv = np.tile(_GL_W / (2 * panels), panels)
    total = 0.0
    for lo, hi in ((-half_width, split), (split, half_width)):
        z = lo + (hi - lo) * v
        weights = (hi - lo) * wv * np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
        total = total + np.sum(weights * g(x[..., None] + sigma[..., None] * z), axis=-1)
    return total


def reference_moments(name, x, sigma, slope=1.0):
    g = PLAIN[name]
    h = lambda y: g(slope * y)  # noqa: E731
    return expect(h, x, sigma), expect(lambda y: h(y) ** 2, x, sigma)


def moments64(name, x, sigma, slope=1.0, method="fast"):
    mean, second = activations.diffused_moments(
        name, tf.constant(x, tf.float64), sigma, slope=slope, method=method
    )
    return mean.numpy(), second.numpy()


# The error-bound grid of the module docstring, at a quarter of its resolution.
GRID_X, GRID_SIGMA = np.meshgrid(np.linspace(-8, 8, 81), np.linspace(0, 5, 26), indexing="ij")


@pytest.mark.parametrize("method", activations.METHODS)
@pytest.mark.parametrize("name,slope", [("linear", 1.0), ("relu", 1.0), ("relu", 1.5), ("sign", 1.0), ("sign", 2.0), ("linear", 0.7)])
def test_exact_forms_match_quadrature(name, slope, method):
    x, sigma = GRID_X[::2, ::2], GRID_SIGMA[::2, ::2]
    ref_mean, ref_second = reference_moments(name, x, sigma, slope)
    for s in np.unique(sigma):
        rows = sigma == s
        mean, second = moments64(name, x[rows], float(s), slope, method)
        np.testing.assert_allclose(mean, ref_mean[rows], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(second, ref_second[rows], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("slope", [1.0, 2.5])
def test_erf_mean_is_exact_eq_11(slope):
    for s in (0.1, 0.6, 2.0):
        x = np.linspace(-4, 4, 33)
        mean = activations.diffused_mean("erf", tf.constant(x), s, slope=slope).numpy()
        np.testing.assert_allclose(mean, expect(lambda y: special.erf(slope * y), x, s), atol=1e-13)


@pytest.mark.parametrize("method", activations.METHODS)
@pytest.mark.parametrize("name", APPROXIMATE)
def test_documented_error_bounds_hold(name, method):
    """max |error| over the grid <= the documented bound, and the bound is not loose (fast)."""
    function = activations.get(name)
    bounds = function.fast_error if method == "fast" else function.accurate_error
    ref_mean, ref_second = reference_moments(name, GRID_X, GRID_SIGMA)
    worst = np.zeros(2)
    for j, s in enumerate(GRID_SIGMA[0]):
        mean, second = moments64(name, GRID_X[:, j], float(s), method=method)
        worst = np.maximum(worst, [np.max(np.abs(mean - ref_mean[:, j])), np.max(np.abs(second - ref_second[:, j]))])
    for measured, bound, exact in zip(worst, bounds, function.fast_exact if method == "fast" else (True, True)):
        assert measured <= max(bound, 1e-13)
        if method == "fast" and not exact:
            assert measured > 0.8 * bound, "documented bound is loose; re-measure"


def test_slope_rescales_x_and_sigma():
    x = np.linspace(-3, 3, 13)
    for name in activations.names():
        for method in activations.METHODS:
            got = moments64(name, x, 0.4, slope=1.5, method=method)
            want = moments64(name, 1.5 * x, 0.6, method=method)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("method", activations.METHODS)
@pytest.mark.parametrize("name", sorted(PLAIN))
def test_approximations_against_quadrature_with_slope(name, method):
    x, s = np.linspace(-3, 3, 25), 0.45
    ref = reference_moments(name, x, s, slope=1.8)
    got = moments64(name, x, s, slope=1.8, method=method)
    tolerance = (activations.get(name).fast_error if method == "fast" else activations.get(name).accurate_error)
    for g, r, t in zip(got, ref, tolerance):
        np.testing.assert_allclose(g, r, atol=max(t, 1e-12))


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("slope", [1.0, 1.7])
def test_sigma_zero_is_bit_exact(dtype, slope):
    x = tf.constant([-1e30, -50.0, -2.0, -1e-30, 0.0, 1e-30, 0.3, 2.0, 50.0, 1e15], dtype)
    for name in activations.names():
        function = activations.get(name)
        plain = function(x, slope)
        for method in activations.METHODS:
            for sigma in (0.0, tf.constant(0.0, dtype), tf.Variable(0.0, dtype=dtype)):
                mean, second = activations.diffused_moments(name, x, sigma, slope=slope, method=method)
                assert np.array_equal(mean.numpy(), plain.numpy()), (name, method)
                want_second = tf.square(plain).numpy()
                if name == "linear":  # (slope x)^2 overflows at 1e30 exactly as h(x)^2 does
                    assert np.array_equal(second.numpy(), want_second)
                else:
                    assert np.array_equal(second.numpy(), want_second), (name, method)
                single = activations.diffused_mean(name, x, sigma, slope=slope, method=method)
                assert np.array_equal(single.numpy(), plain.numpy())


def test_sign_second_moment_convention_at_zero():
    x = tf.constant([-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(activations.diffused_second_moment("sign", x, 0.0), [1, 0, 1])
    np.testing.assert_array_equal(activations.diffused_second_moment("sign", x, 1e-3), [1, 1, 1])


def _grads(name, x, sigma, method, dtype=tf.float64):
    x = tf.Variable(x, dtype=dtype)
    s = tf.Variable(sigma, dtype=dtype)
    with tf.GradientTape(persistent=True) as tape:
        mean, second = activations.diffused_moments(name, x, s, method=method)
        total_mean, total_second = tf.reduce_sum(mean), tf.reduce_sum(second)
    zero = tf.UnconnectedGradients.ZERO  # the linear mean does not depend on sigma
    out = [tape.gradient(t, v, unconnected_gradients=zero) for t in (total_mean, total_second) for v in (x, s)]
    return [g.numpy() for g in out], mean.numpy(), second.numpy()


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("method", activations.METHODS)
def test_values_and_gradients_are_finite_everywhere(method, dtype):
    x = [-1e30, -1e4, -3.0, -1e-30, 0.0, 1e-30, 1e-20, 0.5, 1e4, 1e30]
    for name in activations.names():
        for sigma in (0.0, 1e-30, 1e-12, 0.3, 1.0, 1.5, 2.0, 7.0, 1e4):
            grads, mean, second = _grads(name, x, sigma, method, dtype)
            if name in ("linear", "relu"):  # h(1e30)^2 overflows float32 legitimately
                keep = np.abs(np.asarray(x)) < 1e15
                mean, second, grads = mean[keep], second[keep], [g if g.ndim == 0 else g[keep] for g in grads]
                if dtype == tf.float32:
                    grads = [g for g in grads if g.ndim]  # d/dsigma sums the overflowing entries
            assert np.all(np.isfinite(mean)) and np.all(np.isfinite(second)), (name, sigma)
            for g in grads:
                assert np.all(np.isfinite(g)), (name, sigma, grads)


@pytest.mark.parametrize("method", activations.METHODS)
@pytest.mark.parametrize("name", sorted(PLAIN))
def test_gradients_match_finite_differences(name, method):
    x = np.array([-2.3, -0.7, -0.05, 0.4, 1.1, 3.0])
    eps = 1e-6
    for sigma in (0.2, 0.9, 1.3, 2.6):
        (dm_dx, dm_ds, dq_dx, dq_ds), _, _ = _grads(name, x, sigma, method)
        plus, minus = moments64(name, x + eps, sigma, method=method), moments64(name, x - eps, sigma, method=method)
        np.testing.assert_allclose(dm_dx, (plus[0] - minus[0]) / (2 * eps), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(dq_dx, (plus[1] - minus[1]) / (2 * eps), rtol=1e-5, atol=1e-7)
        plus, minus = moments64(name, x, sigma + eps, method=method), moments64(name, x, sigma - eps, method=method)
        np.testing.assert_allclose(dm_ds, np.sum(plus[0] - minus[0]) / (2 * eps), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(dq_ds, np.sum(plus[1] - minus[1]) / (2 * eps), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", EXACT + ("erf",))
def test_gradients_of_exact_forms_match_quadrature_of_derivatives(name):
    """d/dx E[h(X)] = E[h'(X)] and d/dsigma E[h(X)] = E[h'(X) z], with X = x + sigma z."""
    x, sigma = np.array([-1.5, -0.2, 0.0, 0.6, 2.0]), 0.8
    derivative = {
        "linear": lambda y: np.ones_like(y),
        "relu": lambda y: (y > 0).astype(float),
        "sign": None,  # a delta: d/dx E[sign(X)] = 2 phi(x / sigma) / sigma
        "erf": lambda y: 2 / np.sqrt(np.pi) * np.exp(-(y**2)),
    }[name]
    (dm_dx, dm_ds, _, _), _, _ = _grads(name, x, sigma, "fast")
    if derivative is None:
        want_dx = 2 * np.exp(-0.5 * (x / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
        want_ds = -np.sum(want_dx * x / sigma)
    else:
        want_dx = expect(derivative, x, sigma)
        want_ds = sum(expect(lambda y, x0=x0: derivative(y) * (y - x0) / sigma, x0, sigma) for x0 in x)
    np.testing.assert_allclose(dm_dx, want_dx, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dm_ds, want_ds, rtol=1e-9, atol=1e-12)


def test_variance_is_never_negative():
    for name in activations.names():
        for method in activations.METHODS:
            for s in (0.0, 0.05, 0.7, 3.0):
                mean, second = moments64(name, GRID_X[:, 0], s, method=method)
                assert np.all(second - mean**2 >= 0), (name, method, s)


@pytest.mark.parametrize("dtype,tol", [(tf.float16, 2e-3), (tf.bfloat16, 1e-2), (tf.float32, 1e-6), (tf.float64, 0.0)])
def test_dtypes(dtype, tol):
    x = np.linspace(-3, 3, 13)
    for name in activations.names():
        for method in activations.METHODS:
            want = moments64(name, x, 0.8, method=method)
            got = activations.diffused_moments(name, tf.constant(x, dtype), 0.8, method=method)
            for g, w in zip(got, want):
                assert g.dtype == dtype and g.shape == x.shape
                np.testing.assert_allclose(g.numpy().astype(np.float64), w, rtol=tol, atol=tol * 10)


def test_shapes_are_preserved():
    x = tf.zeros([2, 3, 4])
    for name in activations.names():
        for method in activations.METHODS:
            assert activations.diffused_mean(name, x, 1.2, method=method).shape == x.shape
            assert activations.diffused_second_moment(name, x, 1.2, method=method).shape == x.shape


def test_moments_agree_with_single_functions():
    x = tf.constant(np.linspace(-3, 3, 9), tf.float32)
    for name in activations.names():
        for method in activations.METHODS:
            mean, second = activations.diffused_moments(name, x, 0.6, slope=1.3, method=method)
            np.testing.assert_array_equal(mean, activations.diffused_mean(name, x, 0.6, slope=1.3, method=method))
            np.testing.assert_array_equal(second, activations.diffused_second_moment(name, x, 0.6, slope=1.3, method=method))


def test_sigma_from_bandwidth_keras_variable_and_numpy():
    x = tf.constant([0.3, -1.0])
    want = activations.diffused_mean("tanh", x, 0.5)
    bandwidth = kd.Bandwidth(0.5)
    for sigma in (bandwidth, bandwidth.value, bandwidth.variable, np.float32(0.5), np.array(0.5), keras.Variable(0.5)):
        np.testing.assert_array_equal(activations.diffused_mean("tanh", x, sigma), want)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="'swish'.*linear, relu, sigmoid, sign, tanh"):
        activations.diffused_mean("swish", [1.0], 1.0)
    with pytest.raises(ValueError, match="'softsign'.*erf"):
        activations.get("softsign")
    assert set(activations.names()) >= {"linear", "relu", "erf", "sign", "tanh", "sigmoid"}
    assert activations.get(activations.get("erf")) is activations.get("erf")


@pytest.mark.parametrize("sigma", [-1.0, float("nan"), float("inf"), np.float64(-2.5)])
def test_bad_python_sigma_raises_eagerly_naming_it(sigma):
    expected = "finite and >= 0" if sigma < 0 else "a finite real number"
    with pytest.raises(ValueError, match=f"`sigma` must be {expected}, got {re.escape(repr(sigma))}"):
        activations.diffused_moments("relu", [1.0], sigma)


@pytest.mark.parametrize("sigma,pattern", [(-1.0, "-1"), (float("nan"), "nan"), (float("inf"), "inf")])
def test_bad_tensor_sigma_raises_also_inside_tf_function(sigma, pattern):
    value = tf.Variable(sigma)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"(?s)sigma must be finite and >= 0.*{pattern}"):
        activations.diffused_mean("erf", [1.0], value)
    graph = tf.function(lambda x: activations.diffused_moments("tanh", x, value)[1])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"(?s)sigma must be finite and >= 0.*{pattern}"):
        graph(tf.constant([1.0]))


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="method.*'exact'"):
        activations.diffused_mean("erf", [1.0], 1.0, method="exact")
    for slope in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="slope"):
            activations.diffused_mean("erf", [1.0], 1.0, slope=slope)
    with pytest.raises(TypeError, match="int32"):
        activations.diffused_mean("erf", tf.constant([1]), 1.0)
    with pytest.raises(ValueError, match="scalar"):
        activations.diffused_mean("erf", [1.0], tf.constant([1.0, 2.0]))


@pytest.mark.parametrize("method", activations.METHODS)
def test_tf_function_and_jit_compile(method):
    sigma = tf.Variable(0.0)
    x = tf.constant(np.linspace(-4, 4, 17), tf.float32)
    traces = []

    def loss(v):
        traces.append(1)
        with tf.GradientTape() as tape:
            tape.watch(v)
            total = 0.0
            for name in activations.names():
                mean, second = activations.diffused_moments(name, v, sigma, slope=1.3, method=method)
                total += tf.reduce_sum(mean * second)
        return total, tape.gradient(total, [v, sigma])

    compiled = tf.function(loss, jit_compile=True)
    for value in (0.0, 0.5, 1.7):  # crosses the quadrature switch of method="accurate"
        sigma.assign(value)
        want_total, want_grads = loss(x)
        total, grads = compiled(x)
        np.testing.assert_allclose(total, want_total, rtol=1e-5)
        for g, w in zip(grads, want_grads):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    assert len(traces) == 3 + 1  # three eager calls, one trace


def test_invalid_tensor_sigma_under_jit_compile_gives_nan():
    """XLA ignores asserts; the result is NaN rather than a silently wrong number."""
    sigma = tf.Variable(-1.0)
    compiled = tf.function(lambda x: activations.diffused_moments("erf", x, sigma), jit_compile=True)
    for value in (-1.0, float("nan"), float("inf")):
        sigma.assign(value)
        assert np.all(np.isnan(np.concatenate([m.numpy() for m in compiled(tf.constant([0.0, 2.0]))])))
    sigma.assign(0.5)
    assert np.all(np.isfinite(np.concatenate([m.numpy() for m in compiled(tf.constant([0.0, 2.0]))])))
