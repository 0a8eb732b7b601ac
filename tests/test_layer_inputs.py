"""Bad inputs and arguments of the layers and of SequenceSquaredError: clear errors naming the
expected shape, raised before any time loop (``tf.scan``, Keras's RNN loop) or XLA sees them,
eagerly, under ``tf.function`` and under ``jit_compile``."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_diffusion.layers import (
    DeepOutput,
    DeepTransitionRNN,
    DeepTransitionRNNCell,
    DiffusedOutput,
    DiffusedRNN,
    DiffusedRNNCell,
)
from keras_diffusion.losses import SequenceSquaredError

B, T, F, H = 2, 3, 2, 3
RNG = np.random.default_rng(0)
SEQUENCES = RNG.normal(size=(B, T, F)).astype("float32")
RUNNERS = {
    "eager": lambda f, *args: f(*args),
    "tf_function": lambda f, *args: tf.function(f)(*args),
    "jit_compile": lambda f, *args: tf.function(f, jit_compile=True)(*args),
}


def recurrent_layers():
    return {
        "diffused_rnn": DiffusedRNN(DiffusedRNNCell(H, "erf", bandwidth=0.5)),
        "diffused_rnn_loop": DiffusedRNN(DiffusedRNNCell(H, "relu", bandwidth=0.5)),
        "deep_transition_rnn": DeepTransitionRNN(DeepTransitionRNNCell(H, [4])),
    }


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize("name", sorted(recurrent_layers()))
def test_sequences_must_be_rank_3_with_at_least_one_step(name, runner):
    layer = recurrent_layers()[name]
    layer(SEQUENCES)  # built on good sequences first: the check is in call too
    run = RUNNERS[runner]
    expected = re.escape("expects sequences of shape (batch, timesteps, features), got shape (2, 2)")
    with pytest.raises(ValueError, match=expected):
        run(layer, SEQUENCES[:, 0])
    with pytest.raises(ValueError, match=re.escape("sequences of length 0 (shape (2, 0, 2))")):
        run(layer, SEQUENCES[:, :0])


@pytest.mark.parametrize("name", sorted(recurrent_layers()))
def test_unbuilt_layers_refuse_bad_sequences_before_building(name):
    layer = recurrent_layers()[name]
    with pytest.raises(ValueError, match=re.escape("got shape (None, 3)")):
        layer(keras.Input((3,)))
    assert not layer.cell.built  # no cell weights of the wrong shape were made
    with pytest.raises(ValueError, match="length 0"):
        layer(np.zeros((B, 0, F), "float32"))


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize("name", sorted(recurrent_layers()))
def test_initial_state_must_be_batch_by_units(name, runner):
    layer = recurrent_layers()[name]
    run = RUNNERS[runner]
    good = np.full((B, H), 0.1, "float32")
    reference = layer(SEQUENCES, initial_state=good)
    np.testing.assert_allclose(run(lambda x, s: layer(x, initial_state=s), SEQUENCES, good),
                               reference, rtol=1e-5, atol=1e-6)
    for bad in (np.zeros((B, H + 1), "float32"), np.zeros((B + 1, H), "float32"),
                np.zeros((B, 1, H), "float32")):
        expected = re.escape(f"initial state of shape (batch, units) = (2, 3), got shape {bad.shape}")
        with pytest.raises(ValueError, match=expected):
            run(lambda x, s: layer(x, initial_state=s), SEQUENCES, bad)
    with pytest.raises(ValueError, match="has one state .* got 2 initial states"):
        layer(SEQUENCES, initial_state=[good, good])


def test_diffused_output_takes_a_tensor_or_a_pair_of_equal_shapes():
    layer = DiffusedOutput(1, bandwidth=0.5)
    mean = RNG.normal(size=(B, T, H)).astype("float32")
    layer((mean, mean**2 + 0.1))
    for bad in [(mean,), (mean, mean, mean), (mean, mean[:, :, :2]), (mean, mean[:, 0])]:
        shapes = [tuple(x.shape) for x in bad]
        for runner in ("eager", "tf_function"):
            with pytest.raises(ValueError, match=re.escape(f"(mean, second_moment) of two tensors "
                                                           f"of one shape (batch, ..., features), "
                                                           f"such as the output of DiffusedRNN; "
                                                           f"got shapes {shapes}")):
                RUNNERS[runner](layer, bad)
    with pytest.raises(ValueError, match="got shapes"):
        DiffusedOutput(1)((keras.Input((3,)), keras.Input((4,))))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DeepOutput(5), r"`units` must be a list of layer widths, got 5; .* e.g. \[5\]"),
        (lambda: DeepOutput("64"), r"`units` must be a list of layer widths, got '64'"),
        (lambda: DeepOutput([]), r"at least one intermediate layer, got units=\[\]"),
        (lambda: DeepTransitionRNNCell(4, transition_units=8), r"transition_units` must be a list"),
        (lambda: DeepTransitionRNNCell(4, dropout="x"), r"dropout` must be a finite real number"),
        (lambda: DiffusedRNNCell(2.5), r"`units` must be an integer >= 1, got 2.5"),
        (lambda: DiffusedOutput(True), r"`units` must be an integer >= 1, got True"),
        (lambda: DiffusedOutput(1, penalty=float("nan")),
         r"penalty` must be a finite real number, got nan. \(lambda of Mobahi 2016"),
    ],
)
def test_bad_constructor_arguments_name_the_value_and_the_fix(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_squared_error_follows_the_keras_rank_convention():
    values = np.array([0.5, -1.0, 2.0, 3.0], "float32")
    other = values[::-1].copy()
    loss = SequenceSquaredError()
    # targets (N,) against predictions (N, 1): the same numbers, zero loss (was 84 here)
    assert float(loss(values, values[:, None])) == 0.0
    assert float(loss(values[:, None], values)) == 0.0
    expected = float(keras.losses.MeanSquaredError()(values, other[:, None]))
    assert float(loss(values, other[:, None])) == pytest.approx(expected)
    # every-step targets: the sum over steps and outputs, averaged over sequences
    y, p = RNG.normal(size=(2, 3, 2)), RNG.normal(size=(2, 3, 2))
    assert float(loss(y, p)) == pytest.approx(np.sum((y - p) ** 2) / 2, rel=1e-5)
    with pytest.raises(ValueError, match=re.escape("targets of shape (4, 3) and predictions of "
                                                   "shape (4, 2)")):
        loss(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="got targets of shape"):
        tf.function(loss)(np.zeros((2, 3, 1)), np.zeros((2, 1)))


def test_squared_error_in_fit_with_flat_targets_equals_mse():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    x, y = RNG.normal(size=(8, 2)).astype("float32"), RNG.normal(size=8).astype("float32")
    model.compile(loss=SequenceSquaredError())
    ours = model.evaluate(x, y, verbose=0)
    model.compile(loss="mse")
    assert ours == pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-6)
