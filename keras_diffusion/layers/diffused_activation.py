"""A layer applying the Gaussian-diffused form of an activation (Mobahi 2016, sec. 3, Table 1).

The diffused activation is ``h~_sigma = h * k_sigma``, the convolution of ``h`` with the
Gaussian kernel of standard deviation ``sigma``: the expected value ``E[h(x + sigma z)]``,
``z ~ N(0, 1)``. The closed forms live in :mod:`keras_diffusion.activations`; this layer reads
``sigma`` from the model's shared :class:`keras_diffusion.Bandwidth`, so a continuation
schedule moves every diffused layer of a model at once.
"""

import keras

from keras_diffusion import activations as activations_lib
from keras_diffusion import bandwidth as bandwidth_lib


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DiffusedActivation(keras.layers.Layer):
    """Applies ``h~_sigma(x) = E[h(x + sigma z)]``, the diffused activation of Mobahi 2016.

    Mobahi 2016, sec. 3 (Table 1) and sec. 6, eq. (11) for ``erf(a x)``. At ``sigma = 0`` the
    layer is the plain activation ``h``.

    Args:
        activation: name of the activation, one of ``keras_diffusion.activations.names()``
            (``"linear"``, ``"relu"``, ``"erf"``, ``"sign"``, ``"tanh"``, ``"sigmoid"``).
        bandwidth: a shared :class:`keras_diffusion.Bandwidth` (pass the same object to every
            diffused layer of a model), a number (a private bandwidth starting there) or
            ``None`` (a private bandwidth starting at 1.0).
        slope: ``a`` in ``h(x) = g(a x)`` (the ``a`` of the paper's ``erf(a x)``; ``sign``
            ignores it), finite and > 0; see ``keras_diffusion.activations``.
        method: ``"fast"`` or ``"accurate"``, handed to
            ``keras_diffusion.activations.diffused_mean``.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Example:

    >>> sigma = keras_diffusion.Bandwidth(0.5)
    >>> layer = DiffusedActivation("erf", bandwidth=sigma)
    >>> y = layer(np.linspace(-2.0, 2.0, 5)[None].astype("float32"))
    >>> sigma.assign(0.0)  # the plain erf from now on, no retracing
    """

    def __init__(self, activation, bandwidth=None, slope=1.0, method="fast", **kwargs):
        super().__init__(**kwargs)
        self.activation = activations_lib.check_activation(activation)
        self.bandwidth = bandwidth_lib.resolve(bandwidth, owner=self)
        self.slope = activations_lib.check_slope(slope)
        self.method = activations_lib.check_method(method)
        self.supports_masking = True

    def call(self, inputs):
        sigma = keras.ops.cast(self.bandwidth.value, inputs.dtype)
        return activations_lib.diffused_mean(
            self.activation, inputs, sigma, slope=self.slope, method=self.method
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "activation": self.activation,
            "bandwidth": bandwidth_lib.serialize(self.bandwidth),
            "slope": self.slope,
            "method": self.method,
        }
