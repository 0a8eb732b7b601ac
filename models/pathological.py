"""Pascanu's pathological tasks (thesis sec. 5.9): ``keras_diffusion.datasets.pathological``.

The generators moved into the library so that its TFDS builder (``pathological_task``) can
use them; this module keeps the experiments' import path.
"""

from keras_diffusion.datasets.pathological import (  # noqa: F401
    NUM_PERMUTATION_SYMBOLS,
    REGRESSION_THRESHOLD,
    SUCCESS_ERROR_RATE,
    TASKS,
    PathologicalTask,
    evaluate_success,
    sequence_errors,
)
