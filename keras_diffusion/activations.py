"""Gaussian-diffused activations: the moments of ``h(x + sigma z)``, ``z ~ N(0, 1)``.

Mobahi 2016, "Training Recurrent Neural Networks by Diffusion": the diffused cost (sec. 4.2,
Appendix A) needs, elementwise, the diffused activation ``h~_sigma = h * k_sigma`` and the
diffused square ``h2~_sigma = h^2 * k_sigma``, i.e. the first two moments

    mean(x)   = E[h(x + sigma z)],       second(x) = E[h(x + sigma z)^2].

``h(x) = g(slope * x)`` for every name, so ``slope`` rescales ``x`` and ``sigma`` alike
(``erf`` with ``slope = a`` is the paper's ``erf(a x)``; ``sign`` ignores it, as
``sign(a x) = sign(x)``). Write ``Phi``/``phi`` for the standard normal cdf/pdf and
``t = x / sigma``.

``method="fast"`` (the closed forms, derived and checked against quadrature):

=======  ==========================================  =========================================
name     mean                                        second moment
=======  ==========================================  =========================================
linear   ``x`` (exact)                               ``x^2 + sigma^2`` (exact)
relu     ``sigma phi(t) + x Phi(t)`` (exact; Table   ``(x^2 + sigma^2) Phi(t) + x sigma phi(t)``
         1 prints ``erf(x / sqrt(2 sigma))``, the    (exact)
         right argument is ``x / (sqrt(2) sigma)``)
sign     ``erf(x / (sqrt(2) sigma))`` (exact)        ``1`` for ``sigma > 0``, ``sign(x)^2`` at
                                                     ``sigma = 0`` (``sign(0) = 0``; exact)
erf      ``erf(x / r)``, ``r = sqrt(1 + 2 sigma^2)``  ``max(e^2 + (1 - e^2)(1 - 1/q), mean^2)``,
         (exact, eq. (11))                           ``e = erf(x / q)``, ``q = sqrt(1 + 8
                                                     sigma^2 / pi)`` (approximate, see below)
tanh     ``m = tanh(x / s)``, ``s = sqrt(1 + pi       ``m^2 + (1 - m^2)(1 - 1/s)``
         sigma^2 / 2)`` (approximate, sec. 3 note 3)  (approximate)
sigmoid  ``m = sigmoid(x / s)``, ``s = sqrt(1 + pi    ``m^2 + m (1 - m)(1 - 1/s)``
         sigma^2 / 8)`` (from ``(1 + tanh(x/2))/2``)  (approximate)
=======  ==========================================  =========================================

Derivations of the approximate second moments. ``erf``: the paper's ``erf^2(y) ~ 1 -
exp(-4 y^2 / pi)`` diffuses exactly to ``1 - exp(-4 x^2 / (pi q^2)) / q`` (the formula after
eq. (11)), i.e. ``1 - (1 - A(x / q)) / q`` with ``A(y) = 1 - exp(-4 y^2 / pi)``; putting
``erf^2`` back in place of ``A`` gives the form above, which is exact at ``sigma = 0`` and
2.5x more accurate than the paper's (max error 1.15e-2 on the grid below). ``tanh``: ``tanh^2 = 1 -
tanh'``, so ``E[tanh^2(x + sigma z)] = 1 - d/dx E[tanh(x + sigma z)]`` exactly; inserting the
paper's ``tanh(x / s)`` for the mean gives ``1 - (1 - m^2) / s``. ``sigmoid``: likewise from
``sigmoid^2 = sigmoid - sigmoid'``. (The route through ``tanh(y) ~ erf(sqrt(pi) y / 2)`` and
the erf^2 approximation gives ``1 - exp(-x^2 / (1 + 2 sigma^2)) / sqrt(1 + 2 sigma^2)``,
max error 7.6e-2, not exact at ``sigma = 0``.) Every second moment is ``>= mean^2`` (the
variance is never negative, also in ``method="accurate"``).

``method="accurate"``: exact forms where the fast ones approximate, quadrature otherwise.
``erf``: ``E[erf^2(x + sigma z)] = 1 - 8 T(sqrt(2) x / r, 1 / sqrt(1 + 4 sigma^2))`` with Owen's
``T`` (``erf(X) = 2 Phi(sqrt(2) X) - 1`` and a bivariate normal orthant), rewritten as
``mean^2 + (4 / pi) int_alpha^1 exp(-(x/r)^2 (1 + u^2)) / (1 + u^2) du``, ``alpha = 1 / sqrt(1 +
4 sigma^2)``, integrated by 16-node Gauss-Legendre (error < 1e-15). ``tanh``/``sigmoid``:
for ``sigma <= 1`` (``<= 2`` for sigmoid) 64-node Gauss-Hermite in ``z``; above, where the
integrand is too sharp in ``z``, ``E[tanh] = E[sign] - E[sign(y)(1 - tanh|y|)]`` and ``E[tanh^2]
= 1 - E[sech^2]``, the smooth, exponentially decaying parts integrated over ``y`` by 32-node
Gauss-Laguerre (sigmoid through ``sigmoid(y) = (1 + tanh(y / 2)) / 2``). The other names
have no approximation; both methods agree there.

Measured worst-case absolute error, against composite Gauss-Legendre quadrature of
``h(x + sigma z) phi(z)`` (25,600 nodes on ``z in [-10, 10]``, split at kinks), on the grid
``x in [-8, 8]`` step 0.05, ``sigma in [0, 5]`` step 0.05, ``slope = 1`` (the errors are
functions of ``(slope x, slope sigma)``), float64; ``tests/test_activations.py`` checks them:

==========  ============  ==============  ================  ==================
name        fast mean     fast second     accurate mean     accurate second
==========  ============  ==============  ================  ==================
erf         exact         4.61e-3         exact             6e-16
tanh        3.40e-2       2.39e-2         1.8e-10           2.7e-9
sigmoid     1.50e-2       1.61e-2         9.0e-11           6.6e-10
==========  ============  ==============  ================  ==================

The fast errors peak at (x, sigma) = (0, 1.25) for erf^2, (-8, 4.55) and (1.3, 0.9) for tanh,
(8, 4.4) and (-8, 4.9) for sigmoid; the accurate ones at the quadrature switch (sigma = 1 for
tanh, 2 for sigmoid). Beyond the grid (checked up to sigma = 50, |x| <= 8 sigma) the fast
errors tend to their ``sigma -> inf`` limits: ``sup_u |2 Phi(u) - 1 - tanh(u sqrt(2/pi))| =
3.53e-2`` for the tanh mean, ``sup_u |Phi(u) - sigmoid(u sqrt(8/pi))| = 1.77e-2`` for both
sigmoid moments; the erf and tanh second-moment errors decrease (1.9e-3, 7.2e-3 at sigma >= 5).
:class:`DiffusedFunction` carries bounds valid for all sigma (``fast_error``,
``accurate_error``). linear, relu and sign are exact in both methods (errors <= 3e-14 on
the grid: rounding).

``sigma = 0`` gives ``h(x)`` and ``h(x)^2`` bit for bit in both methods; values and gradients
with respect to ``x`` and ``sigma`` are finite for every finite ``x`` and ``sigma >= 0``
(``x / sigma`` is only formed where ``sigma > sqrt(tiny)`` and ``|x| <= 10 sigma``; elsewhere the
closed forms take their limit: for ``|x| > 10 sigma`` with an error below ``phi(10) sigma =
8e-23 sigma``; ``sigma <= sqrt(tiny)`` (1.1e-19 in float32, 1.5e-154 in float64) counts as 0,
an error below ``0.4 sigma``). Half-precision inputs are computed in float32 and cast back.
Everything works under ``tf.function`` and ``jit_compile=True``; XLA ignores the assert that
checks a tensor sigma, so there an invalid sigma makes the results NaN instead of raising.

Example:

>>> x = tf.constant([-1.0, 0.0, 2.0])
>>> diffused_mean("relu", x, 0.5)            # sigma phi(x/sigma) + x Phi(x/sigma)
>>> mean, second = diffused_moments("erf", x, sigma=0.3, slope=2.0)
>>> variance = second - mean**2             # >= 0
>>> diffused_mean("tanh", x, 0.0)           # == tf.tanh(x) exactly
"""

