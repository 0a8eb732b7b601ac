"""The diffused RNN's time loop as one compiled op on ``u = c m`` (Mobahi 2016, sec. 4.3).

For ``method="fast"`` erf, tanh and sigmoid the diffused mean is ``h~(m) = g(c m)`` with a
scalar ``c`` that depends on sigma only (``keras_diffusion.activations.ScaledMoments``), so
the recurrence of eq. (6), ``m_t = U x_t + V h~(m_{t-1}) + a``, is a plain RNN in ``u = c m``:

    u_t = c (U x_t + a) + g(u_{t-1}) (c V).

:func:`scaled_recurrence` runs it, with a hand-written backpropagation through time, as
XLA-compiled functions; :func:`scaled_sums` forms the time sums of the moments that term (3)
of the diffused cost needs from the stored ``u_0 .. u_{T-1}``. ``DiffusedRNN`` uses them where
:func:`loop_parameters` says the activation allows it.

Caches: :func:`scaled_recurrence` and :func:`scaled_sums` keep their compiled functions per
activation in bounded caches of :data:`CACHE_SIZE` entries (there are three scaled
activations) for the life of the process, so that every layer and model of a process shares
one compilation per input signature; ``reduce_retracing`` keeps those signatures few.
"""

import functools

import tensorflow as tf
from keras import ops

from keras_diffusion import activations as activations_lib
from keras_diffusion import compat

#: Entries of each compiled-function cache: one per scaled activation (erf, tanh, sigmoid)
#: with room to spare; the least recently used is dropped beyond it.
CACHE_SIZE = 8


def loop_parameters(cell, sigma):
    """``(scaled, c, ratio, spread)`` where the time loop can run on ``u = c m``, else ``None``.

    For ``method="fast"`` erf, tanh and sigmoid (``activations.ScaledMoments``), ``h~(m) = g(c
    m)`` with the scalar ``c = slope / w(slope sigma)``: the recurrence in ``u = c m`` is ``u_t =
    c (U x_t + a) + g(u_{t-1}) (c V)``, a plain RNN step, and ``h~2(m)`` needs ``g(ratio u)``
    (``ratio = w / w2``, 1 where ``h~2`` uses the mean itself) and ``spread``. These scalars
    depend on sigma only and are computed here, once per call. ``None`` for the other
    activations, ``method="accurate"`` and half-precision ``sigma`` (which ``activations``
    evaluates in float32). ``sigma`` is a checked scalar tensor (``activations.checked_sigma``).
    """
    scaled = activations_lib.get(cell.activation).fast_scaled if cell.method == "fast" else None
    if scaled is None or sigma.dtype not in ("float32", "float64"):
        return None
    mean_width, second_width, spread = scaled.parts(cell.slope * sigma)
    ratio = ops.ones_like(mean_width) if second_width is None else mean_width / second_width
    return scaled, cell.slope / mean_width, ratio, spread


def scaled_moments(scaled, state, ratio, spread):
    """``(h~(m), h~2(m), h~(m)^2)`` at ``state = u = c m`` (see :func:`loop_parameters`)."""
    mean = scaled.function(state)
    square = ops.square(mean)
    e = mean if scaled.second_c is None else scaled.function(state * ratio)
    return mean, ops.maximum(scaled.second_of(e, spread), square), square


