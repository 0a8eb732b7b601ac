"""Curvature-vector products: Hessian, extended Gauss-Newton, Fisher, empirical Fisher.

Pascanu (2014, thesis): Sec. 4.1.1 (truncated Newton needs only products ``H x``, computed
with the R and L operators), Sec. 4.3.2 (extended Gauss-Newton ``G = J^T H_L J``, Eq. 4.33,
4.34) and Sec. 4.3.1-4.3.2 (Fisher metric, equal to ``G`` for matching losses, Eq. 4.37-4.42).

All functions take ``params`` as a list of tensors (read Keras variables through
``v.value``) and ``vectors`` as a list of tensors shaped like ``params``, and return a list
matching ``params``. They work eagerly, inside ``tf.function`` and with
``jit_compile=True``. ``mode`` selects how ``J v`` is computed (see
:mod:`keras_diffusion.curvature.forward`): ``"forward"`` (ForwardAccumulator),
``"double_backward"`` (VJP of a VJP, works through ``tf.while_loop``), ``"auto"`` (forward,
falling back for that call) or a ``forward.ProductMode`` that remembers the fallback.
Half-precision outputs are cast to float32 before the output-space Hessian is applied.
"""

import keras
import tensorflow as tf

from keras_diffusion.curvature import forward
from keras_diffusion.curvature import loss_hessians


def _scalar(loss, name):
    loss = tf.convert_to_tensor(loss)
    if loss.shape.rank != 0:
        raise ValueError(
            f"{name} must return a scalar loss; received shape {loss.shape}. Reduce it "
            "(e.g. tf.reduce_mean) or use empirical_fisher_vp for per-example losses."
        )
    return loss


def _gradient(loss_fn, params):
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = _scalar(forward.to_float32(loss_fn(params)), "loss_fn")
    return tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _hvp_forward(loss_fn, params, vectors):
    with tf.autodiff.ForwardAccumulator(params, vectors) as acc:
        grads = _gradient(loss_fn, params)
    return [
        acc.jvp(g, unconnected_gradients=tf.UnconnectedGradients.ZERO) for g in grads
    ]


def _hvp_double_backward(loss_fn, params, vectors):
    with tf.GradientTape() as outer:
        outer.watch(params)
        grads = _gradient(loss_fn, params)
    return outer.gradient(
        grads,
        params,
        output_gradients=vectors,
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )


def _hvp_with_mode(loss_fn, params, vectors, mode):
    """``H v`` of ``loss_fn`` by the mode's forward or double-backward product."""
    return forward.run_with_mode(
        mode,
        lambda: _hvp_forward(loss_fn, params, vectors),
        lambda: _hvp_double_backward(loss_fn, params, vectors),
    )


def hvp(loss_fn, params, vectors, mode="auto"):
    """Hessian-vector product ``H v`` of a scalar ``loss_fn(params)``.

    Forward-over-reverse (the R operator applied to the gradient, Pascanu 2014,
    Sec. 4.1.1); ``mode="double_backward"`` uses reverse-over-reverse instead, and
    ``"auto"`` falls back to it where forward mode fails.

    Args:
        loss_fn: callable ``loss_fn(params) -> scalar``.
        params: list of tensors.
        vectors: list of tensors shaped like ``params``.
        mode: ``"auto"``, ``"forward"``, ``"double_backward"`` or a ``ProductMode``.

    Returns:
        List of tensors matching ``params``.

    Example:
    >>> w = tf.constant([1.0, 2.0])
    >>> hvp(lambda p: tf.reduce_sum(p[0] ** 3), [w], [tf.ones(2)])[0].numpy()
    array([ 6., 12.], dtype=float32)
    """
    params = forward.as_list(params, "params")
    vectors = forward.check_vectors(params, forward.as_list(vectors, "vectors"))
    result = _hvp_with_mode(loss_fn, params, vectors, mode)
    return [tf.cast(r, p.dtype) for r, p in zip(result, params)]


