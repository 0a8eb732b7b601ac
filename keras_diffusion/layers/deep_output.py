"""Deep hidden-to-output function of the DO-RNN / DOT(S)-RNN (Pascanu 2014 thesis, sec. 6.3).

The deep output RNN computes its output with an MLP of intermediate layers on the hidden
state (thesis sec. 6.3.1, "Deep Output RNN")::

    y[t] = sigma_L^out(W_L^out ... sigma_1^out(W_1^out h[t]))

Since ``y[t]`` depends on ``h[t]`` only, the MLP runs *after* the recurrence on the whole
state sequence (one matmul per layer for all steps, outside the time loop). Put
:class:`DeepOutput` after a recurrent layer with ``return_sequences=True`` (or after the
last state) and finish with the task's output layer, e.g. ``Dense(vocab)``: a
DOT(S)-RNN is ``DeepTransitionRNN(DeepTransitionRNNCell(..., shortcut=True))`` followed by
``DeepOutput(...)`` (Fig. 6.4 (b)). The thesis' character-level model uses one rectifier
intermediate layer of 600 units (Table 6.1, sec. 6.4.1).
"""

import keras
from keras import ops

from keras_diffusion import bandwidth as bandwidth_lib
from keras_diffusion.layers import checks
from keras_diffusion.layers.deep_transition import resolve_activation, serialize_activation


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DeepOutput(keras.layers.Layer):
    """Intermediate layers of the deep hidden-to-output MLP [Pascanu 2014, sec. 6.3.1].

    Args:
        units: widths of the intermediate layers, e.g. ``[600]``.
        activation: their nonlinearity (thesis char-level model: ``"relu"``).
        bandwidth: ``None``, or a ``keras_diffusion.Bandwidth`` / number to diffuse the
            activations with that sigma.
        use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, kernel_constraint, bias_constraint: as in ``keras.layers.Dense``.

    Call arguments:
        inputs: hidden states ``(..., state_units)``, e.g. ``(batch, T, units)``.

    Example:

    >>> import numpy as np
    >>> out = DeepOutput([12], activation="relu")
    >>> tuple(out(np.zeros((2, 5, 8), "float32")).shape)
    (2, 5, 12)
    """

    def __init__(
        self,
        units,
        activation="relu",
        bandwidth=None,
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
        self.units = checks.widths("units", units)
        if not self.units:
            raise ValueError(
                "DeepOutput needs at least one intermediate layer, got units=[]; give their "
                "widths, e.g. units=[600] (thesis Table 6.1)."
            )
        self.bandwidth = None if bandwidth is None else bandwidth_lib.resolve(bandwidth, owner=self)
        self.activation = activation
        self._activation_fn = resolve_activation(activation, self.bandwidth)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.supports_masking = True

    def build(self, input_shape):
        self.kernels, self.biases = [], []
        for layer, (fan_in, fan_out) in enumerate(
            zip((input_shape[-1],) + self.units[:-1], self.units), 1
        ):
            self.kernels.append(self.add_weight(
                shape=(fan_in, fan_out), name=f"kernel_{layer}",
                initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
                constraint=self.kernel_constraint,
            ))
            self.biases.append(None if not self.use_bias else self.add_weight(
                shape=(fan_out,), name=f"bias_{layer}", initializer=self.bias_initializer,
                regularizer=self.bias_regularizer, constraint=self.bias_constraint,
            ))

    def call(self, inputs):
        x = inputs
        for kernel, bias in zip(self.kernels, self.biases):
            x = ops.matmul(x, kernel)
            x = self._activation_fn(x if bias is None else x + bias)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units[-1],)

    def get_config(self):
        return {
            **super().get_config(),
            "units": list(self.units),
            "activation": serialize_activation(self.activation),
            "bandwidth": bandwidth_lib.serialize(self.bandwidth),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
        }
