"""Optimizers of keras_diffusion."""
