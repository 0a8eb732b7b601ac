"""Closure-based training inside ``model.fit``: the ``Closure`` and the models using it."""

from keras_diffusion.training.closure import Closure  # noqa: F401
from keras_diffusion.training.model import ClosureTrainingMixin, Model, Sequential  # noqa: F401
