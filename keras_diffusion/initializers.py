"""Initializers for recurrent and deep-transition weights.

* :class:`SparseRecurrent` -- sparse weights with ``k`` non-zero incoming connections per
  unit, rescaled to a given spectral radius or largest singular value. Pascanu's thesis uses
  it twice: the "smart tanh" initialization of sec. 5.9.1 (15 non-zero incoming connections,
  spectral radius 0.95) and the deep RNNs of sec. 6.4.2 (20 non-zero incoming connections,
  unit largest singular value, for every hidden-to-hidden matrix).
* :class:`DynamicalIsometry` -- an orthogonal matrix scaled by the critical gain
  ``sigma_w`` of the activation (Sun, Hong & Wang lecture notes, secs. 3.3-3.4 and 4.2;
  Pennington et al. 2017): orthogonal weights give a Jacobian with all singular values
  equal to ``sigma_w * |phi'|``, and ``sigma_w`` is chosen so that the mean squared
  slope ``sigma_w**2 E[phi'(sqrt(q*) z)**2]``, ``z ~ N(0, 1)``, equals 1 at the
  pre-activation variance ``q*`` (:func:`critical_gain`). For a plain scaled orthogonal
  matrix use ``keras.initializers.Orthogonal(gain)``.

Keras's convention ``y = x @ W`` is used throughout: column ``j`` of ``W`` holds the
incoming weights of unit ``j``.

Example:

>>> import keras_diffusion as kd
>>> smart_tanh = kd.initializers.SparseRecurrent(nonzeros=15, spectral_radius=0.95, seed=0)
>>> deep_rnn = kd.initializers.SparseRecurrent(nonzeros=20, singular_value=1.0, seed=0)
>>> cell = kd.layers.DeepTransitionRNNCell(
...     400, [400], shortcut=True, recurrent_initializer=deep_rnn,
...     transition_initializer=kd.initializers.DynamicalIsometry("tanh", seed=0))
"""

import math

import keras
import numpy as np
from keras import ops

from keras_diffusion import validation


def _check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}.")
    return seed


@keras.saving.register_keras_serializable(package="keras_diffusion")
class SparseRecurrent(keras.initializers.Initializer):
    """Sparse Gaussian weights with ``nonzeros`` incoming connections per unit, rescaled.

    Each column (the incoming weights of one unit) gets ``nonzeros`` non-zero
    ``N(0, 1)`` entries at random rows; the matrix is then multiplied by one scalar so that
    its spectral radius (largest ``|eigenvalue|``, square matrices only) or its largest
    singular value equals the target exactly [Pascanu 2014, secs. 5.9.1 and 6.4.2].

    Args:
        nonzeros: non-zero incoming connections per unit, ``1 <= nonzeros <= fan_in``.
        spectral_radius: target spectral radius (> 0). Give this or ``singular_value``.
        singular_value: target largest singular value (> 0).
        seed: int for reproducible draws, or ``None`` (a seed drawn once per instance: like
            Keras's initializers, every call of one instance returns the same matrix).

    Example:

    >>> w = SparseRecurrent(nonzeros=15, spectral_radius=0.95, seed=1)((50, 50))
    """

    def __init__(self, nonzeros=15, spectral_radius=None, singular_value=None, seed=None):
        nonzeros = validation.positive_int(
            "nonzeros", nonzeros, "It counts the non-zero incoming connections per unit."
        )
        if (spectral_radius is None) == (singular_value is None):
            raise ValueError(
                "Give exactly one of spectral_radius (e.g. 0.95, 'smart tanh') or "
                f"singular_value (e.g. 1.0, thesis ch. 6); got spectral_radius="
                f"{spectral_radius!r}, singular_value={singular_value!r}."
            )
        for name, value in (("spectral_radius", spectral_radius),
                            ("singular_value", singular_value)):
            if value is not None:
                validation.positive(name, value)
        self.nonzeros = nonzeros
        self.spectral_radius = spectral_radius
        self.singular_value = singular_value
        self.seed = _check_seed(seed)
        # Like Keras's random initializers: an unseeded instance draws its seed once, so
        # every call returns the same matrix.
        self._draw_seed = np.random.SeedSequence(seed).entropy

    def __call__(self, shape, dtype=None):
        if len(shape) != 2:
            raise ValueError(
                f"SparseRecurrent makes matrices, got shape {tuple(shape)}; use it for 2-D "
                "(fan_in, fan_out) weights only."
            )
        fan_in, fan_out = (int(d) for d in shape)
        if self.nonzeros > fan_in:
            raise ValueError(
                f"nonzeros={self.nonzeros} exceeds the {fan_in} incoming connections of "
                f"shape {tuple(shape)}; use nonzeros <= {fan_in}."
            )
        if self.spectral_radius is not None and fan_in != fan_out:
            raise ValueError(
                f"spectral_radius needs a square matrix, got shape {tuple(shape)}; use "
                "singular_value for rectangular weights."
            )
        rng = np.random.default_rng(self._draw_seed)
        weights = np.zeros((fan_in, fan_out))
        for unit in range(fan_out):
            rows = rng.choice(fan_in, size=self.nonzeros, replace=False)
            weights[rows, unit] = rng.standard_normal(self.nonzeros)
        if self.spectral_radius is not None:
            current, target = np.max(np.abs(np.linalg.eigvals(weights))), self.spectral_radius
        else:
            current, target = np.linalg.norm(weights, 2), self.singular_value
        if current == 0:
            raise ValueError(
                f"The sparse draw for shape {tuple(shape)} with nonzeros={self.nonzeros} is "
                "nilpotent (spectral radius 0) and cannot be rescaled; use more nonzeros."
            )
        return ops.convert_to_tensor(weights * (target / current), dtype=dtype or "float32")

    def get_config(self):
        return {
            "nonzeros": self.nonzeros,
            "spectral_radius": self.spectral_radius,
            "singular_value": self.singular_value,
            "seed": self.seed,
        }


