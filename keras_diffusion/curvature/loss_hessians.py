"""Analytic output-space Hessians of matching losses and Fisher metrics of output distributions.

Pascanu (2014, thesis), Sec. 4.3.2: for an output non-linearity and a loss that *match*
(identity + squared error, sigmoid + cross-entropy, softmax + cross-entropy, all taken
with respect to the pre-activation ``r``), the Hessian of the loss with respect to ``r`` is
positive semi-definite and does not depend on the targets (Eq. 4.38, 4.40):

* squared error ``(r - t)^2``: ``2 I``;
* sigmoid cross-entropy: ``diag(s (1 - s))`` with ``s = sigmoid(r)``;
* softmax cross-entropy: ``diag(p) - p p^T`` with ``p = softmax(r)`` (times ``sum_k t_k``
  when the targets are not normalized).

These output metrics equal the Fisher information of the matching predictive distribution
(Gaussian, Bernoulli, categorical; Eq. 4.27, 4.39, 4.41-4.42), so the extended Gauss-Newton
matrix ``J^T H_L J`` equals the Fisher (natural gradient) matrix.

A :class:`LossHessian` is a callable ``(outputs, vectors) -> H_L vectors`` for the scalar
loss obtained by reducing per-sample losses like a Keras loss object does (reduction,
sample weights, per-replica scaling under ``tf.distribute``). Build one with
:func:`from_keras_loss` from a Keras loss object or name.

Losses on probabilities (``from_logits=False``) have no Gauss-Newton form in this sense:
their output Hessian is taken with respect to the probabilities, which are not the
natural parameters; for categorical cross-entropy on probabilities it is indefinite
(``diag(t / y^2) - 1 1^T``). :func:`from_keras_loss` therefore raises for them; use
``from_logits=True`` losses on logits, or the generic (autodiff) product of ``ggn_vp``
with a ``loss_fn``, which is then not guaranteed positive semi-definite.
"""

import keras
import tensorflow as tf

KINDS = (
    "mean_squared_error",
    "sigmoid_cross_entropy",
    "softmax_cross_entropy",
    "sparse_softmax_cross_entropy",
)
REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight", "sum")
DISTRIBUTIONS = ("gaussian", "bernoulli", "categorical")

_KERAS_NAMES = {
    "mse": "mean_squared_error",
    "mean_squared_error": "mean_squared_error",
    "binary_crossentropy": "sigmoid_cross_entropy",
    "categorical_crossentropy": "softmax_cross_entropy",
    "sparse_categorical_crossentropy": "sparse_softmax_cross_entropy",
}
_KERAS_CLASSES = (
    (keras.losses.MeanSquaredError, "mean_squared_error"),
    (keras.losses.BinaryCrossentropy, "sigmoid_cross_entropy"),
    (keras.losses.CategoricalCrossentropy, "softmax_cross_entropy"),
    (keras.losses.SparseCategoricalCrossentropy, "sparse_softmax_cross_entropy"),
)


def identity_metric(outputs, vectors):
    """``I v``: Fisher metric of a unit-variance Gaussian with mean ``outputs``."""
    del outputs
    return vectors


def sigmoid_metric(logits, vectors):
    """``diag(s (1 - s)) v`` with ``s = sigmoid(logits)`` (Pascanu 2014, Eq. 4.38)."""
    s = tf.sigmoid(logits)
    return s * (1.0 - s) * vectors


def softmax_metric(logits, vectors):
    """``(diag(p) - p p^T) v`` over the last axis, ``p = softmax(logits)`` (Eq. 4.40, 4.42)."""
    p = tf.nn.softmax(logits, axis=-1)
    pv = p * vectors
    return pv - p * tf.reduce_sum(pv, axis=-1, keepdims=True)


_METRICS = {
    "mean_squared_error": identity_metric,
    "sigmoid_cross_entropy": sigmoid_metric,
    "softmax_cross_entropy": softmax_metric,
    "sparse_softmax_cross_entropy": softmax_metric,
    "gaussian": identity_metric,
    "bernoulli": sigmoid_metric,
    "categorical": softmax_metric,
}


def _expand_to_rank(weights, rank):
    """Squeezes a trailing unit axis / appends axes so ``weights`` broadcasts to ``rank``."""
    while weights.shape.rank > rank and weights.shape[-1] == 1:
        weights = tf.squeeze(weights, axis=-1)
    while weights.shape.rank < rank:
        weights = weights[..., None]
    return weights


