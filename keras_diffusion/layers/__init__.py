"""Keras layers and RNN cells: diffused activations, the diffused RNN, deep-transition cells."""

from keras_diffusion.layers.deep_output import DeepOutput
from keras_diffusion.layers.deep_transition import DeepTransitionRNN, DeepTransitionRNNCell
from keras_diffusion.layers.diffused_activation import DiffusedActivation
from keras_diffusion.layers.diffused_output import DiffusedOutput
from keras_diffusion.layers.diffused_rnn import DiffusedRNN
from keras_diffusion.layers.diffused_rnn_cell import DiffusedRNNCell

__all__ = [
    "DeepOutput",
    "DeepTransitionRNN",
    "DeepTransitionRNNCell",
    "DiffusedActivation",
    "DiffusedOutput",
    "DiffusedRNN",
    "DiffusedRNNCell",
]
