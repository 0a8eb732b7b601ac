"""Every layer of the package under ``mixed_float16`` and ``mixed_bfloat16`` against float32.

Each layer sits in a small model, built under the policy and under float32 with the same
weights. Checks: the layer computes in the policy's half precision with float32 weights; its
outputs equal the float32 model's within ``TOLERANCE * eps`` (``eps`` the unit roundoff of the
compute dtype: 2^-11 float16, 2^-8 bfloat16; every operation rounds to ``eps`` and the models
chain at most a few dozen operations on O(1) values, T = 3 recurrent steps included); and one
SGD step of ``fit`` (under ``mixed_float16`` through Keras's ``LossScaleOptimizer``) changes the
weights as the float32 step does, within ``TOLERANCE * eps`` of the step's size (the gradient is
a backward pass of the same length, in the same precision).
"""

import keras
import numpy as np
import pytest

import keras_diffusion as kd
from keras_diffusion.layers import (
    DeepOutput,
    DeepTransitionRNN,
    DeepTransitionRNNCell,
    DiffusedActivation,
    DiffusedOutput,
    DiffusedRNN,
    DiffusedRNNCell,
)

B, T, F, H = 8, 3, 2, 4
EPS = {"mixed_float16": 2.0**-11, "mixed_bfloat16": 2.0**-8}
TOLERANCE = 32


def _diffused_cell(**kwargs):
    return DiffusedRNNCell(H, bandwidth=kd.Bandwidth(0.5), **kwargs)


# name -> (input shape without the batch, function returning the layers after the Input)
MODELS = {
    "diffused_activation": ((F,), lambda: [
        keras.layers.Dense(H), DiffusedActivation("tanh", bandwidth=0.5), keras.layers.Dense(1)
    ]),
    "diffused_rnn_and_output": ((T, F), lambda: [
        DiffusedRNN(_diffused_cell(activation="erf", penalty=0.1), return_sequences=True),
        DiffusedOutput(1, bandwidth=kd.Bandwidth(0.5), penalty=0.1),
    ]),
    "diffused_rnn_cell_in_keras_rnn": ((T, F), lambda: [
        keras.layers.RNN(_diffused_cell(activation="tanh")), keras.layers.Dense(1)
    ]),
    "diffused_output_on_a_tensor": ((F,), lambda: [
        keras.layers.Dense(H), DiffusedOutput(1, activation="erf", bandwidth=0.5)
    ]),
    "deep_transition_rnn_and_deep_output": ((T, F), lambda: [
        DeepTransitionRNN(DeepTransitionRNNCell(H, transition_units=[4], bandwidth=0.5)),
        DeepOutput([4, 1], activation="tanh", bandwidth=0.5),
    ]),
    "deep_transition_cell_in_keras_rnn": ((T, F), lambda: [
        keras.layers.RNN(DeepTransitionRNNCell(H, transition_units=[3], shortcut=True)),
        DeepOutput([1], activation="relu"),
    ]),
}


def _build(name, policy):
    shape, layers = MODELS[name]
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        return kd.Sequential([keras.Input(shape)] + layers())
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _twins(name, policy):
    mixed, reference = _build(name, policy), _build(name, "float32")
    reference.set_weights(mixed.get_weights())
    return mixed, reference


def _data(name):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B,) + MODELS[name][0]).astype("float32")
    y = rng.normal(size=(B, T, 1) if name == "diffused_rnn_and_output" else (B, 1))
    return x, y.astype("float32")


@pytest.mark.parametrize("policy", sorted(EPS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_layer_outputs_match_float32(name, policy):
    mixed, reference = _twins(name, policy)
    x, _ = _data(name)
    half = policy.split("_")[1]
    for layer in mixed.layers:
        assert layer.compute_dtype == half and layer.variable_dtype == "float32"
    assert all(w.dtype == "float32" for w in mixed.get_weights())
    outputs = mixed(x)
    assert keras.backend.standardize_dtype(outputs.dtype) == half
    expected = keras.ops.convert_to_numpy(reference(x))
    actual = keras.ops.convert_to_numpy(keras.ops.cast(outputs, "float32"))
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE * EPS[policy] * scale)
    # The comparison is not of identical computations: the half-precision outputs differ.
    assert np.max(np.abs(actual - expected)) > 0


@pytest.mark.parametrize("policy", sorted(EPS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_layer_training_step_matches_float32(name, policy):
    mixed, reference = _twins(name, policy)
    x, y = _data(name)
    initial = reference.get_weights()
    for model in (mixed, reference):
        model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=False)
        logs = model.fit(x, y, batch_size=B, epochs=1, verbose=0).history
        assert np.isfinite(logs["loss"][0])
    scaled = isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    steps = [
        np.concatenate([(w - w0).ravel() for w, w0 in zip(model.get_weights(), initial)])
        for model in (mixed, reference)
    ]
    size = np.linalg.norm(steps[1])
    assert size > 1e-3
    assert np.linalg.norm(steps[0] - steps[1]) <= TOLERANCE * EPS[policy] * size
