"""keras_diffusion: training hard-to-train networks by diffusion and by curvature, in Keras."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_diffusion.bandwidth import Bandwidth, bandwidths, get_sigma, set_sigma  # noqa: E402

__version__ = "0.1.0"
