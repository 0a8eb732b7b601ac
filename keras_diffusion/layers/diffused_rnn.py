"""The diffused RNN of Mobahi 2016 and its approximate diffused cost (sec. 4.3).

The network (sec. 4.1, eqs. (3)-(4), with the diffused activations of eq. (6)):

    m_t = U x_t + V h~(m_{t-1}) + a,   m_0 a learned weight,     (DiffusedRNNCell / DiffusedRNN)
    n_t = W h~(m_t) + b,               prediction h~(n_t)        (DiffusedOutput)

where ``h~ = h~_sigma`` is the Gaussian-diffused activation and ``h~2 = h~2_sigma`` the
diffused square (``keras_diffusion.activations``). The approximate diffused cost of sec. 4.3,
for one sequence ``s`` (the paper sums it over ``s``), is

    sum_t  ||h~(n_t) - y_t||^2 + sum_k (h~2(n_t) - h~(n_t)^2)_k                         (1)
    + lam sum_t [ sum_j ||W_:,j||^2 (h~2(m_t) - h~(m_t)^2)_j + sigma^2 Y ||h~(m_t)||^2 ]   (2)
    + lam sum_{t=0}^{T-1} [ sum_j ||V_:,j||^2 (h~2(m_t) - h~(m_t)^2)_j + sigma^2 H ||h~(m_t)||^2 ]   (3)

(``||A diag(sqrt(h~2))||_F^2 - ||A diag(h~)||_F^2 = sum_j ||A_:,j||^2 (h~2 - h~^2)_j``.)
The sums over ``t`` in (1) and (2) run over the steps that have a target: every step with
``return_sequences=True``, the last step only with ``return_sequences=False``; (3) always runs
over ``m_0 ... m_{T-1}``.

How the Keras pieces add up to it. With ``model.compile(loss=SequenceSquaredError())`` the
objective that ``model.fit`` minimizes is exactly ``(1/B) sum_{s in batch} cost_s``, the batch
mean of the per-sequence cost above (the paper's sum over sequences divided by the batch size):

* ``SequenceSquaredError`` (``keras_diffusion.losses``): ``sum_{t,k} (h~(n_t) - y_t)_k^2`` per
  sequence, averaged over the batch;
* ``DiffusedOutput`` adds, with ``add_loss``, the batch mean of the per-sequence sums of the
  output variance in (1) and of ``lam`` times (2);
* ``DiffusedRNN`` adds, with ``add_loss``, the batch mean of ``lam`` times (3).

At ``sigma = 0`` every variance and every ``sigma^2`` term is zero and the objective is the
plain RNN's squared error ``(1/B) sum_s sum_t ||h(n_t) - y_t||^2``.

Note on (2)-(3): the paper writes ``sigma^2 Y ||h~(m_t)||^2``. Smoothing ``W`` and ``m_t``
jointly gives ``sigma^2 Y sum_j h~2(m_t)_j`` exactly (and the same with ``V``, ``H``); the two
differ by ``sigma^2 Y sum_j (h~2 - h~^2)_j``, a constant only for a linear ``h``. This module
implements the paper's formula as written; ``tests/test_diffused_rnn.py`` checks it against
Monte Carlo with that difference made explicit.
"""

import keras
import tensorflow as tf
from keras import ops
from keras.src import backend as keras_backend  # the time loop of keras.layers.RNN
from tensorflow.python.eager import record  # could_possibly_record: is a tape watching?

from keras_diffusion import activations as activations_lib
from keras_diffusion import bandwidth as bandwidth_lib


def check_units(units):
    """Returns ``units`` after checking that it is a positive integer."""
    if isinstance(units, bool) or not isinstance(units, int) or units <= 0:
        raise ValueError(f"units must be a positive integer, got {units!r}.")
    return units


def check_penalty(penalty):
    """Returns the penalty weight ``lam`` as a float after checking that it is finite and >= 0."""
    return bandwidth_lib.check_nonnegative("penalty", penalty, " (lambda of Mobahi 2016, sec. 4.1)")


