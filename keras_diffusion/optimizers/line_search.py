"""Armijo backtracking line search on the step length (Martens & Sutskever 2012).

Martens & Sutskever (2012), "Training deep and recurrent networks with Hessian-free
optimization", in Neural Networks: Tricks of the Trade (2nd ed.).

After CG and backtracking give a direction ``d``, Hessian-free takes ``theta + alpha d`` with
the largest ``alpha`` in ``1, beta, beta^2, ...`` (``beta = 0.8``) satisfying the sufficient
decrease condition ``f(theta + alpha d) <= f(theta) + c alpha g^T d`` (``c = 1e-2``); if none
of ``max_steps`` trials does, ``alpha = 0`` (no step). The loss at ``alpha = 1`` is already
known from backtracking, so an accepted full step costs no further evaluation.
"""

import collections

import tensorflow as tf

from keras_diffusion.curvature import loops

LineSearch = collections.namedtuple("LineSearch", ["step_length", "loss", "evaluations"])
LineSearch.__doc__ = """Result of :func:`armijo`: ``step_length`` ``alpha`` (0 if no trial
was accepted), the objective ``loss`` at ``theta + alpha d`` and the number of objective
``evaluations`` spent (the one at ``alpha = 1`` not counted)."""

_State = collections.namedtuple("_State", ["alpha", "loss", "accepted", "count"])


def armijo(loss_fn, params, direction, loss0, slope, loss_at_one, c=1e-2, beta=0.8,
           max_steps=60, unroll=False):
    """Armijo backtracking line search along ``direction`` from ``params``.

    Args:
        loss_fn: ``loss_fn(weights) -> scalar``, the objective.
        params: the weights ``theta`` (a list of tensors).
        direction: ``d`` (a list like ``params``).
        loss0: ``f(theta)``.
        slope: the directional derivative ``g^T d``.
        loss_at_one: ``f(theta + d)`` (known from backtracking).
        c: the sufficient-decrease constant (Martens & Sutskever: 1e-2).
        beta: the factor shrinking ``alpha`` (0.8).
        max_steps: the most trials after ``alpha = 1`` (60).
        unroll: run the trials as straight-line code (``loops.run_loop``), needed when
            ``loss_fn`` all-reduces inside a replica context.

    Returns:
        A :data:`LineSearch` ``(step_length, loss, evaluations)``.

    Example:
    ```python
    found = armijo(closure.loss, closure.params, d, loss, closure.dot(g, d), loss_at_d)
    new = [p + found.step_length * di for p, di in zip(closure.params, d)]
    ```
    """
    dtype = loss0.dtype
    c, beta = tf.constant(c, dtype), tf.constant(beta, dtype)

    def sufficient(alpha, loss):
        return tf.math.is_finite(loss) & (loss <= loss0 + c * alpha * slope)

    def cond(s):
        return ~s.accepted

    def body(s):
        alpha = s.alpha * beta
        loss = loss_fn([p + alpha * tf.cast(d, p.dtype) for p, d in zip(params, direction)])
        return _State(alpha, loss, sufficient(alpha, loss), s.count + 1)

    one = tf.ones([], dtype)
    start = _State(one, loss_at_one, sufficient(one, loss_at_one), tf.constant(0))
    final = loops.run_loop(cond, body, start, max_steps, unroll) if max_steps else start
    alpha = tf.where(final.accepted, final.alpha, tf.zeros([], dtype))
    loss = tf.where(final.accepted, final.loss, loss0)
    return LineSearch(alpha, loss, final.count)
