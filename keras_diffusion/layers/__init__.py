"""Keras layers and RNN cells: diffused activations, the diffused RNN, deep-transition cells."""
from keras_diffusion.layers.deep_output import DeepOutput  # noqa: E402
from keras_diffusion.layers.deep_transition import (  # noqa: E402
    DeepTransitionRNN,
    DeepTransitionRNNCell,
)
from keras_diffusion.layers.diffused_activation import DiffusedActivation  # noqa: E402
from keras_diffusion.layers.diffused_rnn import DiffusedOutput, DiffusedRNN, DiffusedRNNCell  # noqa: E402