def _generic_output_hessian(loss_fn, mode):
    """``(outputs, u) -> H_L u`` by forward-over-reverse on ``loss_fn`` at ``outputs``."""

    def product(outputs, u):
        flat = tf.nest.flatten(outputs)

        def flat_loss(flat_outputs):
            return loss_fn(tf.nest.pack_sequence_as(outputs, flat_outputs))

        hu = _hvp_with_mode(flat_loss, flat, tf.nest.flatten(u), mode)
        return tf.nest.pack_sequence_as(outputs, hu)

    return product


def output_hessian(loss_fn, loss_hessian, mode="auto"):
    """``(outputs, u) -> H_L u``: ``loss_hessian`` (a callable or a nest of them), else the
    Hessian of ``loss_fn`` in the outputs by forward-over-reverse (see :func:`ggn_vp`)."""
    if loss_hessian is None:
        if loss_fn is None:
            raise ValueError(
                "ggn_vp needs loss_fn or loss_hessian; both are None. Pass the loss of the "
                "outputs as loss_fn, or loss_hessian=from_keras_loss(loss, y_true)."
            )
        return _generic_output_hessian(loss_fn, mode)
    if callable(loss_hessian):
        if isinstance(loss_hessian, keras.losses.Loss):
            raise TypeError(
                f"loss_hessian={loss_hessian!r} looks like a Keras loss; wrap it with "
                "keras_diffusion.curvature.from_keras_loss(loss, y_true, sample_weight)."
            )
        return loss_hessian

    def nested(outputs, u):
        try:
            tf.nest.assert_same_structure(loss_hessian, outputs, check_types=False)
        except (ValueError, TypeError) as e:
            raise ValueError(
                "loss_hessian must be one callable or a nest with one per model output; "
                f"received {loss_hessian!r} for outputs "
                f"{tf.nest.map_structure(lambda t: t.shape, outputs)}."
            ) from e
        return tf.nest.map_structure(lambda h, o, w: h(o, w), loss_hessian, outputs, u)

    return nested


def ggn_vp(outputs_fn, loss_fn, params, vectors, mode="auto", loss_hessian=None):
    """Extended Gauss-Newton-vector product ``J^T H_L J v`` (Pascanu 2014, Eq. 4.33-4.34).

    ``J`` is the Jacobian of ``outputs_fn(params)`` (a tensor or a nest, e.g. the logits of a
    multi-output model) and ``H_L`` the Hessian of the scalar ``loss_fn(outputs)`` with
    respect to those outputs. ``H_L`` is applied analytically when ``loss_hessian`` is
    given (PSD for the matching losses of :mod:`loss_hessians`) and otherwise by
    forward-over-reverse differentiation of ``loss_fn`` at the outputs (exact, but PSD
    only if ``loss_fn`` is convex in the outputs).

    Args:
        outputs_fn: callable ``outputs_fn(params) -> tensor or nest``.
        loss_fn: callable ``loss_fn(outputs) -> scalar``; may be ``None`` when
            ``loss_hessian`` is given.
        params: list of tensors.
        vectors: list of tensors shaped like ``params``.
        mode: ``"auto"``, ``"forward"``, ``"double_backward"`` or a ``ProductMode`` for ``J v``.
        loss_hessian: ``None``, a callable ``(outputs, u) -> H_L u`` such as a
            :class:`~keras_diffusion.curvature.loss_hessians.LossHessian` from
            :func:`~keras_diffusion.curvature.loss_hessians.from_keras_loss`, or a nest of
            them matching the outputs of a multi-output model (block-diagonal ``H_L``).

    Returns:
        List of tensors matching ``params``.

    Example:
    >>> loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    >>> outputs_fn = lambda p: model.stateless_call(p, ntv, x)[0]
    >>> gv = ggn_vp(outputs_fn, lambda out: loss(y, out), params, v)           # generic
    >>> gv = ggn_vp(outputs_fn, None, params, v,
    ...             loss_hessian=from_keras_loss(loss, y_true=y))               # analytic
    """
    params = forward.as_list(params, "params")
    hessian = output_hessian(loss_fn, loss_hessian, mode)
    lin = forward.linearize(outputs_fn, params, vectors, mode)
    return gauss_newton_product(lin, lin.jvp, hessian)


