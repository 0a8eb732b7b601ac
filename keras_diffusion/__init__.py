"""keras_diffusion: training hard-to-train networks by diffusion and by curvature, in Keras.

Submodules: ``activations`` (diffused activation functions), ``layers``, ``losses``,
``callbacks`` (sigma schedules), ``optimizers``, ``curvature`` (products, spectra, solvers),
``regularizers`` (Omega), ``initializers``.

The package runs on the TensorFlow backend of Keras 3 (Keras's default). It does not choose
the backend: importing it under another backend (``KERAS_BACKEND=jax``) raises an
``ImportError`` naming the fix.
"""

from keras_diffusion import compat

compat.check_backend()
compat.fix_multi_worker_fit()  # keras-team/keras#20585

from keras_diffusion import activations  # noqa: E402
from keras_diffusion import callbacks  # noqa: E402
from keras_diffusion import curvature  # noqa: E402
from keras_diffusion import initializers  # noqa: E402
from keras_diffusion import layers  # noqa: E402
from keras_diffusion import losses  # noqa: E402
from keras_diffusion import optimizers  # noqa: E402
from keras_diffusion import probes  # noqa: E402
from keras_diffusion import regularizers  # noqa: E402
from keras_diffusion.bandwidth import Bandwidth, bandwidths, get_sigma, set_sigma  # noqa: E402
from keras_diffusion.monitors import CurvatureMonitor  # noqa: E402
from keras_diffusion.training import Closure, ClosureTrainingMixin, Model, Sequential  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Bandwidth",
    "Closure",
    "ClosureTrainingMixin",
    "CurvatureMonitor",
    "Model",
    "Sequential",
    "activations",
    "bandwidths",
    "callbacks",
    "curvature",
    "get_sigma",
    "initializers",
    "layers",
    "losses",
    "optimizers",
    "probes",
    "regularizers",
    "set_sigma",
]
