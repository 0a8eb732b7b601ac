"""The recurrent cell of the diffused RNN (Mobahi 2016, sec. 4.1, eq. (6)).

``m_t = U x_t + V h~_sigma(m_{t-1}) + a`` with the learned initial state ``m_0``; the cell
holds the weights and the moment helpers that :class:`~keras_diffusion.layers.DiffusedRNN`
uses, and runs the recurrence step by step in ``keras.layers.RNN``.
"""

import keras
from keras import ops

from keras_diffusion import activations as activations_lib
from keras_diffusion import bandwidth as bandwidth_lib
from keras_diffusion import validation
from keras_diffusion.layers import checks


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DiffusedRNNCell(keras.layers.Layer):
    """The recurrence of Mobahi 2016, eq. (6): ``m_t = U x_t + V h~_sigma(m_{t-1}) + a``.

    The state is the pre-activation ``m_t`` (not ``h(m_t)``); the initial state ``m_0`` is a
    learned weight (sec. 4.1), which :meth:`get_initial_state` broadcasts to the batch. The
    cell's output is ``m_t`` as well. In ``keras.layers.RNN(cell)`` the cell's :meth:`call`
    runs the forward pass of eq. (6), step by step. :class:`DiffusedRNN` does not call it: it
    uses the cell's weights and moment helpers (:meth:`project`, :meth:`hidden_moments`), hoists
    the input projection out of the time loop, runs the fast erf/tanh/sigmoid recurrences as
    one compiled op on ``u = c m`` (``keras_diffusion.layers.scaled_recurrence``) and adds the
    recurrent variance term (3) of the diffused cost.

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
        self.units = validation.positive_int("units", units)
        self.activation = activations_lib.check_activation(activation)
        self.bandwidth = bandwidth_lib.resolve(bandwidth, owner=self)
        self.slope = activations_lib.check_slope(slope)
        self.penalty = checks.penalty(penalty)
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
            "bandwidth": bandwidth_lib.serialize(self.bandwidth),
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
