"""Martens' diagonal preconditioner for the CG of Hessian-free (Martens 2010, sec. 4.7).

``M = (diag(sum_i g_i^2) + lambda I)^alpha`` with ``alpha = 0.75``: ``g_i`` are the gradients
of the per-example terms of the objective, ``lambda`` the current damping. The squares are
those of the per-example gradients ``grad l_i`` of the per-example losses, averaged,
``D = (1/N) sum_i (grad l_i)^2`` (the diagonal of the empirical Fisher matrix of the mean
loss), which puts ``D`` on the scale of the Gauss-Newton matrix of the mean loss and of
``lambda``. CG then applies ``M^-1`` (``solvers.diagonal_preconditioner``).

The per-example gradients come from the step's one recorded forward pass
(``Closure.linearization()``): the gradient of the compiled loss in the outputs has, in row
``i``, ``d(l_i / N)/d outputs_i``; back-propagating each row alone through the recorded pass
(``RecordedLinearization.example_vjps``, a vectorized Jacobian) gives ``grad l_i / N``.
Memory: the curvature batch size times the number of weights; use ``curvature_fraction`` or
``preconditioner=None`` for large models. ``add_loss`` terms and regularizers are not
per-example and are left out. The vectorized back-propagation through a recurrent layer
running a ``tf.while_loop`` does not compile with XLA (``TensorListReserve``): with
``jit_compile=True`` on such a model use ``preconditioner=None`` (or an unrolled RNN).
"""

import copy

import tensorflow as tf

from keras_diffusion.curvature import gauss_newton_operator, solvers

EXPONENT = 0.75  # Martens (2010), sec. 4.7.


def _first(nest):
    return next(t for t in tf.nest.flatten(nest) if t is not None)


def _example_gradients(closure, lin):
    """``grad l_i / N`` for every example of the curvature batch, from the recorded ``lin``.

    Row ``i`` of ``dL/d outputs`` is ``d(l_i / N)/d outputs_i`` (the loss is a sum of
    per-example terms), so back-propagating it alone through ``lin`` gives ``grad l_i / N``.
    """
    outputs = tf.nest.flatten(lin.outputs)
    with tf.GradientTape() as tape:
        tape.watch(outputs)
        loss = closure.loss_from_outputs(tf.nest.pack_sequence_as(lin.outputs, outputs))
    rows = tape.gradient(loss, outputs, unconnected_gradients="zero")
    return lin.example_vjps(tf.nest.pack_sequence_as(lin.outputs, rows))


def _times(ones, y, sample_weight):
    """Sample weights ``ones`` (a nest like ``y``), times the batch's own if any."""
    if sample_weight is None:
        # One weight per example, broadcast over the per-example loss (rank of y minus 1).
        return tf.nest.map_structure(
            lambda t: tf.reshape(ones, [-1] + [1] * (t.shape.rank - 2)), y)

    def times(w):
        w = tf.convert_to_tensor(w)
        return tf.cast(w, ones.dtype) * tf.reshape(ones, [-1] + [1] * (w.shape.rank - 1))

    return tf.nest.map_structure(times, sample_weight)


def _weighted_example_gradients(closure, params):
    """``grad l_i / N`` from a forward pass of its own: the Jacobian of the per-example
    contributions ``dL/ds_i = l_i / N``, ``s`` sample weights times the batch's own."""
    n = tf.shape(_first(closure.x))[0]
    ones = tf.ones([n], params[0].dtype)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(params)
        with tf.GradientTape() as inner:
            inner.watch(ones)
            weighted = copy.copy(closure)
            weighted.sample_weight = _times(ones, closure.y, closure.sample_weight)
            loss = weighted.loss_from_outputs(closure.outputs(params))
        contributions = inner.gradient(loss, ones)  # l_i / N (this replica's share)
    return outer.jacobian(contributions, params, experimental_use_pfor=True)


def mean_squared_example_gradients(closure):
    """``(1/N) sum_i (grad l_i)^2`` over the global curvature batch, a list like the weights.

    ``N`` counts the examples of every replica's curvature sub-batch; the sum is
    all-reduced (identical on every replica). Runs no forward pass of its own: it uses the
    closure's recorded pass (``Closure.linearization()``, shared with the Gauss-Newton
    operator), except where ``pfor`` cannot vectorize the back-propagation through that
    pass (a recurrent ``tf.while_loop`` recorded on the variables by the train step): then
    it evaluates the curvature batch once more (`_weighted_example_gradients`).
    """
    c = closure.curvature
    if gauss_newton_operator.structure(closure.model) == "while_loop":
        # Known ahead: pfor fails on it ("Required handle data not set"), logging pages.
        per_example = _weighted_example_gradients(c, closure.params)
    else:
        per_example = _example_gradients(c, closure.linearization())
    n = tf.shape(per_example[0])[0]
    squares = [tf.reduce_sum(tf.square(j), axis=0) for j in per_example]
    total = closure.all_reduce([tf.cast(n, squares[0].dtype)] + squares)
    count, squares = total[0], total[1:]
    # (grad l_i / N)^2 summed, times N: the mean of (grad l_i)^2.
    return [s * count for s in squares]


def martens_diagonal(squared_gradients, damping, exponent=EXPONENT):
    """``M^-1`` as a callable: ``v -> v / (D + damping)^exponent`` (Martens 2010, sec. 4.7)."""
    diagonal = [tf.pow(d + tf.cast(damping, d.dtype), exponent) for d in squared_gradients]
    return solvers.diagonal_preconditioner(diagonal)