@functools.lru_cache(maxsize=CACHE_SIZE)
def scaled_sums(scaled):
    """``(first, states, ratio, spread) -> (sum_t h~2, sum_t h~^2)`` over ``u_0 .. u_{T-1}``.

    ``first`` is ``u_0``, ``states`` the time-major ``u_1 .. u_T`` of :func:`scaled_recurrence`
    (the last one is left out inside the compiled function: no copies of the sequence).

    The value and its vector-Jacobian product are each one XLA-compiled function (a few fused
    kernels instead of one per elementwise op, also in a model that is not ``jit_compile``d).
    Cached per activation (:data:`CACHE_SIZE`).
    """

    def value(first, states, ratio, spread):
        _, second, square = scaled_moments(scaled, states[:-1], ratio, spread)
        _, first_second, first_square = scaled_moments(scaled, first, ratio, spread)
        return first_second + tf.reduce_sum(second, axis=0), first_square + tf.reduce_sum(square, axis=0)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def vector_jacobian(first, states, ratio, spread, upstream_second, upstream_square):
        with tf.GradientTape() as tape:
            tape.watch([first, states, ratio, spread])
            sums = value(first, states, ratio, spread)
        return tape.gradient(
            sums, [first, states, ratio, spread], output_gradients=[upstream_second, upstream_square],
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )

    compiled_value = tf.function(value, jit_compile=True, reduce_retracing=True)

    @tf.custom_gradient
    def sums(first, states, ratio, spread):
        inputs = (first, states, ratio, spread)
        # stop_gradient: tapes differentiate through vector_jacobian, not the compiled value
        result = compiled_value(*(tf.stop_gradient(x) for x in inputs))
        return result, lambda *upstream: vector_jacobian(*inputs, *upstream)

    return sums


@functools.lru_cache(maxsize=CACHE_SIZE)
def scaled_recurrence(function):
    """``u_t = p_t + g(u_{t-1}) K``, ``t = 1..T``: the recurrence in ``u = c m`` (:func:`loop_parameters`).

    Returns ``recurrence(p, u_0, K) -> (u_1, ..., u_T)`` for time-major ``p`` of shape ``(T,
    batch, H)``, ``g = function`` elementwise. The forward loop and a hand-written
    backpropagation through time (``delta_t = du_t + (delta_{t+1} K^T) g'(u_t)``, ``dK = sum_t
    g(u_{t-1})^T delta_t``, that one matmul outside XLA) are each one XLA-compiled function,
    also inside a model that is not ``jit_compile``d: without XLA every elementwise op of a step
    is a separate kernel over only ``batch x H`` numbers. Where a tape records the gradient
    (second derivatives), the gradient is that of the plain TF loop instead. Cached per
    ``function`` (:data:`CACHE_SIZE`).
    """

    def loop(inputs, first, kernel):
        return tf.scan(lambda state, projected: projected + tf.matmul(function(state), kernel), inputs, first)

    forward = tf.function(loop, jit_compile=True, reduce_retracing=True)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def backward(upstream, first, states, kernel):
        every = tf.concat([first[None], states], axis=0)  # u_0 .. u_T
        with tf.GradientTape() as tape:
            tape.watch(every)
            hidden = function(every)
        derivative = tape.gradient(hidden, every)  # g'(u), g elementwise
        delta = tf.scan(
            lambda later, step: step[0] + tf.matmul(later, kernel, transpose_b=True) * step[1],
            (upstream, derivative[1:]),
            tf.zeros_like(first),
            reverse=True,
        )
        first_grad = tf.matmul(delta[0], kernel, transpose_b=True) * derivative[0]
        return delta, first_grad, hidden[:-1]

    @tf.custom_gradient
    def recurrence(inputs, first, kernel):
        # stop_gradient: tapes must not record (and differentiate) the compiled forward loop
        states = forward(*(tf.stop_gradient(x) for x in (inputs, first, kernel)))

        def gradient(upstream):
            if compat.tape_is_recording():
                # A tape differentiates this gradient (e.g. Hessian-vector products): XLA-compiled
                # loops cannot be differentiated twice, so take the plain TF loop's gradient.
                with tf.GradientTape() as tape:
                    tape.watch([inputs, first, kernel])
                    again = loop(inputs, first, kernel)
                return tape.gradient(again, [inputs, first, kernel], output_gradients=upstream)
            delta, first_grad, previous = backward(upstream, first, states, kernel)
            # dK = sum_t g(u_{t-1})^T delta_t: one large matmul, faster outside XLA on CPU
            units = tf.shape(kernel)[0]
            kernel_grad = tf.matmul(
                tf.reshape(previous, (-1, units)), tf.reshape(delta, (-1, units)), transpose_a=True
            )
            return delta, first_grad, kernel_grad

        return states, gradient

    return recurrence