import dataclasses
import math
import numbers
from typing import Callable

import numpy as np
import tensorflow as tf

from keras_diffusion import bandwidth as bandwidth_lib

METHODS = ("fast", "accurate")

_SQRT2 = math.sqrt(2.0)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_SATURATION = 10.0  # |x| > 10 sigma: Phi(-10) = 7.6e-24, invisible even in float64.
_FAR = 40.0  # x / sigma stand-in for saturated entries: Phi(40) == 1 and phi(40) == 0 exactly.


def _nodes(rule, n):
    """Nodes and weights of a numpy Gauss rule, as float64 numpy arrays."""
    nodes, weights = rule(n)
    return np.asarray(nodes, np.float64), np.asarray(weights, np.float64)


# E[f(z)] ~ sum_i w_i f(z_i), z ~ N(0, 1).
_HERMITE_Z, _HERMITE_W = _nodes(np.polynomial.hermite_e.hermegauss, 64)
_HERMITE_W = _HERMITE_W / _SQRT_2PI
# int_0^inf e^-u f(u) du ~ sum_i w_i f(u_i); weights of the tanh tail integrals folded in.
_LAGUERRE_U, _LAGUERRE_W = _nodes(np.polynomial.laguerre.laggauss, 32)
_TANH_TAIL_W = _LAGUERRE_W / (1.0 + np.exp(-_LAGUERRE_U))  # (1 - tanh y) dy, u = 2y
_SECH2_W = 2.0 * _LAGUERRE_W / (1.0 + np.exp(-_LAGUERRE_U)) ** 2  # sech^2(y) dy, u = 2y
# int_0^1 f(v) dv ~ sum_i w_i f(v_i) (Gauss-Legendre moved to [0, 1]).
_LEGENDRE_V, _LEGENDRE_W = _nodes(np.polynomial.legendre.leggauss, 16)
_LEGENDRE_V, _LEGENDRE_W = (_LEGENDRE_V + 1.0) / 2.0, _LEGENDRE_W / 2.0


