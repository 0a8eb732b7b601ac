"""Choosing the damping and the length of a damped step in an eigenbasis (Saddle-Free Newton).

Given an orthonormal basis ``B`` (rows) in which the curvature matrix is ``diag(mu)``
(``saddle_free_basis``) and the gradient's coordinates ``c = B g``, the damped step is
``d(lambda) = -B^T (c / (mu + lambda))``, one matrix product per damping. Three ways to pick
``lambda`` and the step length:

- `search_damping`: Pascanu (2014, thesis), sec. 4.5.3: "at each step ... we pick the best
  damping coefficient from {10^0, ..., 10^-5}", learning rate 1, no line search: the loss is
  evaluated at ``theta + lr * d(lambda)`` for every candidate and the lowest wins;
- `levenberg_marquardt`: the Levenberg-Marquardt rule of Martens (2010, sec. 4.1), used by
  the thesis for the larger experiments of sec. 4.5.3 (initial damping 3): with the reduction
  ratio ``rho`` of the loss to the model ``q(d) = g^T d + 1/2 d^T M d``, ``lambda`` is
  multiplied by 2/3 when ``rho > 3/4`` and by 3/2 when ``rho < 1/4``;
- `backtracking`: a line search on the step length (the learning rate the thesis folds the
  Lagrange multiplier of eq. 4.73 into): halve ``alpha`` from ``lr`` until the Armijo
  condition ``f(theta + alpha d) <= f(theta) + c1 alpha g^T d`` holds.

Loops run through ``keras_diffusion.curvature.loops`` (``unroll=True`` when the loss
all-reduces across replicas); non-finite trial losses count as ``+inf``.
"""

import collections

import tensorflow as tf

from keras_diffusion.curvature import loops

DAMPING_CANDIDATES = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
ARMIJO = 1e-4
DAMPING_BOUNDS = (1e-8, 1e8)

_SearchState = collections.namedtuple("_SearchState", ["j", "alpha", "loss", "found"])


def damped_step(rows, eigenvalues, coefficients, damping):
    """The flat step ``-B^T (c / (mu + lambda))``."""
    return -tf.linalg.matvec(rows, coefficients / (eigenvalues + damping), transpose_a=True)


def model_decrease(eigenvalues, coefficients, damping, alpha):
    """``q(alpha d) - q(0) = alpha g^T d + alpha^2/2 d^T diag(mu) d`` for ``d = d(lambda)``."""
    scaled = coefficients / (eigenvalues + damping)
    slope = -tf.reduce_sum(coefficients * scaled)
    return alpha * slope + 0.5 * alpha**2 * tf.reduce_sum(eigenvalues * scaled**2)


def finite_or_inf(loss):
    """``loss`` where finite, else ``+inf`` (a non-finite trial loses every comparison)."""
    return tf.where(tf.math.is_finite(loss), loss, tf.constant(float("inf"), loss.dtype))


def search_damping(trial_loss, step_for, candidates, alpha):
    """The candidate damping with the lowest loss at ``alpha * d(lambda)``.

    Args:
        trial_loss: callable, flat step -> loss at ``theta + step``.
        step_for: callable, damping -> flat step ``d(lambda)``.
        candidates: Python floats.
        alpha: the step length (the learning rate).

    Returns:
        ``(damping, loss)``: the chosen damping and its loss (``+inf`` if none is finite).
    """
    losses = tf.stack([finite_or_inf(trial_loss(alpha * step_for(c))) for c in candidates])
    best = tf.argmin(losses)
    values = tf.constant(candidates, losses.dtype)
    return tf.gather(values, best), tf.gather(losses, best)


def backtracking(trial_loss, step, loss, slope, alpha, max_steps, unroll):
    """Armijo backtracking from ``alpha``, halving at most ``max_steps - 1`` times.

    Args:
        trial_loss: callable, flat step -> loss at ``theta + step``.
        step: the flat search direction ``d``.
        loss: ``f(theta)``.
        slope: ``g^T d`` (negative for a descent direction).
        alpha: the initial step length.
        max_steps: the most loss evaluations.
        unroll: unroll the loop (the loss all-reduces across replicas).

    Returns:
        ``(alpha, loss)``: the accepted step length and loss there, or ``(0, f(theta))``
        when no trial satisfied the condition.
    """
    def body(s):
        trial = finite_or_inf(trial_loss(s.alpha * step))
        found = trial <= loss + ARMIJO * s.alpha * slope
        return _SearchState(s.j + 1, tf.where(found, s.alpha, 0.5 * s.alpha), trial, found)

    alpha = tf.cast(alpha, loss.dtype)
    final = loops.run_loop(
        lambda s: ~s.found,
        body,
        _SearchState(tf.constant(0), alpha, loss, tf.constant(False)),
        max_steps,
        unroll,
    )
    zero = tf.zeros_like(alpha)
    return tf.where(final.found, final.alpha, zero), tf.where(final.found, final.loss, loss)


def levenberg_marquardt(damping, rho):
    """Martens (2010, sec. 4.1): ``lambda * 2/3`` if ``rho > 3/4``, ``* 3/2`` if ``rho < 1/4``
    (NaN ``rho`` counts as bad); kept within ``DAMPING_BOUNDS``."""
    updated = tf.where(rho > 0.75, damping * (2.0 / 3.0), damping)
    updated = tf.where(rho >= 0.25, updated, damping * 1.5)
    return tf.clip_by_value(updated, *DAMPING_BOUNDS)
