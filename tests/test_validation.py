"""keras_diffusion.validation: every check accepts the good values, converts them, and names
the argument, the bad value and the hint in its error."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_diffusion import validation

NOT_NUMBERS = [None, "3", True, [1], np.array([1.0, 2.0])]


@pytest.mark.parametrize("value, expected", [(0, 0), (7, 7), (np.int64(3), 3), (np.int32(0), 0)])
def test_integer_accepts_and_converts(value, expected):
    out = validation.integer("count", value)
    assert out == expected and type(out) is int


@pytest.mark.parametrize("value", [-1, 2.0, 2.5, math.inf, math.nan] + NOT_NUMBERS)
def test_integer_refuses_naming_value_and_hint(value):
    with pytest.raises(ValueError, match=r"`count` must be an integer >= 0, got .*\. Use 3\.$"):
        validation.integer("count", value, hint="Use 3.")


def test_integer_minimum_and_positive_int():
    assert validation.integer("length", 200, minimum=200) == 200
    with pytest.raises(ValueError, match="`length` must be an integer >= 200, got 199."):
        validation.integer("length", 199, minimum=200)
    assert validation.positive_int("steps", 1) == 1
    for bad in (0, -4, 1.0, False):
        with pytest.raises(ValueError, match=f"`steps` must be an integer >= 1, got {bad!r}."):
            validation.positive_int("steps", bad)


@pytest.mark.parametrize("value", [0, -2.5, 3, np.float32(0.25), np.int64(-1)])
def test_real_accepts_finite_numbers_as_float(value):
    out = validation.real("x", value)
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, np.float32("nan")] + NOT_NUMBERS)
def test_real_refuses_non_finite_and_non_numbers(value):
    with pytest.raises(ValueError, match=r"`x` must be a finite real number, got .*\. Fix\.$"):
        validation.real("x", value, "Fix.")


def test_nonnegative_positive_and_their_boundaries():
    assert validation.nonnegative("damping", 0) == 0.0
    assert validation.positive("sigma", 1e-12) == 1e-12
    with pytest.raises(ValueError, match=r"`damping` must be finite and >= 0, got -1e-09\."):
        validation.nonnegative("damping", -1e-9)
    with pytest.raises(ValueError, match=r"`sigma` must be finite and > 0, got 0\. Hint\.$"):
        validation.positive("sigma", 0, "Hint.")
    with pytest.raises(ValueError, match="`damping` must be a finite real number, got inf"):
        validation.nonnegative("damping", math.inf)
    with pytest.raises(ValueError, match="`sigma` must be a finite real number, got nan"):
        validation.positive("sigma", math.nan)


def test_fraction_intervals():
    assert validation.fraction("rate", 1) == 1.0 and validation.fraction("rate", 0.5) == 0.5
    assert validation.fraction("share", 0.0, allow_zero=True) == 0.0
    for bad in (0.0, 1.0001, -0.1):
        with pytest.raises(ValueError, match=rf"`rate` must be in \(0, 1\], got {bad!r}\."):
            validation.fraction("rate", bad)
    with pytest.raises(ValueError, match=r"`share` must be in \[0, 1\], got 2\."):
        validation.fraction("share", 2, allow_zero=True)
    with pytest.raises(ValueError, match="`rate` must be a finite real number, got nan"):
        validation.fraction("rate", math.nan)


def test_one_of():
    assert validation.one_of("mode", "auto", ("auto", "forward")) == "auto"
    with pytest.raises(ValueError, match=r"`mode` must be one of \('auto', 'forward'\), "
                                         r"got 'reverse'\. Use auto\.$"):
        validation.one_of("mode", "reverse", ("auto", "forward"), "Use auto.")


def test_if_known_checks_numbers_and_static_tensors_but_not_variables():
    check = validation.nonnegative
    assert validation.if_known(check, "damping", 0.5) == 0.5
    constant = tf.constant(0.5)
    assert validation.if_known(check, "damping", constant) is constant
    for bad in (-1.0, np.float64(-1.0), tf.constant(-1.0), tf.constant(math.inf)):
        with pytest.raises(ValueError, match=r"`damping` must be .*, got (-1\.0|inf)\. Hint\."):
            validation.if_known(check, "damping", bad, "Hint.")
    with pytest.raises(ValueError, match="got None"):
        validation.if_known(check, "damping", None)
    # Values only known when the step runs pass through: a variable, a traced tensor.
    for variable in (tf.Variable(-1.0), keras.Variable(-1.0)):
        assert validation.if_known(check, "damping", variable) is variable
    seen = []

    @tf.function
    def traced(x):
        seen.append(validation.if_known(check, "damping", x))
        return x

    traced(tf.constant(-1.0))
    assert len(seen) == 1 and tf.is_tensor(seen[0])
