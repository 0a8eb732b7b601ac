"""Optimizers of keras_diffusion."""
from keras_diffusion.optimizers.annealed import AnnealedStep  # noqa: F401
from keras_diffusion.optimizers.closure_optimizer import ClosureOptimizer  # noqa: F401
from keras_diffusion.optimizers.gauss_newton import GaussNewton  # noqa: F401
