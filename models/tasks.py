"""The tasks of ``scripts/train.py``: a TFDS data set, its preprocessing, loss and test error.

Every task reads its data through ``keras_diffusion.datasets`` (``tfds.load`` underneath):

* ``adding`` (Mobahi 2016, sec. 7; ``adding_problem/mobahi`` for T = 10) and ``long_adding``
  (one marker per half, T >= 200) -- regression, test error the mean squared error;
* the pathological tasks of Pascanu's thesis, sec. 5.9 (``pathological/<task>_<T>``) --
  classification (error rate: a sequence is wrong when any target step is) or, for
  ``addition``/``multiplication``, regression;
* ``digits`` (scikit-learn), ``mnist1d``, ``mnist``, ``fashion_mnist``, ``cifar10`` --
  classification of (optionally downscaled, e.g. the 10 x 10 MNIST of the thesis) flattened
  images or signals;
* ``curves`` -- the deep autoencoder of Hinton & Salakhutdinov (2006) / Martens (2010):
  targets are the inputs, test error the squared reconstruction error per image.

``make_task(TaskConfig(...))`` returns a :class:`Task` holding the unbatched training data,
the evaluation arrays, the shapes the model builders need, the loss and the error function.

Example:

>>> task = make_task(TaskConfig("adding", data_dir="/tmp/tfds"))
>>> task.input_shape, task.num_outputs, task.kind
((10, 2), 1, 'regression')
"""

import dataclasses

import keras
import numpy as np
import tensorflow_datasets as tfds

from keras_diffusion import validation
from keras_diffusion.datasets import builders, pathological, pipelines
from keras_diffusion.losses import SequenceSquaredError

IMAGE_TASKS = {
    "digits": "sklearn_digits",
    "mnist1d": "mnist1d",
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "cifar10": "cifar10",
}
TASKS = ("adding", "long_adding") + pathological.TASKS + tuple(IMAGE_TASKS) + ("curves",)
KINDS = ("regression", "classification", "autoencoder")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """What to load.

    Args:
        name: one of ``TASKS``.
        length: sequence length T of the sequence tasks (``None``: the task's usual one, 10
            for ``adding``, 200 for ``long_adding``, 50 for the pathological tasks).
        num_train, num_test: sizes of the generated sequence/curve data sets (``None``: the
            builder's; ignored by the fixed image data sets).
        seed: seed of the generated data.
        validation_fraction: share of the training split held out (its end) as the
            ``"validation"`` split, in [0, 1).
        image_size: ``(height, width)`` to downscale images to (``None``: keep).
        data_dir: TFDS data directory; download: allow downloading real data sets.
    """

    name: str = "adding"
    length: int = None
    num_train: int = None
    num_test: int = None
    seed: int = 0
    validation_fraction: float = 0.0
    image_size: tuple = None
    data_dir: str = None
    download: bool = False

    def __post_init__(self):
        validation.one_of("task", self.name, TASKS)
        for name in ("length", "num_train", "num_test"):
            if getattr(self, name) is not None:
                validation.positive_int(name, getattr(self, name))
        validation.integer("seed", self.seed)
        if validation.fraction(
            "validation_fraction", self.validation_fraction, allow_zero=True
        ) == 1.0:
            raise ValueError(
                "`validation_fraction` must be in [0, 1), got 1.0: 1 leaves no training example."
            )
        if self.image_size is not None:
            for size in self.image_size:
                validation.positive_int("image_size entry", size)

    def pathological_task(self):
        """The ``PathologicalTask`` of a pathological task name (default length 50)."""
        return pathological.PathologicalTask(self.name, self.length or 50)

    def dataset_config(self):
        """``(tfds name, BuilderConfig or None)`` of this task."""
        sizes = {k: getattr(self, k) for k in ("num_train", "num_test") if getattr(self, k)}
        if self.name in ("adding", "long_adding"):
            long = self.name == "long_adding"
            length = self.length or (200 if long else 10)
            if long:
                validation.integer("length", length, minimum=200)
            base = "long_200" if long else "mobahi"
            return "adding_problem", builders.custom_config(
                builders.AddingProblem, base, length=length, seed=self.seed, **sizes
            )
        if self.name in pathological.TASKS:
            length = self.pathological_task().length  # checks the length
            return "pathological", builders.custom_config(
                builders.Pathological, f"{self.name}_50", length=length, seed=self.seed, **sizes
            )
        if self.name == "curves":
            return "curves", builders.custom_config(builders.Curves, seed=self.seed, **sizes)
        return IMAGE_TASKS[self.name], None


