"""Dense references for the solver and spectra tests: vectors as two blocks, matrices in numpy.

The curvature algorithms act on lists of tensors (one per weight block); these helpers map
such a list to one flat numpy vector and a dense ``N x N`` matrix to a matvec on lists, so
results can be compared with ``numpy.linalg``.
"""

import numpy as np
import tensorflow as tf

SHAPES = ([3, 2], [5])  # two blocks, n = 11
N = 11
LIKE = [tf.zeros(s, tf.float64) for s in SHAPES]


def flatten(xs):
    """Concatenates the blocks of ``xs`` into one 1-D tensor."""
    return tf.concat([tf.reshape(x, [-1]) for x in xs], axis=0)


def unflatten(flat, like):
    """Splits a 1-D tensor into blocks shaped like the (static) shapes of ``like``."""
    shapes = [x.shape for x in like]
    sizes = [s.num_elements() for s in shapes]
    return [tf.reshape(part, s) for part, s in zip(tf.split(flat, sizes), shapes)]


def blocks(flat):
    """A flat length-``N`` array as float64 blocks shaped like ``SHAPES``."""
    return unflatten(tf.constant(flat, tf.float64), LIKE)


def operator(matrix):
    """``v -> matrix @ v`` on lists of blocks; ``matrix`` an array or a float64 tensor."""
    matrix = tf.convert_to_tensor(matrix, tf.float64)
    return lambda v: unflatten(tf.linalg.matvec(matrix, flatten(v)), v)


def inner_product(matrix):
    """``(x, y) -> x^T matrix y`` on lists of blocks: a ``dot`` for the M-inner product."""
    matrix = tf.convert_to_tensor(matrix, tf.float64)
    return lambda x, y: tf.tensordot(flatten(x), tf.linalg.matvec(matrix, flatten(y)), 1)


def flat(vectors):
    """A list of blocks as one flat numpy vector."""
    return flatten(vectors).numpy()


def symmetric(eigenvalues, seed):
    """A random symmetric matrix ``Q diag(eigenvalues) Q^T`` (``Q`` orthogonal)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues), len(eigenvalues))))
    return q @ np.diag(eigenvalues) @ q.T


def dense_hessian(fn, outputs):
    """Hessian of scalar ``fn(outputs)`` w.r.t. the flattened ``outputs``."""
    flat = tf.reshape(outputs, [-1])
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(flat)
        with tf.GradientTape() as inner:
            inner.watch(flat)
            loss = fn(tf.reshape(flat, outputs.shape))
        grad = inner.gradient(loss, flat)
    return outer.jacobian(grad, flat, experimental_use_pfor=False).numpy()


def replica_operator(halves):
    """Inside ``strategy.run`` of a 2-replica strategy: the matvec of this replica's matrix
    ``halves[replica]``; the whole operator is their sum (as for a batch split in two)."""
    stacked = tf.constant(halves)

    def local(v):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return operator(tf.gather(stacked, replica))(v)

    return local