def _const(values, like):
    return tf.constant(values, dtype=like.dtype)


def _pdf(t):
    return tf.exp(-0.5 * tf.square(t)) / _SQRT_2PI


def _cdf(t):
    return 0.5 * tf.math.erfc(-t / _SQRT2)


def _one_minus_inverse_sqrt(c, s):
    """``1 - 1 / sqrt(1 + c s^2)``, accurate for small ``s`` and exactly 0 at ``s = 0``."""
    return -tf.math.expm1(-0.5 * tf.math.log1p(c * tf.square(s)))


def _standardize(x, s):
    """``x / s`` where it is informative, else ``40 sign(x)`` (the ``sigma -> 0`` limit).

    The division only sees entries with ``s > sqrt(tiny)`` and ``|x| <= 10 s`` (the double
    ``where`` keeps the other entries' gradients free of ``0 * inf``).
    """
    positive = s > math.sqrt(np.finfo(x.dtype.as_numpy_dtype).tiny)
    s_safe = tf.where(positive, s, tf.ones_like(s))
    inside = tf.logical_and(positive, tf.abs(x) <= _SATURATION * s_safe)
    x_safe = tf.where(inside, x, tf.zeros_like(x))
    return tf.where(inside, x_safe / s_safe, _FAR * tf.sign(x))


# --- fast closed forms of erf, tanh and sigmoid ------------------------------------------


def _squashed_second(e, spread):
    """``e^2 + (1 - e^2) spread = spread + (1 - spread) e^2`` (erf, tanh)."""
    return spread + (1.0 - spread) * tf.square(e)