# Mean of phi'(x)**2 for x ~ N(0, q), for the activations of keras_diffusion.activations.
_HERMITE_X, _HERMITE_W = np.polynomial.hermite_e.hermegauss(80)


def _gaussian_mean(f, q):
    return float(np.sum(_HERMITE_W * f(math.sqrt(q) * _HERMITE_X)) / math.sqrt(2 * math.pi))


def _sigmoid_slope(x):
    s = 1.0 / (1.0 + np.exp(-x))
    return s * (1.0 - s)


_MEAN_SQUARED_SLOPE = {
    "linear": lambda q: 1.0,
    "relu": lambda q: 0.5,
    "tanh": lambda q: _gaussian_mean(lambda x: (1.0 - np.tanh(x) ** 2) ** 2, q),
    "erf": lambda q: _gaussian_mean(lambda x: (2.0 / math.sqrt(math.pi) * np.exp(-x * x)) ** 2, q),
    "sigmoid": lambda q: _gaussian_mean(lambda x: _sigmoid_slope(x) ** 2, q),
}


def critical_gain(activation, q_star=0.0):
    """The critical weight scale ``sigma_w = E[phi'(sqrt(q*) z)**2] ** -1/2``, z ~ N(0, 1).

    At this gain one layer ``phi(sigma_w W x)`` with orthogonal ``W`` preserves the mean
    squared norm of back-propagated vectors (mean-field criticality ``chi = 1``, Sun et al.
    sec. 4.2; eq. (3.1) gives the matching forward recursion): 1 for linear, sqrt(2) for
    relu, 1 for tanh and 4 for sigmoid as ``q* -> 0``, sqrt(pi)/2 for erf(x) at ``q* = 0``.

    Args:
        activation: one of ``"linear", "relu", "tanh", "erf", "sigmoid"``.
        q_star: variance of the pre-activations (>= 0) at which criticality is imposed.
    """
    if activation not in _MEAN_SQUARED_SLOPE:
        hint = " (its derivative is 0 almost everywhere)" if activation == "sign" else ""
        raise ValueError(
            f"No critical gain for activation {activation!r}{hint}; use one of "
            f"{sorted(_MEAN_SQUARED_SLOPE)}."
        )
    q_star = validation.nonnegative("q_star", q_star, "It is a variance, e.g. 0.")
    return 1.0 / math.sqrt(_MEAN_SQUARED_SLOPE[activation](q_star))


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DynamicalIsometry(keras.initializers.Orthogonal):
    """Orthogonal weights scaled by :func:`critical_gain` of the activation.

    All singular values of a square draw equal ``critical_gain(activation, q_star)``
    [Sun, Hong & Wang, sec. 3.4.1 (orthogonal, Saxe et al.) and sec. 4.2 (dynamical
    isometry for nonlinear networks)].

    Args:
        activation: the nonlinearity that follows the weights (see :func:`critical_gain`).
        q_star: pre-activation variance at which criticality is imposed (default 0: the
            linear regime around the origin, where tanh networks approach isometry).
        seed: int for reproducible draws, or ``None``.

    Example:

    >>> w = DynamicalIsometry("sigmoid", seed=0)((8, 8))   # singular values all 4.0
    """

    def __init__(self, activation="tanh", q_star=0.0, seed=None):
        self.activation = activation
        self.q_star = float(q_star)
        super().__init__(gain=critical_gain(activation, self.q_star), seed=_check_seed(seed))

    def get_config(self):
        return {"activation": self.activation, "q_star": self.q_star, "seed": self._init_seed}