@dataclasses.dataclass
class Task:
    """A loaded task.

    Attributes:
        config: its ``TaskConfig``.
        kind: ``"regression"``, ``"classification"`` or ``"autoencoder"``.
        train: unbatched ``tf.data.Dataset`` of ``(x, y)`` training pairs.
        num_train: number of training pairs.
        arrays: ``{split: [(x, y), ...]}``: the numpy arrays of ``"test"`` (and
            ``"validation"``), one pair per input length.
        input_shape: shape of one ``x`` (``None`` for a variable length).
        num_outputs: classes, or outputs per target step.
        target_steps: final outputs carrying a target (sequence tasks), else 1.
    """

    config: TaskConfig
    kind: str
    train: object
    num_train: int
    arrays: dict
    input_shape: tuple
    num_outputs: int
    target_steps: int = 1

    @property
    def input_dim(self):
        return self.input_shape[-1]

    @property
    def sequence(self):
        return self.config.name in ("adding", "long_adding") + pathological.TASKS

    def loss(self):
        """The training loss: squared error (summed per example) or cross-entropy."""
        if self.kind == "classification":
            return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return SequenceSquaredError()

    def error(self, prediction, y):
        """The test error of ``prediction`` (numpy): the error rate for classification (a
        sequence is wrong when any target step is), else ``mean ||prediction - y||^2``."""
        n = len(y)
        if self.kind == "classification":
            scores = np.reshape(prediction, (n, self.target_steps, self.num_outputs))
            wrong = np.argmax(scores, axis=-1) != np.reshape(y, (n, self.target_steps))
            return float(np.mean(np.any(wrong, axis=-1)))
        squared = np.square(np.reshape(prediction, (n, -1)) - np.reshape(y, (n, -1)))
        return float(np.mean(np.sum(squared, axis=1)))


def _numpy(data):
    """A finite ``(x, y)`` dataset as a list of ``(x, y)`` numpy arrays, one per input
    length in order of appearance (one for all but addition/multiplication)."""
    groups = {}
    for x, y in tfds.as_numpy(data):
        group = groups.setdefault(np.shape(x), ([], []))
        group[0].append(x)
        group[1].append(y)
    return [(np.stack(xs), np.stack(ys)) for xs, ys in groups.values()]


def _pairs(config, data):
    """The ``(x, y)`` pairs of a loaded split, preprocessed for the task."""
    if config.name in pathological.TASKS:
        return pipelines.pathological_pairs(data, config.pathological_task())
    if config.name == "curves":
        return pipelines.autoencoder_pairs(data)
    if config.name in IMAGE_TASKS and config.name != "mnist1d":
        return pipelines.image_pairs(data, size=config.image_size, flatten=True)
    return data


def make_task(config):
    """Loads ``config`` (a ``TaskConfig``) through TFDS and returns its :class:`Task`."""
    name, builder_config = config.dataset_config()
    load = dict(data_dir=config.data_dir, download=config.download, config=builder_config)
    num_examples = pipelines.load(name, "train", **load).cardinality().numpy()
    held_out = int(round(config.validation_fraction * num_examples))
    if num_examples - held_out < 1:
        raise ValueError(
            f"validation_fraction={config.validation_fraction} leaves no training example "
            f"of {num_examples}; lower it."
        )
    train_split = f"train[:{num_examples - held_out}]" if held_out else "train"
    arrays = {"test": _numpy(_pairs(config, pipelines.load(name, "test", **load)))}
    if held_out:
        validation_data = pipelines.load(name, f"train[{num_examples - held_out}:]", **load)
        arrays["validation"] = _numpy(_pairs(config, validation_data))
    x_test = arrays["test"][0][0]
    if config.name in pathological.TASKS:
        task = config.pathological_task()
        kind = "regression" if task.regression else "classification"
        shape, outputs, steps = (None, task.input_dim), task.num_outputs, task.target_steps
    elif config.name == "curves":
        kind, shape, outputs, steps = "autoencoder", x_test.shape[1:], x_test.shape[1], 1
    elif config.name in IMAGE_TASKS:
        kind, shape, outputs, steps = "classification", x_test.shape[1:], 10, 1
    else:
        kind, shape, outputs, steps = "regression", x_test.shape[1:], 1, 1
    return Task(
        config=config,
        kind=kind,
        train=_pairs(config, pipelines.load(name, train_split, **load)),
        num_train=num_examples - held_out,
        arrays=arrays,
        input_shape=tuple(shape),
        num_outputs=int(outputs),
        target_steps=steps,
    )