def smoothing_penalty(mean, second_moment, kernel, sigma):
    """Per-sample ``sum [ ||A diag(sqrt(second))||_F^2 - ||A diag(mean)||_F^2 + sigma^2 rows ||mean||^2 ]``.

    The smoothing term of Mobahi 2016, sec. 4.3 (App. A, footnotes 6-7) of a linear map ``A``
    applied to a random vector with componentwise ``mean`` and ``second_moment`` of shape
    ``(batch, ..., inputs)``; ``kernel`` is ``A^T`` in Keras layout ``(inputs, rows)``. Summed
    over all axes but the batch axis.
    """
    batch, inputs = ops.shape(mean)[0], ops.shape(mean)[-1]
    sum_of_squares = ops.sum(ops.reshape(ops.square(mean), (batch, -1, inputs)), axis=1)
    sum_of_seconds = ops.sum(ops.reshape(second_moment, (batch, -1, inputs)), axis=1)
    return smoothing_penalty_from_sums(sum_of_squares, sum_of_seconds, kernel, sigma)


def smoothing_penalty_from_sums(sum_of_squares, sum_of_seconds, kernel, sigma):
    """:func:`smoothing_penalty` from the per-sample sums over steps of ``mean^2`` and ``second``.

    With ``c_j = ||A_:,j||^2`` the term is ``sum_j c_j second_j + (sigma^2 rows - c_j) mean_j^2``,
    linear in these sums (shape ``(batch, inputs)``).
    """
    column_norms = ops.sum(ops.square(kernel), axis=1)
    rows = ops.square(sigma) * ops.cast(ops.shape(kernel)[1], sum_of_squares.dtype)
    return ops.matmul(sum_of_seconds, column_norms) + ops.matmul(sum_of_squares, rows - column_norms)


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


_SUMS = {}


def scaled_sums(scaled):
    """``(first, states, ratio, spread) -> (sum_t h~2, sum_t h~^2)`` over ``u_0 .. u_{T-1}``.

    ``first`` is ``u_0``, ``states`` the time-major ``u_1 .. u_T`` of :func:`scaled_recurrence`
    (the last one is left out inside the compiled function: no copies of the sequence).

    The value and its vector-Jacobian product are each one XLA-compiled function (a few fused
    kernels instead of one per elementwise op, also in a model that is not ``jit_compile``d).
    Cached per activation.
    """
    if scaled in _SUMS:
        return _SUMS[scaled]

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

    _SUMS[scaled] = sums
    return sums


_RECURRENCES = {}