def _sigmoid_second(e, spread):
    """``e^2 + e (1 - e) spread``."""
    return tf.square(e) + e * (1.0 - e) * spread


@dataclasses.dataclass(frozen=True)
class ScaledMoments:
    """``method="fast"`` moments that are ``g`` of ``x`` times scalars of ``s`` (erf, tanh, sigmoid).

    ``mean = g(x / w(s))`` and ``second = second_of(e, spread(s))`` with ``e = g(x / w2(s))``
    (``e = mean`` when ``second_c`` is ``None``), ``w(s) = sqrt(1 + mean_c s^2)``, ``w2(s) =
    sqrt(1 + second_c s^2)``, ``spread(s) = 1 - 1 / sqrt(1 + c s^2)`` with ``c = second_c`` or
    ``mean_c`` (formulas in the module docstring). :meth:`parts` exposes the scalars, so that a
    caller evaluating many ``x`` at one ``s`` (an RNN's time loop) computes them once.

    Attributes:
        function: ``g``.
        mean_c, second_c: the constants of ``w`` and ``w2`` (``second_c`` may be ``None``).
        second_of: ``(e, spread) -> second``.
    """

    function: Callable
    mean_c: float
    second_c: float
    second_of: Callable

    def mean_width(self, s):
        """``w(s)`` for a scalar tensor ``s``."""
        return tf.sqrt(1.0 + self.mean_c * tf.square(s))

    def parts(self, s):
        """``(w(s), w2(s) or None, spread(s))`` for a scalar tensor ``s``."""
        second_width = None if self.second_c is None else tf.sqrt(1.0 + self.second_c * tf.square(s))
        spread = _one_minus_inverse_sqrt(self.mean_c if self.second_c is None else self.second_c, s)
        return self.mean_width(s), second_width, spread

    def mean(self, x, s):
        return self.function(x / self.mean_width(s))

    def moments(self, x, s):
        mean_width, second_width, spread = self.parts(s)
        mean = self.function(x / mean_width)
        e = mean if second_width is None else self.function(x / second_width)
        return mean, self.second_of(e, spread)


_ERF_FAST = ScaledMoments(tf.math.erf, 2.0, 8.0 / math.pi, _squashed_second)
_TANH_FAST = ScaledMoments(tf.tanh, math.pi / 2.0, None, _squashed_second)
_SIGMOID_FAST = ScaledMoments(tf.sigmoid, math.pi / 8.0, None, _sigmoid_second)


# --- exact forms -------------------------------------------------------------------------


def _linear_mean(x, s):
    return x


def _linear_moments(x, s):
    return x, tf.square(x) + tf.square(s)


def _relu_mean(x, s):
    t = _standardize(x, s)
    return s * _pdf(t) + x * _cdf(t)


def _relu_moments(x, s):
    t = _standardize(x, s)
    pdf, cdf = _pdf(t), _cdf(t)
    positive_part = x * cdf  # x (x cdf), not x^2 cdf: x^2 may overflow where cdf = 0
    return s * pdf + positive_part, x * positive_part + s * (s * cdf + x * pdf)


def _sign_mean(x, s):
    return tf.math.erf(_standardize(x, s) / _SQRT2)


def _sign_moments(x, s):
    # P(x + sigma z = 0) = 0 for sigma > 0; at sigma = 0 it is sign(x)^2 with sign(0) = 0.
    second = tf.where(s > 0, tf.ones_like(x), tf.abs(tf.sign(x)))
    return _sign_mean(x, s), second


def _erf_mean(x, s):
    return _ERF_FAST.mean(x, s)


