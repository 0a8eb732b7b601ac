"""keras_diffusion: training hard-to-train networks by diffusion and by curvature, in Keras."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_diffusion.bandwidth import Bandwidth, bandwidths, get_sigma, set_sigma  # noqa: E402
from keras_diffusion.monitors import CurvatureMonitor  # noqa: E402
from keras_diffusion.training import (  # noqa: E402
    Closure,
    ClosureTrainingMixin,
    Model,
    Sequential,
)

__version__ = "0.1.0"
from keras_diffusion import callbacks  # noqa: E402,F401
from keras_diffusion import initializers, regularizers  # noqa: E402,F401
from keras_diffusion import activations  # noqa: E402,F401
from keras_diffusion import layers, losses  # noqa: E402,F401
