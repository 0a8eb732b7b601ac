"""Argument checks shared by the whole package: one function per kind of argument.

Every check names the argument, the bad value and what a good value looks like, and returns the
value converted to its Python type. All raise ``ValueError`` (a bool, a string or a non-finite
number where a count or a real is expected is a bad value like any other).

Example:

>>> positive_int("max_iterations", 50)
50
>>> nonnegative("damping", 1e-3)
0.001
>>> fraction("curvature_fraction", 0.25)
0.25
"""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf


def _hint(hint):
    return f" {hint}" if hint else ""


def integer(name, value, minimum=0, hint=""):
    """``value`` as an ``int`` after checking that it is an integer ``>= minimum``.

    Python and numpy integers pass; bools, floats and strings do not.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}, got {value!r}.{_hint(hint)}"
        )
    return int(value)


def positive_int(name, value, hint=""):
    """``value`` as an ``int`` after checking that it is an integer ``>= 1``."""
    return integer(name, value, minimum=1, hint=hint)


def real(name, value, hint=""):
    """``value`` as a ``float`` after checking that it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a finite real number, got {value!r}.{_hint(hint)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"`{name}` must be a finite real number, got {value!r}.{_hint(hint)}")
    return number


def nonnegative(name, value, hint=""):
    """``value`` as a ``float`` after checking that it is finite and ``>= 0``."""
    number = real(name, value, hint)
    if number < 0:
        raise ValueError(f"`{name}` must be finite and >= 0, got {value!r}.{_hint(hint)}")
    return number


def positive(name, value, hint=""):
    """``value`` as a ``float`` after checking that it is finite and ``> 0``."""
    number = real(name, value, hint)
    if number <= 0:
        raise ValueError(f"`{name}` must be finite and > 0, got {value!r}.{_hint(hint)}")
    return number


def fraction(name, value, hint="", allow_zero=False):
    """``value`` as a ``float`` in ``(0, 1]`` (``[0, 1]`` with ``allow_zero``)."""
    number = real(name, value, hint)
    low_ok = number >= 0 if allow_zero else number > 0
    if not (low_ok and number <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"`{name}` must be in {interval}, got {value!r}.{_hint(hint)}")
    return number


def one_of(name, value, choices, hint=""):
    """``value`` after checking that it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.{_hint(hint)}")
    return value


def if_known(check, name, value, hint=""):
    """``value`` unchanged, after ``check(name, number, hint)`` when its number is known now.

    For arguments that may be tensors (a damping held in an optimizer variable): a Python or
    numpy number (or anything that is not a tensor or variable, e.g. ``None``), or a scalar
    tensor whose value is known while tracing (``tf.get_static_value``), is checked; a
    variable or a tensor computed at run time passes unchecked.

    Example:

    >>> if_known(nonnegative, "damping", tf.constant(0.5))
    <tf.Tensor: shape=(), dtype=float32, numpy=0.5>
    """
    if isinstance(value, (tf.Variable, keras.Variable)):
        return value
    if tf.is_tensor(value):
        number = tf.get_static_value(value)
        if number is None or np.ndim(number) != 0:
            return value
    else:
        number = value
    if isinstance(number, np.generic):
        number = number.item()
    check(name, number, hint)
    return value
