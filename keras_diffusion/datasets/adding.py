"""The adding problem (Hochreiter & Schmidhuber 1997; Martens & Sutskever 2011).

Mobahi (2016), sec. 7, trains a 10-unit erf RNN on a short adding task: every sequence has
two input channels, a real value and a binary marker that is 1 at exactly two random
positions and 0 elsewhere; the target, read at the final step, is the sum of the two marked
values. Sec. 7 uses sequences of length 10, 1000 training and 100 test sequences.

Distribution used here (the paper does not state one): values are i.i.d. uniform on [0, 1],
so the target lies in [0, 2] (mean 1, variance 1/6: predicting the mean has test MSE 0.167).
Marker placement:

* ``"uniform"`` (sec. 7): the two marked positions are drawn uniformly without replacement
  from all ``length`` positions.
* ``"halves"`` (the long-sequence variant of Le, Jaitly & Hinton 2015, used for T >= 200):
  one marker uniformly in the first half ``[0, length // 2)``, the other uniformly in the
  second half ``[length // 2, length)``, so the network must remember a value for at least
  ``length // 2`` steps on average.

Data are seeded: the same ``AddingTask`` always yields the same arrays. The training pool of
``num_train`` sequences is split into ``train`` and ``validation`` (the last
``round(validation_fraction * num_train)`` sequences) for hyperparameter search; the test
set is drawn from an independent stream, so changing the validation fraction never changes
the test set.

Example:

>>> task = mobahi_adding_task(seed=0)
>>> x, y = task.arrays("train")
>>> x.shape, y.shape
((1000, 10, 2), (1000, 1))
>>> train = task.dataset("train", batch_size=50, shuffle=True)
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_diffusion import validation

PLACEMENTS = ("uniform", "halves")
SPLITS = ("train", "validation", "test")


def adding_arrays(num_sequences, length, placement="uniform", rng=None):
    """Draws ``num_sequences`` adding-problem sequences.

    Args:
        num_sequences: number of sequences, >= 1.
        length: time steps per sequence, >= 2.
        placement: ``"uniform"`` or ``"halves"`` (see the module docstring).
        rng: a ``numpy.random.Generator`` (default: a fresh unseeded one).

    Returns:
        ``(x, y)``: float32 arrays of shapes ``(num_sequences, length, 2)`` (channel 0 the
        values, channel 1 the markers) and ``(num_sequences, 1)`` (the sum of the two marked
        values).
    """
    validation.integer("num_sequences", num_sequences, minimum=1)
    validation.integer("length", length, minimum=2)
    validation.one_of("placement", placement, PLACEMENTS)
    rng = np.random.default_rng() if rng is None else rng
    values = rng.uniform(0.0, 1.0, size=(num_sequences, length))
    if placement == "uniform":
        # argsort of i.i.d. uniforms: two distinct positions, uniform over all pairs.
        positions = np.argsort(rng.uniform(size=(num_sequences, length)), axis=1)[:, :2]
    else:
        half = length // 2
        first = rng.integers(0, half, size=num_sequences)
        second = rng.integers(half, length, size=num_sequences)
        positions = np.stack([first, second], axis=1)
    markers = np.zeros((num_sequences, length))
    np.put_along_axis(markers, positions, 1.0, axis=1)
    x = np.stack([values, markers], axis=-1).astype("float32")
    y = np.sum(values * markers, axis=1, keepdims=True).astype("float32")
    return x, y


@dataclasses.dataclass(frozen=True)
class AddingTask:
    """A seeded adding problem with train / validation / test splits.

    Args:
        length: sequence length T >= 2.
        num_train: size of the training pool (train + validation), >= 1.
        num_test: size of the test set, >= 1.
        validation_fraction: fraction of the training pool held out as ``"validation"``,
            in [0, 1); the remaining ``"train"`` split must keep >= 1 sequence.
        placement: ``"uniform"`` or ``"halves"``.
        seed: integer seed; the same seed gives the same data.
    """

    length: int = 10
    num_train: int = 1000
    num_test: int = 100
    validation_fraction: float = 0.0
    placement: str = "uniform"
    seed: int = 0

    def __post_init__(self):
        validation.integer("length", self.length, minimum=2)
        validation.integer("num_train", self.num_train, minimum=1)
        validation.integer("num_test", self.num_test, minimum=1)
        validation.integer("seed", self.seed, minimum=0)
        validation.one_of("placement", self.placement, PLACEMENTS)
        fraction = validation.fraction(
            "validation_fraction", self.validation_fraction, allow_zero=True
        )
        if fraction == 1.0:
            raise ValueError(
                f"`validation_fraction` must be in [0, 1), got {self.validation_fraction!r}: "
                "1 leaves no training sequence."
            )
        if self.num_train - self.num_validation < 1:
            raise ValueError(
                f"validation_fraction={fraction} leaves no training sequence out of "
                f"num_train={self.num_train}; lower it or raise num_train."
            )

    @property
    def num_validation(self):
        return int(round(self.validation_fraction * self.num_train))

    def arrays(self, split="train"):
        """The ``(x, y)`` numpy arrays of ``split`` (``"train"``, ``"validation"``, ``"test"``)."""
        validation.one_of("split", split, SPLITS)
        if split == "test":
            rng = np.random.default_rng([self.seed, 1])
            return adding_arrays(self.num_test, self.length, self.placement, rng)
        rng = np.random.default_rng([self.seed, 0])
        x, y = adding_arrays(self.num_train, self.length, self.placement, rng)
        cut = self.num_train - self.num_validation
        if split == "train":
            return x[:cut], y[:cut]
        if self.num_validation == 0:
            raise ValueError(
                "This task has no validation split: set validation_fraction > 0 "
                "(e.g. AddingTask(validation_fraction=0.2))."
            )
        return x[cut:], y[cut:]

    def dataset(self, split="train", batch_size=50, shuffle=False, shuffle_seed=None):
        """``split`` as a batched ``tf.data.Dataset`` of ``(x, y)``.

        Args:
            split: ``"train"``, ``"validation"`` or ``"test"``.
            batch_size: examples per batch, >= 1 (the last batch may be smaller).
            shuffle: reshuffle the examples every epoch (seeded by ``shuffle_seed``,
                default the task seed, so runs repeat exactly).
            shuffle_seed: optional integer seed of the shuffle order.
        """
        validation.integer("batch_size", batch_size, minimum=1)
        x, y = self.arrays(split)
        data = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            seed = self.seed if shuffle_seed is None else shuffle_seed
            data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        return data.batch(batch_size)


def mobahi_adding_task(seed=0, validation_fraction=0.0):
    """The adding task of Mobahi (2016), sec. 7: T = 10, 1000 train and 100 test sequences."""
    return AddingTask(
        length=10,
        num_train=1000,
        num_test=100,
        validation_fraction=validation_fraction,
        placement="uniform",
        seed=seed,
    )


def long_adding_task(length=200, seed=0, num_train=1000, num_test=100, validation_fraction=0.0):
    """The long-sequence adding problem: ``length >= 200``, one marker in each half."""
    validation.integer("length", length, minimum=200)
    return AddingTask(
        length=length,
        num_train=num_train,
        num_test=num_test,
        validation_fraction=validation_fraction,
        placement="halves",
        seed=seed,
    )


