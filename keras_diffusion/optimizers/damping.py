"""Levenberg-Marquardt adaptation of the Tikhonov damping ``lambda`` (Martens 2010, sec. 4.1).

Hessian-free minimizes the damped quadratic model ``q(d) = g^T d + 1/2 d^T (G + lambda I) d``
of the objective ``f`` (Pascanu 2014, thesis sec. 4.1, trust region view). How well ``q``
predicted the true change is the reduction ratio

    rho = (f(theta + d) - f(theta)) / (q(d) - q(0)),

and ``lambda`` follows it (Martens 2010, sec. 4.1): ``lambda <- increase * lambda`` (3/2)
when ``rho < 1/4`` (the model was too optimistic: trust it less) and
``lambda <- decrease * lambda`` (2/3) when ``rho > 3/4``. A rejected step (non-finite loss,
gradient, curvature or ``rho``), or one the line search refused (no sufficient decrease
along ``d``), counts as ``rho = -inf``: ``lambda`` grows.
"""

import tensorflow as tf

from keras_diffusion import validation

# Martens (2010), sec. 4.1.
LOW_RHO = 0.25
HIGH_RHO = 0.75
INCREASE = 1.5
DECREASE = 2.0 / 3.0


def reduction_ratio(loss_change, model_change):
    """``rho = (f(theta + d) - f(theta)) / (q(d) - q(0))``.

    A null step (``d = 0``: nothing predicted, nothing changed) has ``rho = 0``, so that the
    damping grows; a non-finite loss gives a non-finite ``rho`` (the step is rejected).
    """
    null = tf.equal(loss_change, 0) & tf.equal(model_change, 0)
    return tf.where(null, tf.zeros_like(loss_change),
                    loss_change / tf.where(null, tf.ones_like(model_change), model_change))


def levenberg_marquardt(damping, rho, accepted, increase=INCREASE, decrease=DECREASE,
                        low=LOW_RHO, high=HIGH_RHO):
    """The next damping: ``increase * damping`` if ``rho < low`` or the step was rejected,
    ``decrease * damping`` if ``rho > high``, else ``damping`` (Martens 2010, sec. 4.1).

    Args:
        damping: the current ``lambda`` (a scalar tensor).
        rho: the reduction ratio of the step (any value when ``accepted`` is False).
        accepted: boolean scalar, whether the step was taken (passed the non-finite guard
            and the line search).
        increase, decrease: the factors (Martens: 3/2 and 2/3).
        low, high: the thresholds on ``rho`` (Martens: 1/4 and 3/4).

    Returns:
        The new damping, a scalar tensor of ``damping``'s dtype.

    Example:
    >>> float(levenberg_marquardt(tf.constant(1.0), tf.constant(0.1), tf.constant(True)))
    1.5
    """
    damping = tf.convert_to_tensor(damping)
    rho = tf.cast(rho, damping.dtype)
    grow = ~accepted | ~tf.math.is_finite(rho) | (rho < low)
    shrink = accepted & (rho > high)
    factor = tf.where(grow, increase, tf.where(shrink, decrease, 1.0))
    return damping * tf.cast(factor, damping.dtype)


def check_factors(increase, decrease):
    """Validates the Levenberg-Marquardt factors: ``increase > 1 > decrease > 0``."""
    hint = "Martens (2010) uses damping_increase=1.5, damping_decrease=2/3."
    validation.positive("damping_increase", increase, hint)
    validation.positive("damping_decrease", decrease, hint)
    if not increase > 1.0 > decrease:
        raise ValueError(
            f"Levenberg-Marquardt needs damping_increase > 1 > damping_decrease, got "
            f"damping_increase={increase!r}, damping_decrease={decrease!r}. {hint}"
        )
    return float(increase), float(decrease)