def _erf_moments_accurate(x, s):
    """``E[erf^2] = mean^2 + (4/pi) int_alpha^1 exp(-xr^2 (1 + u^2)) / (1 + u^2) du`` (Owen's T)."""
    xr = x / tf.sqrt(1.0 + 2.0 * tf.square(s))
    mean = tf.math.erf(xr)
    width = _one_minus_inverse_sqrt(4.0, s)  # 1 - alpha
    u2 = tf.square(1.0 - width + width * _const(_LEGENDRE_V, x))  # nodes on [alpha, 1], squared
    # |xr| > 40: the integrand is 0 (exp(-1600)); clipping keeps xr^2 finite for its gradient.
    xr2 = tf.square(tf.clip_by_value(xr, -_FAR, _FAR))
    integrand = tf.exp(-xr2[..., None] * (1.0 + u2)) / (1.0 + u2)
    variance = (4.0 / math.pi) * width * tf.reduce_sum(_const(_LEGENDRE_W, x) * integrand, -1)
    return mean, tf.square(mean) + variance


# --- tanh and sigmoid --------------------------------------------------------------------


def _gauss_hermite_moments(h, x, s):
    """``h(x) + sum_i w_i (h(x + s z_i) - h(x))`` and the same for ``h^2`` (exact at s = 0)."""
    hx = h(x)
    hz = h(x[..., None] + s * _const(_HERMITE_Z, x))
    w = _const(_HERMITE_W, x)
    mean = hx + tf.reduce_sum(w * (hz - hx[..., None]), -1)
    second = tf.square(hx) + tf.reduce_sum(w * (tf.square(hz) - tf.square(hx)[..., None]), -1)
    return mean, second


def _tanh_tail_moments(x, s):
    """Tanh moments for ``s >= 1`` by Gauss-Laguerre over ``y = x + s z >= 0`` (see module doc)."""
    half_u = _const(_LAGUERRE_U / 2.0, x)
    above = tf.exp(-0.5 * tf.square((half_u - x[..., None]) / s)) / (_SQRT_2PI * s)
    below = tf.exp(-0.5 * tf.square((half_u + x[..., None]) / s)) / (_SQRT_2PI * s)
    tail = tf.reduce_sum(_const(_TANH_TAIL_W, x) * (above - below), -1)
    sech2 = tf.reduce_sum(_const(_SECH2_W, x) * (above + below), -1)
    return tf.math.erf(x / (_SQRT2 * s)) - tail, 1.0 - sech2


def _quadrature_moments(h, switch, tail, x, s):
    """Gauss-Hermite for ``s <= switch``, ``tail(x, s)`` above (``tf.cond`` on the scalar s)."""
    s_tail = tf.where(s > switch, s, tf.ones_like(s) * (2.0 * switch))  # safe if both run
    return tf.cond(
        s <= switch, lambda: _gauss_hermite_moments(h, x, s), lambda: tail(x, s_tail)
    )


def _tanh_moments_accurate(x, s):
    return _quadrature_moments(tf.tanh, 1.0, _tanh_tail_moments, x, s)


def _sigmoid_tail_moments(x, s):
    mean, second = _tanh_tail_moments(x / 2.0, s / 2.0)
    return (1.0 + mean) / 2.0, (1.0 + 2.0 * mean + second) / 4.0


def _sigmoid_moments_accurate(x, s):
    return _quadrature_moments(tf.sigmoid, 2.0, _sigmoid_tail_moments, x, s)


# --- registry ----------------------------------------------------------------------------


def _first(moments):
    return lambda x, s: moments(x, s)[0]


@dataclasses.dataclass(frozen=True)
class DiffusedFunction:
    """An activation ``h`` with the moments of ``h(x + sigma z)``; see :func:`get`.

    Attributes:
        name: the registry name.
        function: ``g``, the plain activation (``h(x) = g(slope x)``), on tensors.
        fast_exact: whether ``method="fast"`` is exact for (mean, second moment).
        fast_error: measured worst-case absolute error of ``method="fast"`` for (mean, second
            moment), ``0.0`` where exact (grid in the module docstring).
        accurate_error: the same for ``method="accurate"``.
        fast_scaled: the :class:`ScaledMoments` behind ``fast_mean``/``fast_moments`` (erf,
            tanh, sigmoid), else ``None``.
    """

    name: str
    function: Callable
    fast_exact: tuple
    fast_error: tuple
    accurate_error: tuple
    fast_mean: Callable = dataclasses.field(repr=False)
    fast_moments: Callable = dataclasses.field(repr=False)
    accurate_mean: Callable = dataclasses.field(repr=False)
    accurate_moments: Callable = dataclasses.field(repr=False)
    fast_scaled: ScaledMoments = dataclasses.field(default=None, repr=False)

    def __call__(self, x, slope=1.0):
        """The undiffused ``h(x) = g(slope x)``."""
        return self.function(x if slope == 1.0 else slope * x)