def gauss_newton_product(lin, jv, hessian):
    """``J^T H_L (J v)`` from a linearization ``lin`` and its ``jv = J v``.

    Half-precision outputs and ``J v`` are cast to float32 before ``hessian`` (an
    ``(outputs, u) -> H_L u`` callable, see :func:`output_hessian`) is applied.
    """
    outputs = tf.nest.map_structure(
        lambda o: tf.stop_gradient(forward.to_float32(o)), lin.outputs
    )
    jv = tf.nest.map_structure(forward.to_float32, jv)
    return lin.vjp(hessian(outputs, jv))


def fisher_vp(outputs_fn, params, vectors, distribution, mode="auto", variance=1.0):
    """Fisher-information-vector product of the model's predictive distribution.

    ``F v = (1/N) sum_i J_i^T F_out(r_i) J_i v`` (Pascanu 2014, Eq. 4.27, 4.39, 4.41-4.42)
    where ``r = outputs_fn(params)`` parameterizes a Gaussian mean (``"gaussian"``, with
    ``variance``), Bernoulli logits (``"bernoulli"``) or categorical logits over the last
    axis (``"categorical"``); ``N = r.shape[0]`` and other leading axes are summed. It
    equals :func:`ggn_vp` for the matching negative log-likelihood averaged over the batch.

    Args:
        outputs_fn: callable ``outputs_fn(params) -> tensor``.
        params: list of tensors.
        vectors: list of tensors shaped like ``params``.
        distribution: ``"gaussian"``, ``"bernoulli"`` or ``"categorical"``.
        mode: ``"auto"``, ``"forward"``, ``"double_backward"`` or a ``ProductMode``.
        variance: Gaussian variance (``F_out = I / variance``).

    Returns:
        List of tensors matching ``params``.

    Example:
    >>> fv = fisher_vp(lambda p: model.stateless_call(p, ntv, x)[0], params, v,
    ...                distribution="categorical")
    """
    fisher = loss_hessians.OutputFisher(distribution, variance)
    return ggn_vp(outputs_fn, None, params, vectors, mode=mode, loss_hessian=fisher)


def _mean_outer(outputs, u):
    """``u / N`` for ``N`` per-example losses: ``(1/N) G^T (G v)`` in ``ggn_vp`` terms."""
    return u / tf.cast(tf.size(outputs), u.dtype)


def empirical_fisher_vp(per_example_loss_fn, params, vectors, mode="auto"):
    """Empirical Fisher-vector product ``(1/N) sum_i g_i g_i^T v``.

    ``g_i`` is the gradient of the ``i``-th per-example loss (every element of
    ``per_example_loss_fn(params)`` counts as one example). Normalization: the mean of the
    per-example outer products, i.e. the uncentered covariance of per-example gradients
    (not scaled by a further ``1/N`` of a batch-mean loss). No per-example gradient is
    materialized: with ``G`` the ``N x P`` Jacobian of the loss vector,
    ``(1/N) G^T (G v)`` is one JVP and one VJP (the batched trick), which falls back to
    the double-backward JVP through ``tf.while_loop`` in ``"auto"`` mode.

    Args:
        per_example_loss_fn: callable ``fn(params) -> tensor`` of per-example losses.
        params: list of tensors.
        vectors: list of tensors shaped like ``params``.
        mode: ``"auto"``, ``"forward"``, ``"double_backward"`` or a ``ProductMode``.

    Returns:
        List of tensors matching ``params``.

    Example:
    >>> loss = keras.losses.MeanSquaredError(reduction=None)
    >>> fv = empirical_fisher_vp(lambda p: loss(y, outputs_fn(p)), params, v)
    """
    return ggn_vp(
        per_example_loss_fn, None, params, vectors, mode=mode, loss_hessian=_mean_outer
    )
