"""The pathological long-term-memory tasks of Pascanu's thesis, sec. 5.9 (Figure 5.11).

Hochreiter & Schmidhuber (1997) proposed these synthetic problems; Martens & Sutskever (2011)
reused them for Hessian-free RNN training and Pascanu (2014, PhD thesis, sec. 5.9.1 and
5.9.3) for gradient clipping and the Omega regularizer. The generators follow the thesis'
sec. 5.9.3 text. Positions below are 0-based; ``[a, b)`` draws an integer uniformly with
``a <= p < b``; ``T`` is the task ``length``; ``k // 10`` style bounds are integer floors.

* ``temporal_order`` (sec. 5.9.3, "Temporal order"): 6 one-hot symbols ``A, B, c, d, e, f``
  (channels 0..5). Every step holds a distractor from ``{c, d, e, f}`` except step
  ``p1 in [T//10, 2T//10)`` and step ``p2 in [5T//10, 6T//10)``, which hold ``A`` or ``B``.
  Target after the last step: the order, class ``2*s1 + s2`` with ``A=0, B=1`` (AA, AB, BA,
  BB = 0..3). Input length ``T``; minimum ``T = 10``.
* ``temporal_order_3bit`` ("3-bit temporal order problem"): as above with three marked steps
  in ``[T//10, 2T//10)``, ``[3T//10, 4T//10)``, ``[6T//10, 7T//10)``; 8 classes
  ``4*s1 + 2*s2 + s3``. Minimum ``T = 10``.
* ``addition`` ("Addition problem"): the actual length ``T'`` is drawn from
  ``[T, 11T//10]`` (inclusive; one ``T'`` per batch, since a batch is a rectangular array).
  Two channels: channel 0 values i.i.d. U[0, 1] (the thesis does not state the distribution;
  U[0, 1] keeps the target in [0, 1]), channel 1 a marker that is 1 at ``i in [0, T'//10)``
  and ``j in [4T'//10, 5T'//10)`` and 0 elsewhere. Target: ``(x_i + x_j) / 2``. Minimum
  ``T = 10``.
* ``multiplication`` ("Multiplication problem"): as ``addition``, target ``x_i * x_j``.
* ``random_permutation`` ("Random permutation problem"): a dictionary of 100 symbols
  (one-hot, 0-based ids). Symbol 0 is drawn from ``{0, 1}``, symbols ``1..T-2`` from
  ``[2, 100)``, and the last symbol ``T-1`` equals the first. The task is next-symbol
  prediction where only the last symbol is predictable, so the input is the first ``T - 1``
  symbols and the target is the class (of 100) of symbol ``T-1``. Minimum ``T = 3``.
* ``memorization_5bit`` / ``memorization_20bit`` ("Noiseless memorization problem"; the
  20-bit variant of Martens & Sutskever 2011): a pattern of ``K`` symbols from an alphabet of
  ``S`` (``K=5, S=2``: 5 bits; ``K=10, S=5``: 10 log2 5 = 23.2 bits, "over 20 bits"), then
  ``T`` steps of the constant blank symbol, the last of which is replaced by a trigger, then
  ``K`` more blank steps during which the network must output the pattern. Channels: the
  ``S`` pattern symbols, blank (``S``), trigger (``S+1``). Input length ``2K + T``; targets
  are the ``K`` pattern classes read at the last ``K`` steps. Minimum ``T = 1``.

Every task is a classification with integer targets of shape ``(n, target_steps)`` read at
the last ``target_steps`` outputs, except addition/multiplication: regression, targets of
shape ``(n, 1)``. Success criterion (sec. 5.9.1): fewer than 1% of 10,000 fresh sequences
wrong; a classification sequence is wrong when any of its target steps has the wrong argmax,
a regression sequence when its squared error exceeds 0.04.

Example:

>>> task = PathologicalTask("temporal_order", length=50)
>>> x, y = task.sample(4, np.random.default_rng(0))
>>> x.shape, y.shape
((4, 50, 6), (4, 1))
>>> train = task.dataset(batch_size=20, seed=0)   # endless, a fresh batch per step
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_diffusion import validation

REGRESSION_THRESHOLD = 0.04
SUCCESS_ERROR_RATE = 0.01
NUM_PERMUTATION_SYMBOLS = 100
_MEMORIZATION = {"memorization_5bit": (5, 2), "memorization_20bit": (10, 5)}
_MIN_LENGTH = {
    "temporal_order": 10,
    "temporal_order_3bit": 10,
    "addition": 10,
    "multiplication": 10,
    "random_permutation": 3,
    "memorization_5bit": 1,
    "memorization_20bit": 1,
}
TASKS = tuple(_MIN_LENGTH)


def _one_hot(ids, depth):
    return np.eye(depth, dtype=np.float32)[ids]


def _draw(rng, n, length, fraction_ranges):
    """One position per range ``[lo*T//10, hi*T//10)`` for each of ``n`` sequences."""
    return [
        rng.integers(lo * length // 10, hi * length // 10, size=n) for lo, hi in fraction_ranges
    ]


def _temporal_order(rng, n, length, ranges):
    ids = rng.integers(2, 6, size=(n, length))  # distractors c, d, e, f
    label = np.zeros(n, dtype=np.int32)
    rows = np.arange(n)
    for pos in _draw(rng, n, length, ranges):
        bit = rng.integers(0, 2, size=n)
        ids[rows, pos] = bit
        label = 2 * label + bit
    return _one_hot(ids, 6), label.astype(np.int32)[:, None]


def _marked_pair(rng, n, length, combine):
    actual = int(rng.integers(length, 11 * length // 10 + 1))
    values = rng.uniform(0.0, 1.0, size=(n, actual)).astype(np.float32)
    marker = np.zeros((n, actual), dtype=np.float32)
    rows = np.arange(n)
    i = rng.integers(0, actual // 10, size=n)
    j = rng.integers(4 * actual // 10, 5 * actual // 10, size=n)
    marker[rows, i] = 1.0
    marker[rows, j] = 1.0
    target = combine(values[rows, i], values[rows, j]).astype(np.float32)
    return np.stack([values, marker], axis=-1), target[:, None]


def _random_permutation(rng, n, length):
    first = rng.integers(0, 2, size=n)
    middle = rng.integers(2, NUM_PERMUTATION_SYMBOLS, size=(n, length - 2))
    ids = np.concatenate([first[:, None], middle], axis=1)
    return _one_hot(ids, NUM_PERMUTATION_SYMBOLS), first.astype(np.int32)[:, None]


def _memorization(rng, n, length, pattern_length, num_symbols):
    blank, trigger = num_symbols, num_symbols + 1
    pattern = rng.integers(0, num_symbols, size=(n, pattern_length))
    ids = np.full((n, 2 * pattern_length + length), blank)
    ids[:, :pattern_length] = pattern
    ids[:, pattern_length + length - 1] = trigger
    return _one_hot(ids, num_symbols + 2), pattern.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class PathologicalTask:
    """One pathological task at one length (see the module docstring for the definitions).

    Args:
        name: one of ``TASKS``.
        length: ``T``, at least the task's minimum (10 for the temporal order, addition and
            multiplication tasks, 3 for random permutation, 1 for memorization).

    Attributes:
        input_dim: channels per input step.
        num_outputs: classes (classification) or 1 (regression).
        target_steps: how many final outputs carry a target.
        regression: True for addition and multiplication.
    """

    name: str
    length: int

    def __post_init__(self):
        if self.name not in _MIN_LENGTH:
            raise ValueError(f"Unknown task {self.name!r}; choose one of {TASKS}.")
        validation.positive_int("length", self.length)
        if self.length < _MIN_LENGTH[self.name]:
            raise ValueError(
                f"length={self.length} is too short for {self.name!r}: the marked positions "
                f"need length >= {_MIN_LENGTH[self.name]}."
            )

    @property
    def regression(self):
        return self.name in ("addition", "multiplication")

    @property
    def input_dim(self):
        if self.name in _MEMORIZATION:
            return _MEMORIZATION[self.name][1] + 2
        return {"temporal_order": 6, "temporal_order_3bit": 6, "random_permutation": 100}.get(
            self.name, 2
        )

    @property
    def num_outputs(self):
        if self.name in _MEMORIZATION:
            return _MEMORIZATION[self.name][1]
        return {"temporal_order": 4, "temporal_order_3bit": 8, "random_permutation": 100}.get(
            self.name, 1
        )

    @property
    def target_steps(self):
        return _MEMORIZATION[self.name][0] if self.name in _MEMORIZATION else 1

    def sample(self, n, rng):
        """Draws ``n`` sequences as numpy ``(x, y)`` from the ``numpy.random.Generator`` rng.

        ``x``: float32 ``(n, steps, input_dim)``; ``y``: int32 ``(n, target_steps)`` for
        classification, float32 ``(n, 1)`` for regression.
        """
        validation.positive_int("n", n)
        T = self.length
        if self.name == "temporal_order":
            return _temporal_order(rng, n, T, [(1, 2), (5, 6)])
        if self.name == "temporal_order_3bit":
            return _temporal_order(rng, n, T, [(1, 2), (3, 4), (6, 7)])
        if self.name == "addition":
            return _marked_pair(rng, n, T, lambda a, b: (a + b) / 2.0)
        if self.name == "multiplication":
            return _marked_pair(rng, n, T, lambda a, b: a * b)
        if self.name == "random_permutation":
            return _random_permutation(rng, n, T)
        return _memorization(rng, n, T, *_MEMORIZATION[self.name])

    def batches(self, batch_size, seed):
        """Endless numpy generator of fresh batches; the same seed gives the same stream."""
        validation.positive_int("batch_size", batch_size)
        rng = np.random.default_rng(seed)
        while True:
            yield self.sample(batch_size, rng)

    def dataset(self, batch_size, seed):
        """Endless ``tf.data.Dataset`` of fresh ``(x, y)`` batches (same seed, same stream)."""
        validation.positive_int("batch_size", batch_size)
        y_spec = (
            tf.TensorSpec((batch_size, 1), tf.float32)
            if self.regression
            else tf.TensorSpec((batch_size, self.target_steps), tf.int32)
        )
        x_spec = tf.TensorSpec((batch_size, None, self.input_dim), tf.float32)
        return tf.data.Dataset.from_generator(
            lambda: self.batches(batch_size, seed), output_signature=(x_spec, y_spec)
        )


def sequence_errors(task, outputs, targets):
    """Per-sequence wrong/right flags (bool ``(n,)``) for network outputs on a task.

    Args:
        task: a ``PathologicalTask``.
        outputs: array ``(n, target_steps, num_outputs)`` (or ``(n, num_outputs)`` when
            ``target_steps == 1``): logits/probabilities, or the prediction for regression.
        targets: ``y`` as returned by ``task.sample``.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    n = targets.shape[0]
    if task.regression:
        return (outputs.reshape(n) - targets.reshape(n)) ** 2 > REGRESSION_THRESHOLD
    outputs = outputs.reshape(n, task.target_steps, task.num_outputs)
    return np.any(np.argmax(outputs, axis=-1) != targets, axis=-1)


def evaluate_success(model, task, n=10000, seed=0, batch_size=1000):
    """Error rate on ``n`` fresh sequences and the thesis' success flag (sec. 5.9.1).

    Args:
        model: a callable mapping ``x`` to outputs accepted by ``sequence_errors`` (a Keras
            model whose last ``target_steps`` outputs are the predictions, or any function).
        task: a ``PathologicalTask``.
        n: number of fresh test sequences (the thesis uses 10,000).
        seed: seed of the test stream (independent of any training stream seed you choose).
        batch_size: sequences per forward pass.

    Returns:
        ``(error_rate, success)`` with ``success = error_rate < 0.01``.
    """
    validation.positive_int("n", n)
    validation.positive_int("batch_size", batch_size)
    rng = np.random.default_rng(seed)
    wrong = 0
    done = 0
    while done < n:
        x, y = task.sample(min(batch_size, n - done), rng)
        wrong += int(np.sum(sequence_errors(task, np.asarray(model(x)), y)))
        done += x.shape[0]
    rate = wrong / n
    return rate, rate < SUCCESS_ERROR_RATE
