"""Keras's own layer test harness on every layer of the package.

``keras.src.testing.TestCase.run_layer_test`` (a private Keras module, imported here in test
code only) checks, per configuration: ``get_config`` is JSON and ``from_config`` /
``deserialize_keras_object`` give the same config back, ``build`` creates the weights, the
symbolic and eager calls agree on shapes and dtypes, a compiled ``fit`` step runs (XLA where
Keras picks it) and a ``mixed_float16`` instance computes in float16 with float32 weights.
Shapes are tiny so that every configuration runs in about a second.
"""

import keras
import pytest
from keras.src import testing

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

B, T, F, H = 2, 3, 2, 3
SEQUENCES = (B, T, F)


@pytest.fixture(scope="module")
def harness():
    return testing.TestCase()


def _moments(shape):
    return (shape, shape)


def diffused_rnn(units=H, **cell_kwargs):
    return DiffusedRNNCell(units, bandwidth=kd.Bandwidth(0.5), **cell_kwargs)


def deep_cell(**kwargs):
    return DeepTransitionRNNCell(H, **kwargs)


# (layer class, init kwargs, input shape, expected output shape, further run_layer_test args)
CONFIGURATIONS = {
    # A Bandwidth's call returns the scalar sigma, which cannot be a fit target.
    "bandwidth": (
        kd.Bandwidth, {"sigma": 0.5}, (B, F), (),
        {"run_training_check": False, "expected_num_non_trainable_weights": 1},
    ),
    "bandwidth_trainable": (
        kd.Bandwidth, {"sigma": 0.5, "trainable": True}, (B, F), (),
        {"run_training_check": False, "expected_num_trainable_weights": 1},
    ),
    "activation_erf": (
        DiffusedActivation, {"activation": "erf", "bandwidth": kd.Bandwidth(0.5)}, (B, F), (B, F),
        {"supports_masking": True, "expected_num_non_trainable_weights": 1},
    ),
    "activation_relu_private_sigma": (
        DiffusedActivation, {"activation": "relu", "bandwidth": 0.3, "slope": 2.0}, (B, T, F),
        (B, T, F), {},
    ),
    "activation_tanh_accurate": (
        DiffusedActivation, {"activation": "tanh", "method": "accurate"}, (B, F), (B, F), {},
    ),
    "keras_rnn_diffused_cell": (
        keras.layers.RNN, {"cell": diffused_rnn(activation="erf")}, SEQUENCES, (B, H), {},
    ),
    "keras_rnn_diffused_cell_relu_sequences": (
        keras.layers.RNN, {"cell": diffused_rnn(activation="relu"), "return_sequences": True},
        SEQUENCES, (B, T, H), {},
    ),
    "diffused_rnn_erf_last_step": (
        DiffusedRNN, {"cell": diffused_rnn(activation="erf", penalty=0.1)}, SEQUENCES,
        _moments((B, H)), {"expected_num_losses": 1},
    ),
    "diffused_rnn_tanh_sequences": (
        DiffusedRNN, {"cell": diffused_rnn(activation="tanh"), "return_sequences": True},
        SEQUENCES, _moments((B, T, H)), {"expected_num_losses": 1},
    ),
    "diffused_rnn_relu_loop_without_penalty": (
        DiffusedRNN, {"cell": diffused_rnn(activation="relu", penalty=0.0)}, SEQUENCES,
        _moments((B, H)), {"expected_num_losses": 0},
    ),
    "diffused_rnn_accurate_backwards_state": (
        DiffusedRNN,
        {"cell": diffused_rnn(activation="erf", method="accurate"), "go_backwards": True,
         "return_state": True},
        SEQUENCES, (_moments((B, H)), (B, H)), {},
    ),
    "diffused_rnn_sigmoid_unrolled": (
        DiffusedRNN, {"cell": diffused_rnn(activation="sigmoid"), "unroll": True,
                      "return_sequences": True},
        SEQUENCES, _moments((B, T, H)), {},
    ),
    "diffused_output_moments": (
        DiffusedOutput, {"units": 2, "bandwidth": kd.Bandwidth(0.5), "penalty": 0.1},
        _moments((B, T, H)), (B, T, 2), {"expected_num_losses": 2},
    ),
    "diffused_output_tensor_erf": (
        DiffusedOutput, {"units": 1, "activation": "erf", "penalty": 0.0}, (B, H), (B, 1),
        {"expected_num_losses": 1},
    ),
    "diffused_output_no_bias": (
        DiffusedOutput, {"units": 2, "use_bias": False}, (B, H), (B, 2),
        {"expected_num_trainable_weights": 1},
    ),
    "keras_rnn_deep_cell_plain": (
        keras.layers.RNN, {"cell": deep_cell()}, SEQUENCES, (B, H), {},
    ),
    "keras_rnn_deep_cell_shortcut_sequences": (
        keras.layers.RNN, {"cell": deep_cell(transition_units=[4], shortcut=True),
                           "return_sequences": True},
        SEQUENCES, (B, T, H), {},
    ),
    "keras_rnn_deep_cell_diffused": (
        keras.layers.RNN,
        {"cell": deep_cell(transition_units=[4], activation="erf", bandwidth=kd.Bandwidth(0.4))},
        SEQUENCES, (B, H), {},
    ),
    "keras_rnn_deep_cells_stacked": (
        keras.layers.RNN, {"cell": [deep_cell(bandwidth=0.3, activation="tanh"), deep_cell()]},
        SEQUENCES, (B, H), {},
    ),
    "deep_transition_rnn_plain": (
        DeepTransitionRNN, {"cell": deep_cell()}, SEQUENCES, (B, H), {},
    ),
    "deep_transition_rnn_shortcut_sequences": (
        DeepTransitionRNN, {"cell": deep_cell(transition_units=[4, 2], shortcut=True),
                            "return_sequences": True},
        SEQUENCES, (B, T, H), {},
    ),
    "deep_transition_rnn_diffused_state": (
        DeepTransitionRNN,
        {"cell": deep_cell(transition_units=[4], transition_activation="relu",
                           bandwidth=kd.Bandwidth(0.5)),
         "return_state": True},
        SEQUENCES, ((B, H), (B, H)), {},
    ),
    "deep_transition_rnn_dropout_backwards": (
        DeepTransitionRNN,
        {"cell": deep_cell(transition_units=[4], dropout=0.2, recurrent_dropout=0.2, seed=1),
         "go_backwards": True},
        SEQUENCES, (B, H), {"expected_num_seed_generators": 1},
    ),
    "deep_transition_rnn_unrolled": (
        DeepTransitionRNN, {"cell": deep_cell(transition_units=[4]), "unroll": True},
        SEQUENCES, (B, H), {},
    ),
    "deep_output_plain": (
        DeepOutput, {"units": [4]}, (B, T, H), (B, T, 4),
        {"supports_masking": True, "expected_num_trainable_weights": 2},
    ),
    "deep_output_two_layers_no_bias": (
        DeepOutput, {"units": [4, 2], "activation": "tanh", "use_bias": False}, (B, H), (B, 2),
        {"expected_num_trainable_weights": 2},
    ),
    "deep_output_diffused": (
        DeepOutput, {"units": [4], "activation": "relu", "bandwidth": kd.Bandwidth(0.5)},
        (B, T, H), (B, T, 4), {"expected_num_non_trainable_weights": 1},
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_keras_layer_harness(harness, name):
    layer_cls, init_kwargs, input_shape, output_shape, extra = CONFIGURATIONS[name]
    harness.run_layer_test(
        layer_cls,
        init_kwargs=init_kwargs,
        input_shape=input_shape,
        expected_output_shape=output_shape,
        **extra,
    )
