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

Files: the cell is in ``diffused_rnn_cell``, the output layer in ``diffused_output``, the
smoothing term of (2) and (3) in ``smoothing`` and the compiled recurrence on ``u = c m``
with its hand-written backpropagation through time in ``scaled_recurrence``.

Note on (2)-(3): the paper writes ``sigma^2 Y ||h~(m_t)||^2``. Smoothing ``W`` and ``m_t``
jointly gives ``sigma^2 Y sum_j h~2(m_t)_j`` exactly (and the same with ``V``, ``H``); the two
differ by ``sigma^2 Y sum_j (h~2 - h~^2)_j``, a constant only for a linear ``h``. This module
implements the paper's formula as written; ``tests/test_diffused_rnn.py`` checks it against
Monte Carlo with that difference made explicit.
"""

import keras
from keras import ops, tree

from keras_diffusion import activations as activations_lib
from keras_diffusion import compat
from keras_diffusion.layers import checks
from keras_diffusion.layers.diffused_rnn_cell import DiffusedRNNCell
from keras_diffusion.layers.scaled_recurrence import (
    loop_parameters,
    scaled_moments,
    scaled_recurrence,
    scaled_sums,
)
from keras_diffusion.layers.smoothing import smoothing_penalty_from_sums


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DiffusedRNN(keras.layers.Layer):
    """Runs a :class:`DiffusedRNNCell` over a sequence and adds term (3) of the diffused cost.

    Mobahi 2016, sec. 4.3: the recurrence of eq. (6) from the learned ``m_0`` (or a given
    ``initial_state``), and, with ``add_loss``, the batch mean of the per-sequence

        lam sum_{t=0}^{T-1} [ sum_j ||V_:,j||^2 (h~2(m_t) - h~(m_t)^2)_j + sigma^2 H ||h~(m_t)||^2 ].

    The input projection ``U x_t + a`` is computed for all steps at once before the loop, and
    sigma is checked once per call. For ``method="fast"`` erf, tanh and sigmoid (float32/64) the
    recurrence runs on ``u_t = c m_t``, with the scalar ``c`` of ``h~(m) = g(c m)`` folded into
    the projection and ``V`` (``scaled_recurrence.loop_parameters``), as one op whose forward loop and
    hand-written backpropagation through time are XLA-compiled (``scaled_recurrence.scaled_recurrence``);
    term (3) is then formed from the stored ``u_0 .. u_{T-1}`` by one compiled reduction
    (``scaled_recurrence.scaled_sums``). Otherwise (other activations, ``method="accurate"``, half-precision
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

    Masking is not supported (a masked step would enter the penalty). The loop runs in the
    cell's dtype policy, as ``keras.layers.RNN(cell)`` runs it; the outputs are cast to the
    layer's compute dtype.

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
        checks.sequence_shape(self, sequences_shape)
        if not self.cell.built:
            self.cell.build((sequences_shape[0],) + tuple(sequences_shape[2:]))

    def call(self, sequences, initial_state=None, mask=None, training=False):
        if mask is not None:
            raise ValueError("DiffusedRNN does not support masking: drop the Masking layer.")
        checks.sequence_shape(self, sequences.shape)
        if isinstance(initial_state, (list, tuple)):
            if len(initial_state) != 1:
                raise ValueError(
                    f"DiffusedRNN {self.name!r} has one state m_0 of shape (batch, units); got "
                    f"{len(initial_state)} initial states."
                )
            (initial_state,) = initial_state
        if initial_state is not None:
            checks.state_shape(self, initial_state.shape, self.cell.units, sequences.shape[0])
        dtype = self.cell.compute_dtype
        with compat.autocast_scope(dtype):
            outputs = self._run(ops.cast(sequences, dtype), initial_state)
        return tree.map_structure(lambda x: ops.cast(x, self.compute_dtype), outputs)

    def _run(self, sequences, initial_state):
        """The recurrence and term (3) in the cell's dtype: ``(mean, second)[, m_T]``."""
        cell = self.cell
        sigma = activations_lib.checked_sigma(cell.bandwidth.value, sequences.dtype)
        if initial_state is None:
            initial_state = cell.get_initial_state(ops.shape(sequences)[0])[0]
        first = ops.cast(initial_state, sequences.dtype)
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

        if (
            parameters is not None
            and not self.unroll
            # Forward-mode products (ForwardAccumulator) cannot go through the compiled op's
            # hand-written gradient: they would be silently wrong. The plain loop is exact.
            and not compat.has_forward_tangents([step_inputs, step_first, recurrent_kernel])
        ):
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
        _, states, final = compat.rnn_loop(
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
            "cell": keras.saving.serialize_keras_object(self.cell),
            "return_sequences": self.return_sequences,
            "return_state": self.return_state,
            "go_backwards": self.go_backwards,
            "unroll": self.unroll,
        }
