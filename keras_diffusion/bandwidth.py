"""The smoothing bandwidth sigma shared by the diffused layers of a model.

Diffusion (Mobahi 2016, sec. 2, eq. (5)) convolves the training cost with a Gaussian of
standard deviation ``sigma``; continuation (Algorithm 1) follows the minimizer while
``sigma`` shrinks to zero. Every diffused layer of a model must see the *same* sigma, so
sigma lives in one small object, :class:`Bandwidth`, that the layers hold by reference:

>>> sigma = Bandwidth(1.0)
>>> layer_a = keras_diffusion.layers.DiffusedActivation("erf", bandwidth=sigma)
>>> layer_b = keras_diffusion.layers.DiffusedActivation("tanh", bandwidth=sigma)

Its value is a Keras variable: callbacks assign it during ``fit`` without retracing the
train step, and ``model.save`` stores it once (the shared object keeps its identity
through a ``.keras`` round trip).
"""

import math

import keras
from keras import ops


def check_nonnegative(name, value, meaning=""):
    """Returns ``value`` as a float after checking that it is a finite number >= 0.

    The one check behind every "finite and >= 0" argument of the package (sigma, penalty
    weights, schedule constants). ``name`` and ``meaning`` (e.g. ``" (lambda of ...)"``) go into
    the error message, which also names the bad value.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number >= 0, got {value!r}.") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be finite and >= 0{meaning}, got {value!r}.")
    return number


def check_sigma(sigma):
    """Returns ``sigma`` as a float after checking that it is finite and >= 0."""
    return check_nonnegative("sigma", sigma, " (sigma = 0 is the undiffused network)")


@keras.saving.register_keras_serializable(package="keras_diffusion")
class Bandwidth(keras.layers.Layer):
    """Holds the Gaussian smoothing bandwidth sigma shared by diffused layers.

    Args:
        sigma: initial bandwidth, a finite number >= 0.
        trainable: whether sigma is trained with the weights (default ``False``: it is
            set by a continuation schedule, see ``keras_diffusion.callbacks``).
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ...).

    Example:

    >>> sigma = Bandwidth(0.5)
    >>> float(sigma.value)
    0.5
    >>> sigma.assign(0.25)
    >>> float(sigma.value)
    0.25
    """

    def __init__(self, sigma=1.0, trainable=False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(trainable=trainable, **kwargs)
        self.initial_sigma = check_sigma(sigma)
        self.variable = self.add_weight(
            name="sigma",
            shape=(),
            dtype="float32",
            initializer=keras.initializers.Constant(self.initial_sigma),
            trainable=trainable,
        )
        self.built = True

    @property
    def value(self):
        """The current sigma as a float32 scalar tensor."""
        return ops.convert_to_tensor(self.variable)

    def assign(self, sigma):
        """Sets sigma. Python numbers are checked here; tensors are assigned as given."""
        if isinstance(sigma, (int, float)):
            sigma = check_sigma(sigma)
        self.variable.assign(ops.cast(sigma, "float32"))

    def call(self, inputs=None):
        return self.value

    def get_config(self):
        config = super().get_config()
        config["sigma"] = self.initial_sigma
        return config


def resolve(bandwidth):
    """Turns a layer's ``bandwidth`` argument into a :class:`Bandwidth`.

    Accepts a ``Bandwidth`` (shared by reference), a number (a private bandwidth starting at
    that value), ``None`` (a private bandwidth starting at 1.0) or a serialized config.
    """
    if isinstance(bandwidth, Bandwidth):
        return bandwidth
    if bandwidth is None:
        return Bandwidth()
    if isinstance(bandwidth, dict):
        restored = keras.saving.deserialize_keras_object(bandwidth)
        if not isinstance(restored, Bandwidth):
            raise TypeError(f"bandwidth config does not describe a Bandwidth: {bandwidth!r}")
        return restored
    return Bandwidth(bandwidth)


def bandwidths(model):
    """The distinct :class:`Bandwidth` objects used anywhere inside ``model``."""
    found = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, Bandwidth):
            found.setdefault(id(layer), layer)
    return list(found.values())


def require_bandwidths(model):
    """:func:`bandwidths` of ``model``; ``ValueError`` if it has none (no diffused layer)."""
    found = bandwidths(model)
    if not found:
        raise ValueError(
            f"Model {model.name!r} has no diffused layers (no keras_diffusion.Bandwidth "
            "inside it), so there is no sigma to read or set."
        )
    return found


def get_sigma(model):
    """The sigma shared by the diffused layers of ``model``, as a Python float.

    Raises ``ValueError`` if the model has no diffused layer, or if its layers hold
    bandwidths with different values (call :func:`set_sigma` to make them agree).
    """
    values = {float(ops.convert_to_numpy(b.variable)) for b in require_bandwidths(model)}
    if len(values) > 1:
        raise ValueError(
            f"Model {model.name!r} holds bandwidths with different values {sorted(values)}; "
            "pass one keras_diffusion.Bandwidth to all diffused layers, or call set_sigma()."
        )
    return values.pop()


def set_sigma(model, sigma):
    """Assigns ``sigma`` to every bandwidth inside ``model`` (no retracing)."""
    sigma = check_sigma(sigma)
    for bandwidth in require_bandwidths(model):
        bandwidth.assign(sigma)