def _exact(name, function, mean, moments):
    return DiffusedFunction(name, function, (True, True), (0.0, 0.0), (0.0, 0.0), mean, moments, mean, moments)


_REGISTRY = {
    f.name: f
    for f in (
        _exact("linear", tf.identity, _linear_mean, _linear_moments),
        _exact("relu", tf.nn.relu, _relu_mean, _relu_moments),
        _exact("sign", tf.sign, _sign_mean, _sign_moments),
        DiffusedFunction(
            "erf", tf.math.erf, (True, False), (0.0, 4.7e-3), (0.0, 1e-14),
            _ERF_FAST.mean, _ERF_FAST.moments, _erf_mean, _erf_moments_accurate, _ERF_FAST,
        ),
        DiffusedFunction(
            "tanh", tf.tanh, (False, False), (3.54e-2, 2.4e-2), (3e-10, 3e-9),
            _TANH_FAST.mean, _TANH_FAST.moments, _first(_tanh_moments_accurate),
            _tanh_moments_accurate, _TANH_FAST,
        ),
        DiffusedFunction(
            "sigmoid", tf.sigmoid, (False, False), (1.77e-2, 1.77e-2), (1e-10, 1e-9),
            _SIGMOID_FAST.mean, _SIGMOID_FAST.moments, _first(_sigmoid_moments_accurate),
            _sigmoid_moments_accurate, _SIGMOID_FAST,
        ),
    )
}


def names():
    """The known activation names, sorted."""
    return tuple(sorted(_REGISTRY))


def get(name):
    """The :class:`DiffusedFunction` called ``name`` (a :class:`DiffusedFunction` passes through).

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    if isinstance(name, DiffusedFunction):
        return name
    return _REGISTRY[check_activation(name)]


def check_activation(name):
    """Returns ``name`` after checking that it is one of :func:`names`.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"Unknown diffused activation {name!r}; known activations: {', '.join(names())}. "
            f"Pass one of these names, e.g. activation={names()[0]!r}."
        )
    return name


# --- public entry points -----------------------------------------------------------------


def check_method(method):
    """Returns ``method`` after checking that it is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    return method


def check_slope(slope):
    """Returns ``slope`` as a float after checking that it is finite and > 0."""
    try:
        value = float(slope)
    except (TypeError, ValueError):
        raise TypeError(f"slope must be a positive number, got {slope!r}.") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"slope must be finite and > 0 (h(x) = g(slope * x)), got {slope!r}.")
    return value


def checked_sigma(sigma, dtype="float32"):
    """``sigma`` as a scalar tensor of ``dtype``, checked finite and >= 0.

    What every entry point does with its ``sigma``; a caller that evaluates moments many times
    at one sigma (e.g. in a time loop) can check it once with this function.

    Numbers are checked in Python (``ValueError``); tensors by one ``tf.debugging.Assert``
    (``InvalidArgumentError`` naming the value, eagerly and in ``tf.function``). XLA ignores
    asserts, so under ``jit_compile=True`` an invalid tensor sigma gives NaN results instead.
    """
    if isinstance(sigma, bandwidth_lib.Bandwidth):
        sigma = sigma.value
    if isinstance(sigma, (numbers.Number, np.generic)) or (
        isinstance(sigma, np.ndarray) and sigma.ndim == 0
    ):
        return tf.constant(bandwidth_lib.check_sigma(sigma), dtype=dtype)
    sigma = tf.convert_to_tensor(sigma)
    if sigma.shape.rank not in (None, 0):
        raise ValueError(f"sigma must be a scalar, got a tensor of shape {sigma.shape}.")
    dtype = tf.as_dtype(dtype)
    sigma = tf.cast(sigma, dtype)
    valid = tf.logical_and(tf.math.is_finite(sigma), sigma >= 0)
    check = tf.debugging.Assert(
        valid, ["keras_diffusion.activations: sigma must be finite and >= 0 (sigma = 0 is the "
                "undiffused activation); got sigma =", sigma]
    )
    with tf.control_dependencies([check]):
        # XLA drops asserts: under jit_compile an invalid sigma makes the result NaN instead.
        return tf.where(valid, sigma, tf.constant(math.nan, dtype))


def _prepare(name, x, sigma, slope, method):
    """Looks up ``name``; returns the function, x and sigma in the compute dtype, x's dtype."""
    function = get(name)
    check_method(method)
    slope = check_slope(slope)
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(
            f"x must be a floating-point tensor, got dtype {x.dtype.name}; cast it first, "
            "e.g. tf.cast(x, 'float32')."
        )
    compute_dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
    xc = tf.cast(x, compute_dtype)
    s = checked_sigma(sigma, compute_dtype)
    if slope != 1.0:
        xc, s = slope * xc, slope * s
    return function, xc, s, x.dtype


