"""The output layer of the diffused RNN (Mobahi 2016, sec. 4.3, eq. (6)): ``h~(W h~(m_t) + b)``.

It takes the moments of its random input and adds, with ``add_loss``, the output variance of
term (1) and the smoothing term (2) of ``W`` of the diffused cost (the mapping of the cost
onto Keras is in ``keras_diffusion.layers.diffused_rnn``).
"""

import keras
from keras import ops

from keras_diffusion import activations as activations_lib
from keras_diffusion import bandwidth as bandwidth_lib
from keras_diffusion import validation
from keras_diffusion.layers import checks
from keras_diffusion.layers.smoothing import smoothing_penalty


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
        self.units = validation.positive_int("units", units)
        self.activation = activations_lib.check_activation(activation)
        self.bandwidth = bandwidth_lib.resolve(bandwidth, owner=self)
        self.slope = activations_lib.check_slope(slope)
        self.penalty = checks.penalty(penalty)
        self.method = activations_lib.check_method(method)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    def _mean_shape(self, input_shape):
        """The shape of the mean from a call's input shape(s), checking a pair's shapes."""
        if not isinstance(input_shape[0], (list, tuple)):
            return tuple(input_shape)
        shapes = [tuple(shape) for shape in input_shape]
        if len(shapes) != 2 or len(shapes[0]) != len(shapes[1]) or any(
            a is not None and b is not None and a != b for a, b in zip(*shapes)
        ):
            raise ValueError(
                f"DiffusedOutput {self.name!r} expects a tensor x or a pair (mean, "
                "second_moment) of two tensors of one shape (batch, ..., features), such as "
                f"the output of DiffusedRNN; got shapes {shapes}."
            )
        return shapes[0]

    def build(self, input_shape):
        mean_shape = self._mean_shape(input_shape)
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
            self._mean_shape([tuple(x.shape) for x in inputs])
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
        # In float32, as the penalty (keras_diffusion.layers.smoothing).
        output_variance = ops.cast(output_second - ops.square(prediction), "float32")
        per_sequence = ops.sum(ops.reshape(output_variance, (ops.shape(output_variance)[0], -1)), axis=1)
        self.add_loss(ops.mean(per_sequence))
        return prediction

    def compute_output_shape(self, input_shape):
        mean_shape = self._mean_shape(input_shape)
        return tuple(mean_shape[:-1]) + (self.units,)

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
            "use_bias": self.use_bias,
            "kernel_initializer": serialize(self.kernel_initializer),
            "bias_initializer": serialize(self.bias_initializer),
            "kernel_regularizer": serialize(self.kernel_regularizer),
            "bias_regularizer": serialize(self.bias_regularizer),
            "kernel_constraint": serialize(self.kernel_constraint),
            "bias_constraint": serialize(self.bias_constraint),
        }
