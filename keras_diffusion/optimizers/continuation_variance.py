"""The continuation variance lambda of Gaussian continuation: schedules and gradient estimators.

Gaussian continuation (Lersch et al., "Accelerated deep learning by Gaussian continuation",
sec. 2.1) minimizes ``g(theta; lambda) = [f * k_lambda](theta) = E f(theta + sqrt(lambda) eps)``,
``eps ~ N(0, I)``: lambda is a VARIANCE (covariance ``lambda I``, eq. 3), the square of the
standard deviation ``sigma`` the diffused layers of this package use (``sigma = sqrt(lambda)``).

Fixed schedules (Algorithm 1, sec. 2.2), with ``k`` the step count after the warm-up:

- ``"geometric"``: ``lambda_k = lambda_0 * decay**k`` (Zhou et al. 2019), ``0 < decay < 1``;
- ``"polynomial"``: ``lambda_k = lambda_0 / (1 + k)**decay`` (Neelakantan et al. 2017),
  ``decay > 0``;
- ``"constant"``: ``lambda_k = lambda_0`` (plain weight-noise injection).

Learned lambda (Algorithm 2) needs ``dg/dlambda``, estimated from the samples
``vartheta_j = theta + sqrt(lambda) eps_j`` that also give the weight gradient (eq. 7):

- :func:`score_estimate`, eq. (8): ``(||vartheta - theta||^2 - m lambda) / (2 lambda^2) f(vartheta)
  = (||eps||^2 - m) / (2 lambda) f(vartheta)`` (no extra evaluation, high variance for large m);
- :func:`pathwise_estimate`, the reparameterization form the authors' code uses:
  ``d/dlambda f(theta + sqrt(lambda) eps) = grad f(vartheta) . eps / (2 sqrt(lambda))``.

Both are unbiased for ``dg/dlambda``, which by Theorem 2 (eq. 6) equals ``tr(d2g/dtheta2) / 2``.
The regularizer of eq. (12) adds ``beta * m`` to it (:func:`regularized`).
"""

import tensorflow as tf

SCHEDULES = ("learned", "geometric", "polynomial", "constant")
ESTIMATORS = ("score", "pathwise")


def scheduled_variance(schedule, variance, decay, step):
    """``lambda_k`` of a fixed schedule (Algorithm 1) at step ``k = step`` (a tensor >= 0)."""
    k = tf.cast(step, "float32")
    if schedule == "geometric":
        return variance * tf.pow(tf.constant(decay, "float32"), k)
    if schedule == "polynomial":
        return variance / tf.pow(1.0 + k, decay)
    return tf.constant(variance, "float32")


def score_estimate(loss, noise_sq_norm, num_weights, variance):
    """Eq. (8) for one sample: ``(||eps||^2 - m) / (2 lambda) * f(theta + sqrt(lambda) eps)``.

    Args:
        loss: ``f`` at the perturbed weights (a scalar).
        noise_sq_norm: ``||eps||^2`` of the standard-normal draw (over all weights).
        num_weights: ``m``.
        variance: ``lambda > 0``.
    """
    return (noise_sq_norm - num_weights) / (2.0 * variance) * loss


def pathwise_estimate(noise, grads, variance):
    """Pathwise ``d/dlambda f(theta + sqrt(lambda) eps) = grad f . eps / (2 sqrt(lambda))``.

    ``noise`` and ``grads`` are lists of tensors shaped like the weights (``grads`` at the
    perturbed weights).
    """
    inner = tf.add_n([tf.reduce_sum(tf.cast(e * g, "float32")) for e, g in zip(noise, grads)])
    return inner / (2.0 * tf.sqrt(variance))


def regularized(gradient, regularization, num_weights):
    """Eq. (12): the lambda gradient plus ``beta * m``."""
    return gradient + regularization * num_weights
