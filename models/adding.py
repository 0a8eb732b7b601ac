"""The adding problem of Mobahi (2016), sec. 7: ``keras_diffusion.datasets.adding``.

The generators moved into the library so that its TFDS builder (``adding_problem``) can use
them; this module keeps the experiments' import path.
"""

from keras_diffusion.datasets.adding import (  # noqa: F401
    PLACEMENTS,
    SPLITS,
    AddingTask,
    adding_arrays,
    long_adding_task,
    mobahi_adding_task,
)
