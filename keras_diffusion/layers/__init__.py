"""Keras layers and RNN cells: diffused activations, the diffused RNN, deep-transition cells."""