def diffused_mean(name, x, sigma, *, slope=1.0, method="fast"):
    """``E[h(x + sigma z)]``, ``z ~ N(0, 1)``, elementwise: Mobahi 2016's ``h~_sigma(x)``.

    Mobahi 2016, sec. 3, Table 1 and eq. (11); formulas and errors in the module docstring.

    Args:
        name: one of :func:`names` (``linear, relu, erf, sign, tanh, sigmoid``), or a
            :class:`DiffusedFunction`.
        x: floating-point tensor (float16, bfloat16, float32, float64).
        sigma: the bandwidth, finite and >= 0: a Python/numpy number, a scalar tensor or
            variable (e.g. ``Bandwidth.value``) or a :class:`~keras_diffusion.Bandwidth`.
        slope: ``a > 0`` in ``h(x) = g(a x)`` (the ``a`` of ``erf(a x)``).
        method: ``"fast"`` (closed forms and the paper's approximations) or ``"accurate"``.

    Returns:
        A tensor of ``x``'s shape and dtype.

    Example:

    >>> diffused_mean("erf", tf.constant([0.5]), 1.0, slope=2.0)  # erf(2 x / sqrt(1 + 8))
    """
    function, x, s, dtype = _prepare(name, x, sigma, slope, method)
    mean = function.fast_mean if method == "fast" else function.accurate_mean
    return tf.cast(mean(x, s), dtype)


def diffused_moments(name, x, sigma, *, slope=1.0, method="fast"):
    """``(E[h(x + sigma z)], E[h(x + sigma z)^2])``, sharing their subexpressions.

    Mobahi 2016, sec. 4.2 and Appendix A (``h~_sigma`` and ``h2~_sigma``). The second moment is
    never below the squared mean, so ``second - mean**2`` is a variance ``>= 0``. Arguments as
    in :func:`diffused_mean`.

    Example:

    >>> mean, second = diffused_moments("tanh", tf.zeros([2, 3]), 0.5)
    """
    function, x, s, dtype = _prepare(name, x, sigma, slope, method)
    moments = function.fast_moments if method == "fast" else function.accurate_moments
    mean, second = moments(x, s)
    return tf.cast(mean, dtype), tf.cast(tf.maximum(second, tf.square(mean)), dtype)


def diffused_second_moment(name, x, sigma, *, slope=1.0, method="fast"):
    """``E[h(x + sigma z)^2]``: Mobahi 2016's ``h2~_sigma(x)`` (sec. 4.2, sec. 6 after eq. (11)).

    Arguments as in :func:`diffused_mean`.

    Example:

    >>> diffused_second_moment("relu", tf.constant([0.0]), 1.0)  # E[relu(z)^2] = 1/2
    """
    return diffused_moments(name, x, sigma, slope=slope, method=method)[1]
