"""Argument and input-shape checks shared by the layers of the package.

Arguments go through ``keras_diffusion.validation``; input shapes are checked on the static
shapes a layer sees in ``build`` and ``call`` (eagerly, symbolically and while tracing), so
that a wrong shape is reported naming the expected one before it reaches a time loop
(``tf.scan``, ``keras.layers.RNN``'s loop) or XLA. Unknown dimensions (``None``) pass.

Example:

>>> widths("transition_units", [8, 4])
(8, 4)
>>> sequence_shape(layer, (None, 10, 2))   # (batch, timesteps, features): passes
"""

from keras_diffusion import validation


def penalty(value):
    """The penalty weight ``lam`` of Mobahi 2016, sec. 4.1, checked finite and >= 0."""
    return validation.nonnegative("penalty", value, hint="(lambda of Mobahi 2016, sec. 4.1)")


def widths(name, values):
    """``values`` as a tuple of positive ints: the widths of a stack of layers."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(
            f"`{name}` must be a list of layer widths, got {values!r}; "
            f"give one width per layer, e.g. [{values!r}]."
        )
    values = tuple(values)
    return tuple(
        validation.positive_int(
            name, width, hint=f"(bad entry in {list(values)}; give each layer a width >= 1)"
        )
        for width in values
    )


def _described(layer):
    return f"{type(layer).__name__} {layer.name!r}"


def sequence_shape(layer, shape):
    """Checks that ``shape`` is ``(batch, timesteps, features)`` with ``timesteps != 0``."""
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(
            f"{_described(layer)} expects sequences of shape (batch, timesteps, features), got "
            f"shape {shape}; add the missing axis, e.g. x[:, None, :] for sequences of one step."
        )
    if shape[1] == 0:
        raise ValueError(
            f"{_described(layer)} got sequences of length 0 (shape {shape}); a sequence needs "
            "at least one time step (shape (batch, timesteps >= 1, features))."
        )


def state_shape(layer, shape, units, batch):
    """Checks that an initial state's ``shape`` is ``(batch, units)``."""
    shape = tuple(shape)
    expected = (batch, units)
    matches = len(shape) == 2 and all(
        a is None or b is None or a == b for a, b in zip(shape, expected)
    )
    if not matches:
        raise ValueError(
            f"{_described(layer)} expects an initial state of shape (batch, units) = "
            f"{expected}, got shape {shape}."
        )