class LossHessian:
    """``v -> H_L v`` for a matching loss reduced over samples like a Keras loss.

    The scalar loss is ``L = loss_weight * sum_i c_i l(r_i, t_i)`` where ``r_i`` runs over
    the per-sample outputs (every axis but the last), ``l`` is the per-sample loss (mean
    over the last axis for squared error and sigmoid cross-entropy, sum over classes for
    softmax cross-entropy, as in Keras) and ``c_i`` comes from the reduction and the
    sample weights. Then ``H_L = loss_weight * sum_i c_i H_l(r_i)`` with the analytic
    per-sample Hessians of the module docstring.

    Args:
        kind: one of :data:`KINDS`.
        y_true: targets; only needed by ``"softmax_cross_entropy"`` (for ``sum_k t_k``;
            assumed 1 when omitted).
        sample_weight: optional weights broadcastable to the per-sample loss shape
            ``outputs.shape[:-1]`` (Keras semantics, trailing unit axis allowed).
        reduction: one of :data:`REDUCTIONS` (Keras names).
        loss_weight: scalar multiplier (Keras ``loss_weights`` of a multi-output model).

    Example:
    >>> h = LossHessian("softmax_cross_entropy")
    >>> hv = h(logits, v)   # (diag(p) - p p^T) v / batch_size for each sample
    """

    def __init__(
        self,
        kind,
        y_true=None,
        sample_weight=None,
        reduction="sum_over_batch_size",
        loss_weight=1.0,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; received kind={kind!r}.")
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"reduction must be one of {REDUCTIONS} to give a scalar loss; received "
                f"reduction={reduction!r}. Unreduced losses have no scalar Hessian."
            )
        self.kind = kind
        self.y_true = y_true
        self.sample_weight = sample_weight
        self.reduction = reduction
        self.loss_weight = loss_weight

    def coefficients(self, outputs):
        """Per-sample coefficients ``c_i`` (shape ``outputs.shape[:-1] + (1,)``)."""
        per_sample = tf.shape(outputs)[:-1]
        rank = outputs.shape.rank - 1
        dtype = outputs.dtype
        if self.sample_weight is None:
            weights = tf.ones(per_sample, dtype)
        else:
            weights = _expand_to_rank(tf.cast(self.sample_weight, dtype), rank)
        if self.reduction == "sum":
            divisor = tf.constant(1.0, dtype)
        elif self.reduction == "mean_with_sample_weight" and self.sample_weight is not None:
            divisor = tf.reduce_sum(weights)  # Keras sums the weights before broadcasting
        else:
            divisor = tf.cast(tf.reduce_prod(per_sample), dtype)
        coeff = tf.math.divide_no_nan(tf.broadcast_to(weights, per_sample), divisor)
        # Keras divides a reduced loss by the number of replicas under tf.distribute.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        coeff = coeff * tf.cast(self.loss_weight / replicas, dtype)
        if self.kind == "softmax_cross_entropy" and self.y_true is not None:
            coeff = coeff * tf.reduce_sum(tf.cast(self.y_true, dtype), axis=-1)
        return coeff[..., None]

    def __call__(self, outputs, vectors):
        outputs = tf.convert_to_tensor(outputs)
        if outputs.shape.rank is None or outputs.shape.rank < 1:
            raise ValueError(
                f"{self.kind} needs outputs with a class/feature axis; received shape "
                f"{outputs.shape}."
            )
        vectors = tf.cast(vectors, outputs.dtype)
        hv = _METRICS[self.kind](outputs, vectors) * self.coefficients(outputs)
        if self.kind in ("mean_squared_error", "sigmoid_cross_entropy"):
            # Keras averages these over the last axis; d^2 (r - t)^2 / dr^2 = 2.
            width = tf.cast(tf.shape(outputs)[-1], outputs.dtype)
            hv = hv * ((2.0 if self.kind == "mean_squared_error" else 1.0) / width)
        return hv


