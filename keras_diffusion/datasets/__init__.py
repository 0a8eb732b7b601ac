"""Data sets of keras_diffusion through TensorFlow Datasets, and their input pipelines.

Importing this module registers the package's TFDS builders (``builders.py``: the adding
problem, the pathological tasks, the character corpus, scikit-learn digits, MNIST-1D and
CURVES-like images), which then load like any TFDS data set, ``tfds.load(name, ...)``.
Submodules: ``adding``, ``pathological``, ``text``, ``curves`` (the generators), ``builders``
(TFDS), ``pipelines`` (loading, preprocessing, batching).
"""

from keras_diffusion.datasets import adding  # noqa: F401
from keras_diffusion.datasets import builders  # noqa: F401
from keras_diffusion.datasets import curves  # noqa: F401
from keras_diffusion.datasets import pathological  # noqa: F401
from keras_diffusion.datasets import pipelines  # noqa: F401
from keras_diffusion.datasets import text  # noqa: F401
from keras_diffusion.datasets.builders import custom_config  # noqa: F401
from keras_diffusion.datasets.pipelines import (  # noqa: F401
    DatasetNotFoundError,
    batches,
    load,
    steps_per_epoch,
)
