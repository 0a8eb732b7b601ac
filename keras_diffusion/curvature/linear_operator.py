"""Vector-space helpers for operators that act on lists of tensors.

Curvature products (``hvp``, ``ggn_vp``, ...) map a list of tensors shaped like the model
weights to another such list. The spectra (`spectra.py`) and solvers (`solvers.py`) treat
such a list as one vector of the direct sum of the blocks. Everything here is elementwise
except `dot`, the one place where a reduction happens; every algorithm takes a ``dot``
argument so that a distributed caller can substitute an all-reduced inner product.

Example:

```python
xs = [tf.ones([2, 3]), tf.ones([4])]
dot(xs, xs)                 # 10.0
axpy(2.0, xs, xs)           # [3 * ones([2, 3]), 3 * ones([4])]
norm(xs)                    # sqrt(10)
```
"""

import math

import keras
import tensorflow as tf


def as_vector(vectors, name):
    """Returns ``vectors`` as a list of tensors, or raises naming ``name``.

    Args:
        vectors: a list or tuple of tensors (or variables, converted with their value).
        name: the argument name used in the error message.
    """
    if not isinstance(vectors, (list, tuple)) or not vectors:
        raise TypeError(
            f"`{name}` must be a non-empty list of tensors (one per weight block), got "
            f"{type(vectors).__name__}. Wrap a single tensor as `[{name}]`."
        )
    return [to_tensor(v, f"{name}[{i}]") for i, v in enumerate(vectors)]


def to_tensor(value, name):
    """``value`` as a tensor: Keras variables through their ``tf.Variable``, which is read."""
    if isinstance(value, keras.Variable):
        value = value.value
    try:
        return tf.convert_to_tensor(value)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"`{name}` must be a tensor (or array/Keras variable); received {value!r}. "
            "Pass a tf.Tensor, numpy array or variable."
        ) from e


def check_same_structure(xs, ys, x_name, y_name):
    """Raises a ValueError unless ``xs`` and ``ys`` have matching block counts and shapes."""
    if len(xs) != len(ys):
        raise ValueError(
            f"`{x_name}` has {len(xs)} blocks but `{y_name}` has {len(ys)}; both must have "
            "one tensor per weight block, in the same order."
        )
    for i, (x, y) in enumerate(zip(xs, ys)):
        if not x.shape.is_compatible_with(y.shape):
            raise ValueError(
                f"Block {i} of `{x_name}` has shape {x.shape} but block {i} of `{y_name}` "
                f"has shape {y.shape}; pass tensors shaped like the same weights."
            )


def dot(xs, ys):
    """Euclidean inner product of two lists of tensors: sum of elementwise products."""
    return tf.add_n([tf.reduce_sum(x * y) for x, y in zip(xs, ys)])


def norm(xs, dot_fn=dot):
    """Euclidean norm ``sqrt(dot(xs, xs))`` using the given inner product."""
    return tf.sqrt(tf.maximum(dot_fn(xs, xs), 0.0))


def axpy(a, xs, ys):
    """Returns ``a * xs + ys`` blockwise (``a`` a scalar)."""
    return [a * x + y for x, y in zip(xs, ys)]


def scale(a, xs):
    """Returns ``a * xs`` blockwise (``a`` a scalar)."""
    return [a * x for x in xs]


def zeros_like(xs):
    """Returns a list of zero tensors shaped like ``xs``."""
    return [tf.zeros_like(x) for x in xs]


def _specs(like):
    """Shapes and dtypes of ``like`` (tensors, variables or Keras variables); a traced tensor of
    unknown static shape gives its dynamic shape."""
    if not isinstance(like, (list, tuple)) or not like:
        raise TypeError(
            "`like` must be a non-empty list of tensors or variables (e.g. "
            f"`model.trainable_variables`), got {type(like).__name__}."
        )
    specs = []
    for v in like:
        shape = tf.TensorShape(v.shape)
        if not shape.is_fully_defined() and tf.is_tensor(v):
            shape = tf.shape(v)  # a traced vector: its shape is known when the graph runs
        elif not shape.is_fully_defined():
            raise ValueError(
                f"`like` needs fully defined shapes, got {shape}; build the model (or pass "
                "concrete tensors) before drawing random vectors."
            )
        specs.append((shape, tf.as_dtype(v.dtype)))
    return specs


def random_normal_like(like, seed, dtype=None):
    """Standard normal vector shaped like ``like``, from a stateless ``seed`` (2 ints).

    Box-Muller on 30-bit integer Philox draws: TensorFlow's float stateless samplers differ
    between eager and XLA, integer ones do not, so eager, ``tf.function`` and
    ``jit_compile`` runs, and every replica, get the same vector from the same seed.
    """
    out = []
    for i, (shape, dt) in enumerate(_specs(like)):
        block_seed = fold_seed(seed, i)
        u1 = _uniform(shape, fold_seed(block_seed, 0), dtype or dt)
        u2 = _uniform(shape, fold_seed(block_seed, 1), dtype or dt)
        out.append(tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * math.pi * u2))
    return out


def rademacher_like(like, seed, dtype=None):
    """Rademacher (+-1 with probability 1/2) vector shaped like ``like``, stateless seed.

    Same vector in eager, graph and XLA runs and on every replica for the same seed.
    """
    out = []
    for i, (shape, dt) in enumerate(_specs(like)):
        bits = _bits(shape, fold_seed(seed, i), 2)
        out.append(tf.cast(2 * bits - 1, dtype or dt))
    return out


def _bits(shape, seed, maxval):
    return tf.random.stateless_uniform(
        shape, seed, minval=0, maxval=maxval, dtype=tf.int32, alg="philox"
    )


def _uniform(shape, seed, dtype):
    """Uniform on (0, 1), never 0, from 30 random bits."""
    return (tf.cast(_bits(shape, seed, 2**30), dtype) + 0.5) / 2**30


def fold_seed(seed, data):
    """Derives a new stateless seed from ``seed`` (2 ints) and the integer ``data``.

    Uses Philox explicitly so that eager and XLA runs derive the same seed.
    """
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int32), data, alg="philox")