class OutputFisher:
    """``v -> F_out v``: Fisher metric of the predictive distribution, averaged over samples.

    ``F = (1/N) sum_i J_i^T F_out(r_i) J_i`` with ``N = outputs.shape[0]`` (the batch) and
    every other leading axis (e.g. time steps) treated as independent outputs that are
    summed. ``F_out`` is ``I / variance`` for a Gaussian with mean ``outputs`` (Pascanu 2014,
    Eq. 4.27, which prints ``beta^2`` for ``1 / beta^2``), ``diag(s (1 - s))`` for Bernoulli
    logits (Eq. 4.39) and ``diag(p) - p p^T`` for categorical logits over the last axis
    (Eq. 4.41-4.42).

    Args:
        distribution: one of :data:`DISTRIBUTIONS`.
        variance: variance of the Gaussian (ignored otherwise).
    """

    def __init__(self, distribution, variance=1.0):
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {DISTRIBUTIONS}; received "
                f"distribution={distribution!r}."
            )
        if not variance > 0:
            raise ValueError(f"variance must be > 0; received variance={variance!r}.")
        self.distribution = distribution
        self.variance = variance

    def __call__(self, outputs, vectors):
        outputs = tf.convert_to_tensor(outputs)
        vectors = tf.cast(vectors, outputs.dtype)
        batch = tf.cast(tf.shape(outputs)[0], outputs.dtype)
        scale = 1.0 / self.variance if self.distribution == "gaussian" else 1.0
        return _METRICS[self.distribution](outputs, vectors) * (scale / batch)


def _probability_loss_error(name):
    return ValueError(
        f"{name} with from_logits=False is a loss on probabilities: its output Hessian is "
        "not the matching (Gauss-Newton / Fisher) metric and can be indefinite. Use the "
        "loss with from_logits=True on a model that outputs logits, or pass loss_fn to "
        "ggn_vp without loss_hessian for the generic (autodiff) output Hessian."
    )


def from_keras_loss(loss, y_true=None, sample_weight=None, loss_weight=1.0):
    """The analytic :class:`LossHessian` of a Keras loss object or name.

    Args:
        loss: a ``keras.losses.MeanSquaredError``, ``BinaryCrossentropy``,
            ``CategoricalCrossentropy`` or ``SparseCategoricalCrossentropy`` object (the
            cross-entropies with ``from_logits=True``), one of their Keras string names
            (``"mse"``, ``"mean_squared_error"``; the cross-entropy names mean
            ``from_logits=False`` in Keras and are rejected), one of :data:`KINDS`
            (logit-based), or a :class:`LossHessian` (returned as is).
        y_true: the targets the loss is evaluated with (used by categorical cross-entropy).
        sample_weight: the sample weights passed to the loss, if any.
        loss_weight: scalar multiplier of this loss in the total objective.

    Returns:
        A :class:`LossHessian`.

    Raises:
        ValueError: for losses without an analytic matching Hessian (probability inputs,
            ``axis`` other than -1, ``ignore_class``, unreduced losses, other losses).

    Example:
    >>> loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    >>> h = from_keras_loss(loss, y_true=labels)
    >>> hv = ggn_vp(outputs_fn, None, params, v, loss_hessian=h)
    """
    if isinstance(loss, LossHessian):
        return loss
    if isinstance(loss, str):
        if loss in KINDS:
            kind = loss
        elif loss in _KERAS_NAMES:
            kind = _KERAS_NAMES[loss]
            if kind != "mean_squared_error":
                raise _probability_loss_error(f"Keras loss name {loss!r}")
        else:
            raise ValueError(
                f"No analytic output Hessian for loss {loss!r}; known names: "
                f"{sorted(set(_KERAS_NAMES) | set(KINDS))}. Pass loss_fn to ggn_vp instead."
            )
        return LossHessian(kind, y_true, sample_weight, loss_weight=loss_weight)
    for cls, kind in _KERAS_CLASSES:
        if type(loss) is cls:
            break
    else:
        raise ValueError(
            f"No analytic output Hessian for loss {loss!r}; supported: "
            f"{[c.__name__ for c, _ in _KERAS_CLASSES]}, or pass loss_fn to ggn_vp instead."
        )
    config = loss.get_config()
    if kind != "mean_squared_error" and not config.get("from_logits", False):
        raise _probability_loss_error(type(loss).__name__)
    if config.get("axis", -1) not in (-1, None):
        raise ValueError(
            f"{type(loss).__name__}(axis={config['axis']}) is not supported; the class "
            "axis must be the last one (axis=-1)."
        )
    if config.get("ignore_class") is not None:
        raise ValueError(
            "SparseCategoricalCrossentropy(ignore_class=...) is not supported analytically; "
            "pass loss_fn to ggn_vp for the generic product."
        )
    return LossHessian(
        kind,
        y_true,
        sample_weight,
        reduction=config.get("reduction", "sum_over_batch_size"),
        loss_weight=loss_weight,
    )