def scaled_recurrence(function):
    """``u_t = p_t + g(u_{t-1}) K``, ``t = 1..T``: the recurrence in ``u = c m`` (:func:`loop_parameters`).

    Returns ``recurrence(p, u_0, K) -> (u_1, ..., u_T)`` for time-major ``p`` of shape ``(T,
    batch, H)``, ``g = function`` elementwise. The forward loop and a hand-written
    backpropagation through time (``delta_t = du_t + (delta_{t+1} K^T) g'(u_t)``, ``dK = sum_t
    g(u_{t-1})^T delta_t``, that one matmul outside XLA) are each one XLA-compiled function,
    also inside a model that is not ``jit_compile``d: without XLA every elementwise op of a step
    is a separate kernel over only ``batch x H`` numbers. Where a tape records the gradient
    (second derivatives), the gradient is that of the plain TF loop instead. Cached per
    ``function``.
    """
    if function in _RECURRENCES:
        return _RECURRENCES[function]

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
            if record.could_possibly_record():
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

    _RECURRENCES[function] = recurrence
    return recurrence


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DiffusedRNNCell(keras.layers.Layer):
    """The recurrence of Mobahi 2016, eq. (6): ``m_t = U x_t + V h~_sigma(m_{t-1}) + a``.

    The state is the pre-activation ``m_t`` (not ``h(m_t)``); the initial state ``m_0`` is a
    learned weight (sec. 4.1), which :meth:`get_initial_state` broadcasts to the batch. The
    cell's output is ``m_t`` as well. In ``keras.layers.RNN(cell)`` the cell's :meth:`call`
    runs the forward pass of eq. (6), step by step. :class:`DiffusedRNN` does not call it: it
    uses the cell's weights and moment helpers (:meth:`project`, :meth:`hidden_moments`), hoists
    the input projection out of the time loop, runs the fast erf/tanh/sigmoid recurrences as
    one compiled op on ``u = c m`` (:func:`scaled_recurrence`) and adds the recurrent variance
    term (3) of the diffused cost.

    Args:
        units: number of hidden units ``H`` (positive int).
        activation: hidden activation name (``keras_diffusion.activations.names()``).
        bandwidth: shared :class:`keras_diffusion.Bandwidth`, a number or ``None``.
        slope: ``a`` in ``h(x) = g(a x)`` (the ``a`` of ``erf(a x)``).
        penalty: ``lam`` >= 0, weight of the smoothing term of ``V`` (used by ``DiffusedRNN``).
        method: ``"fast"`` or ``"accurate"``, handed to ``keras_diffusion.activations``.
        kernel_initializer, recurrent_initializer, bias_initializer, initial_state_initializer:
            initializers of ``U^T`` (inputs x H), ``V^T`` (H x H), ``a`` and ``m_0``.
        kernel_regularizer, recurrent_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, recurrent_constraint, bias_constraint: optional constraints.
        **kwargs: base layer arguments.

    Example:

    >>> sigma = keras_diffusion.Bandwidth(1.0)
    >>> cell = DiffusedRNNCell(10, "erf", bandwidth=sigma)
    >>> m = keras.layers.RNN(cell, return_sequences=True)(np.ones((4, 7, 2), "float32"))
    """

    def __init__(
        self,
        units,
        activation="erf",
        bandwidth=None,
        slope=1.0,
        penalty=1.0,
        method="fast",
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        initial_state_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = check_units(units)
        self.activation = activations_lib.check_activation(activation)
        self.bandwidth = bandwidth_lib.resolve(bandwidth)
        self.slope = activations_lib.check_slope(slope)
        self.penalty = check_penalty(penalty)
        self.method = activations_lib.check_method(method)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.initial_state_initializer = keras.initializers.get(initial_state_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = keras.regularizers.get(recurrent_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.recurrent_constraint = keras.constraints.get(recurrent_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.state_size = self.units
        self.output_size = self.units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, self.units),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )
        self.bias = self.add_weight(
            shape=(self.units,),
            name="bias",
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )
        self.initial_state = self.add_weight(
            shape=(self.units,), name="initial_state", initializer=self.initial_state_initializer
        )

    def project(self, inputs):
        """``U x + a`` for inputs of any leading shape ``(..., input_dim)``."""
        return ops.matmul(inputs, self.kernel) + self.bias

    def hidden_mean(self, state, sigma):
        """``h~_sigma(m)``, the diffused hidden activation at pre-activation ``m``."""
        return activations_lib.diffused_mean(
            self.activation, state, sigma, slope=self.slope, method=self.method
        )

    def hidden_moments(self, state, sigma):
        """``(h~_sigma(m), h~2_sigma(m))`` of the hidden activation at pre-activation ``m``."""
        return activations_lib.diffused_moments(
            self.activation, state, sigma, slope=self.slope, method=self.method
        )

    def transition(self, projected, hidden):
        """``m_t = projected_t + V hidden`` (eq. (6) with ``projected_t = U x_t + a``,
        ``hidden = h~_sigma(m_{t-1})``)."""
        return projected + ops.matmul(hidden, self.recurrent_kernel)

    def call(self, inputs, states, training=False):
        previous = states[0] if isinstance(states, (list, tuple)) else states
        sigma = ops.cast(self.bandwidth.value, inputs.dtype)
        state = self.transition(self.project(inputs), self.hidden_mean(previous, sigma))
        return state, [state]

    def get_initial_state(self, batch_size=None):
        return [ops.broadcast_to(self.initial_state[None, :], (batch_size, self.units))]

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "units": self.units,
            "activation": self.activation,
            "bandwidth": self.bandwidth,
            "slope": self.slope,
            "penalty": self.penalty,
            "method": self.method,
            "kernel_initializer": serialize(self.kernel_initializer),
            "recurrent_initializer": serialize(self.recurrent_initializer),
            "bias_initializer": serialize(self.bias_initializer),
            "initial_state_initializer": serialize(self.initial_state_initializer),
            "kernel_regularizer": serialize(self.kernel_regularizer),
            "recurrent_regularizer": serialize(self.recurrent_regularizer),
            "bias_regularizer": serialize(self.bias_regularizer),
            "kernel_constraint": serialize(self.kernel_constraint),
            "recurrent_constraint": serialize(self.recurrent_constraint),
            "bias_constraint": serialize(self.bias_constraint),
        }


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DiffusedRNN(keras.layers.Layer):
    """Runs a :class:`DiffusedRNNCell` over a sequence and adds term (3) of the diffused cost.

    Mobahi 2016, sec. 4.3: the recurrence of eq. (6) from the learned ``m_0`` (or a given
    ``initial_state``), and, with ``add_loss``, the batch mean of the per-sequence

        lam sum_{t=0}^{T-1} [ sum_j ||V_:,j||^2 (h~2(m_t) - h~(m_t)^2)_j + sigma^2 H ||h~(m_t)||^2 ].

    The input projection ``U x_t + a`` is computed for all steps at once before the loop, and
    sigma is checked once per call. For ``method="fast"`` erf, tanh and sigmoid (float32/64) the
    recurrence runs on ``u_t = c m_t``, with the scalar ``c`` of ``h~(m) = g(c m)`` folded into
    the projection and ``V`` (:func:`loop_parameters`), as one op whose forward loop and
    hand-written backpropagation through time are XLA-compiled (:func:`scaled_recurrence`);
    term (3) is then formed from the stored ``u_0 .. u_{T-1}`` by one compiled reduction
    (:func:`scaled_sums`). Otherwise (other activations, ``method="accurate"``, half-precision
    inputs, ``unroll=True``)
    the Keras RNN time loop runs on ``m`` and, with ``penalty > 0``, keeps two running sums
    over time of ``h~2(m)`` and ``h~(m)^2``; term (3) is linear in them. The layer returns the
    componentwise ``(mean, second_moment)`` of ``h(m_t)`` under the smoothing, ``h~(m_t)`` and
    ``h~2(m_t)``, the input of :class:`DiffusedOutput`.

    Args:
        cell: a :class:`DiffusedRNNCell`.
        return_sequences: return the moments of every step ``(batch, T, H)`` (targets at every
            step) or of the last step only ``(batch, H)`` (a final-step target, as in the
            adding task).
        return_state: also return the final state ``m_T``.
        go_backwards: process the sequence backwards (the returned sequence is then reversed).
        unroll: unroll the time loop (static length only).
        **kwargs: base layer arguments.

    Call arguments:
        sequences: ``(batch, T, input_dim)``.
        initial_state: optional ``m_0`` of shape ``(batch, H)`` (default: the learned ``m_0``).

    Masking is not supported (a masked step would enter the penalty).

    Example:

    >>> sigma = keras_diffusion.Bandwidth(1.0)
    >>> inputs = keras.Input((10, 2))
    >>> moments = DiffusedRNN(DiffusedRNNCell(10, "erf", bandwidth=sigma, penalty=0.1))(inputs)
    >>> outputs = DiffusedOutput(1, "linear", bandwidth=sigma, penalty=0.1)(moments)
    >>> model = keras.Model(inputs, outputs)
    >>> model.compile("sgd", loss=keras_diffusion.losses.SequenceSquaredError())
    """

    def __init__(
        self, cell, return_sequences=False, return_state=False, go_backwards=False, unroll=False, **kwargs
    ):
        super().__init__(**kwargs)
        if isinstance(cell, dict):
            cell = keras.saving.deserialize_keras_object(cell)
        if not isinstance(cell, DiffusedRNNCell):
            raise TypeError(f"DiffusedRNN needs a DiffusedRNNCell, got {cell!r}.")
        self.cell = cell
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.unroll = bool(unroll)

    @property
    def bandwidth(self):
        return self.cell.bandwidth

    def build(self, sequences_shape, initial_state_shape=None):
        if not self.cell.built:
            self.cell.build((sequences_shape[0],) + tuple(sequences_shape[2:]))

    def call(self, sequences, initial_state=None, mask=None, training=False):
        if mask is not None:
            raise ValueError("DiffusedRNN does not support masking: drop the Masking layer.")
        cell = self.cell
        sigma = activations_lib.checked_sigma(cell.bandwidth.value, sequences.dtype)
        if initial_state is None:
            first = cell.get_initial_state(ops.shape(sequences)[0])[0]
        else:
            first = initial_state[0] if isinstance(initial_state, (list, tuple)) else initial_state
        first = ops.cast(first, sequences.dtype)
        penalized = cell.penalty > 0
        parameters = loop_parameters(cell, sigma)
        if parameters is None:
            scale, recurrent_kernel, step_inputs, step_first = None, cell.recurrent_kernel, cell.project(sequences), first

            def hidden_mean(state):
                return cell.hidden_mean(state, sigma)

            def hidden_moments(state):
                mean, second = cell.hidden_moments(state, sigma)
                return mean, second, ops.square(mean)

        else:
            scaled, scale, ratio, spread = parameters
            recurrent_kernel = cell.recurrent_kernel * scale
            step_inputs, step_first = cell.project(sequences) * scale, first * scale
            hidden_mean = scaled.function

            def hidden_moments(state):
                return scaled_moments(scaled, state, ratio, spread)

        if parameters is not None and not self.unroll:
            # The recurrence as one compiled op, term (3) from the stored u_0 .. u_{T-1}.
            inputs = ops.transpose(step_inputs, (1, 0, 2))  # time-major
            if self.go_backwards:
                inputs = ops.flip(inputs, axis=0)
            states = scaled_recurrence(scaled.function)(inputs, step_first, recurrent_kernel)
            last = states[-1] / scale
            if penalized:
                sum_second, sum_square = scaled_sums(scaled)(step_first, states, ratio, spread)
                penalty = smoothing_penalty_from_sums(sum_square, sum_second, cell.recurrent_kernel, sigma)
                self.add_loss(cell.penalty * ops.mean(penalty))
            if self.return_sequences:
                outputs = cell.hidden_moments(ops.transpose(states, (1, 0, 2)) / scale, sigma)
            else:
                outputs = cell.hidden_moments(last, sigma)
            return (outputs, last) if self.return_state else outputs

        def step(projected, states):
            if not penalized:
                state = projected + ops.matmul(hidden_mean(states[0]), recurrent_kernel)
                return state, [state]
            hidden, second, square = hidden_moments(states[0])
            state = projected + ops.matmul(hidden, recurrent_kernel)
            # running sums over m_0 .. m_{T-1} of h~2(m) and h~(m)^2 for term (3)
            return state, [state, states[1] + second, states[2] + square]

        initial = [step_first, ops.zeros_like(first), ops.zeros_like(first)] if penalized else [step_first]
        _, states, final = keras_backend.rnn(
            step,
            step_inputs,
            initial,
            go_backwards=self.go_backwards,
            unroll=self.unroll,
            input_length=sequences.shape[1],
            return_all_outputs=self.return_sequences,
        )
        last = final[0] if scale is None else final[0] / scale
        if penalized:
            # term (3) is linear in the time sums: sum_j c_j S2_j + (sigma^2 H - c_j) S1_j
            penalty = smoothing_penalty_from_sums(final[2], final[1], cell.recurrent_kernel, sigma)
            self.add_loss(cell.penalty * ops.mean(penalty))
        if self.return_sequences:
            outputs = cell.hidden_moments(states if scale is None else states / scale, sigma)
        else:
            outputs = cell.hidden_moments(last, sigma)
        if self.return_state:
            return outputs, last
        return outputs

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        batch, length = sequences_shape[0], sequences_shape[1]
        shape = (batch, length, self.cell.units) if self.return_sequences else (batch, self.cell.units)
        if self.return_state:
            return (shape, shape), (batch, self.cell.units)
        return shape, shape

    def get_config(self):
        return {
            **super().get_config(),
            "cell": self.cell,
            "return_sequences": self.return_sequences,
            "return_state": self.return_state,
            "go_backwards": self.go_backwards,
            "unroll": self.unroll,
        }


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DiffusedOutput(keras.layers.Layer):
    """The output layer of the diffused RNN: prediction ``h~(n_t)``, ``n_t = W h~(m_t) + b``.

    Mobahi 2016, sec. 4.3, eq. (6). Takes the ``(mean, second_moment)`` of its random input
    (the output of :class:`DiffusedRNN`; a single tensor ``x`` is a deterministic input with
    second moment ``x^2``) and
    adds, with ``add_loss``, the batch means of the per-sequence sums

        sum_t sum_k (h~2(n_t) - h~(n_t)^2)_k                                  (output variance)
        lam sum_t [ sum_j ||W_:,j||^2 (second - mean^2)_t,j + sigma^2 Y ||mean_t||^2 ]  (of W)

    so that, with ``keras_diffusion.losses.SequenceSquaredError`` as the loss, ``fit``
    minimizes the cost of sec. 4.3 (see the module docstring for the exact mapping).

    Args:
        units: output size ``Y`` (positive int).
        activation: output activation name; ``"linear"`` (default) for unbounded targets such
            as the adding task's sums in [0, 2], or e.g. ``"erf"`` as in sec. 4.1.
        bandwidth: shared :class:`keras_diffusion.Bandwidth`, a number or ``None``.
        slope: ``a`` in ``h(x) = g(a x)`` (the ``a`` of ``erf(a x)``).
        penalty: ``lam`` >= 0, weight of the smoothing term of ``W``.
        method: ``"fast"`` or ``"accurate"``, handed to ``keras_diffusion.activations``.
        use_bias: whether to add ``b``.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        kernel_constraint, bias_constraint: as in ``keras.layers.Dense``.
        **kwargs: base layer arguments.

    Example:

    >>> sigma = keras_diffusion.Bandwidth(0.5)
    >>> layer = DiffusedOutput(1, "linear", bandwidth=sigma, penalty=0.1)
    >>> prediction = layer((np.zeros((4, 10), "float32"), np.full((4, 10), 0.1, "float32")))
    >>> deterministic = layer(np.ones((4, 10), "float32"))
    """

    def __init__(
        self,
        units,
        activation="linear",
        bandwidth=None,
        slope=1.0,
        penalty=1.0,
        method="fast",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = check_units(units)
        self.activation = activations_lib.check_activation(activation)
        self.bandwidth = bandwidth_lib.resolve(bandwidth)
        self.slope = activations_lib.check_slope(slope)
        self.penalty = check_penalty(penalty)
        self.method = activations_lib.check_method(method)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    def build(self, input_shape):
        mean_shape = input_shape[0] if isinstance(input_shape[0], (list, tuple)) else input_shape
        self.kernel = self.add_weight(
            shape=(mean_shape[-1], self.units),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.units,),
                name="bias",
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            mean, second_moment = inputs
        else:
            mean, second_moment = inputs, ops.square(inputs)
        sigma = ops.cast(self.bandwidth.value, mean.dtype)
        pre_activation = ops.matmul(mean, self.kernel)
        if self.use_bias:
            pre_activation = pre_activation + self.bias
        if self.penalty > 0:
            self.add_loss(self.penalty * ops.mean(smoothing_penalty(mean, second_moment, self.kernel, sigma)))
        prediction, output_second = activations_lib.diffused_moments(
            self.activation, pre_activation, sigma, slope=self.slope, method=self.method
        )
        output_variance = output_second - ops.square(prediction)
        per_sequence = ops.sum(ops.reshape(output_variance, (ops.shape(output_variance)[0], -1)), axis=1)
        self.add_loss(ops.mean(per_sequence))
        return prediction

    def compute_output_shape(self, input_shape):
        mean_shape = input_shape[0] if isinstance(input_shape[0], (list, tuple)) else input_shape
        return tuple(mean_shape[:-1]) + (self.units,)

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "units": self.units,
            "activation": self.activation,
            "bandwidth": self.bandwidth,
            "slope": self.slope,
            "penalty": self.penalty,
            "method": self.method,
            "use_bias": self.use_bias,
            "kernel_initializer": serialize(self.kernel_initializer),
            "bias_initializer": serialize(self.bias_initializer),
            "kernel_regularizer": serialize(self.kernel_regularizer),
            "bias_regularizer": serialize(self.bias_regularizer),
            "kernel_constraint": serialize(self.kernel_constraint),
            "bias_constraint": serialize(self.bias_constraint),
        }
