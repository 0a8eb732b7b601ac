"""The curvature matrix of Saddle-Free Newton in an orthonormal basis of weight space.

Pascanu (2014, thesis), sec. 4.5: Saddle-Free Newton rescales the gradient by the inverse of
``|H|``, the Hessian with the absolute values of its eigenvalues (eq. 4.74). This module
builds an orthonormal basis ``B`` (rows) and the eigenvalues ``mu`` of the chosen matrix in
it, so that the damped step is ``-B^T diag(1 / (mu + lambda)) B g`` for every damping
``lambda`` at the cost of one decomposition:

- ``exact``: the dense Hessian (Jacobian of the gradient over the flattened weights, summed
  over replicas) and its eigendecomposition; ``B`` its eigenvectors (section 4.5.3, "no
  approximations");
- ``krylov``: ``num_steps`` Lanczos vectors (full reorthogonalization) started from the
  gradient, so that ``g`` lies in the span, and the Ritz pairs of the projected matrix
  (Dauphin et al. 2014, sec. 6); with ``subspace="gauss_newton"`` the Krylov space of the
  Gauss-Newton matrix (positive semi-definite, Pascanu sec. 4.3.2) and the sign from the
  Hessian projected on it.

The matrices (``MATRICES``), all but the last positive semi-definite:

- ``"abs"``: ``|H|`` (eq. 4.74), which is ``(H^T H)^(1/2)`` for the symmetric ``H``;
- ``"squared"``: ``H^T H`` (squared Newton, eqs. 4.69-4.70);
- ``"rescaled_squared"``: ``H^T H / |lambda_max|`` (eq. 4.75; ``lambda_max`` the
  largest-magnitude Ritz value, the quantity the thesis gets by the power method);
- ``"rescaled_squared_fisher"``: ``H^T H / |lambda_max| + F`` (eq. 4.75 damped by the Fisher
  matrix, the mix of constraints of sec. 4.3.8), krylov mode only;
- ``"hessian"``: ``H`` itself (indefinite): the damped Newton method the thesis compares
  with (sec. 4.5.3), attracted by saddle points.

In the Krylov subspace the squared matrices are projected exactly: ``B H^T H B^T = W W^T``
with ``W = B H`` (one Hessian-vector product per basis vector), not ``T^2``.
"""

import collections

import tensorflow as tf

from keras_diffusion.curvature import linear_operator, spectra
from keras_diffusion.optimizers import guard

MATRICES = ("abs", "squared", "rescaled_squared", "rescaled_squared_fisher", "hessian")
SUBSPACES = ("hessian", "gauss_newton")

# rows [m, n] orthonormal; eigenvalues [m] of the chosen matrix in that basis (>= 0);
# ritz_values [m] of the Hessian in the subspace (ascending for "exact"/Hessian Lanczos);
# finite: False when a curvature product was non-finite (the basis is then meaningless).
Basis = collections.namedtuple("Basis", ["rows", "eigenvalues", "ritz_values", "finite"])


def flatten(vectors):
    """One flat vector from a list of tensors shaped like the weights."""
    return tf.concat([tf.reshape(v, [-1]) for v in vectors], axis=0)


def unflatten(flat, like):
    """The list of tensors shaped like ``like`` whose concatenation is ``flat``."""
    sizes = [p.shape.num_elements() for p in like]
    return [tf.reshape(part, p.shape) for part, p in zip(tf.split(flat, sizes), like)]


def dense_hessian(closure):
    """The Hessian ``[n, n]`` of the global curvature-batch loss at ``closure.params``.

    Second derivatives of this replica's loss over the flattened weights (``tf.GradientTape.
    jacobian``), then summed over replicas (the global loss is the sum of the replicas'
    shares, ``Closure`` module docstring), symmetrized.
    """
    like = closure.params
    theta = flatten(like)
    with tf.GradientTape() as outer:
        outer.watch(theta)
        with tf.GradientTape() as inner:
            inner.watch(theta)
            loss = closure.curvature.local_loss(unflatten(theta, like))
        gradient = inner.gradient(loss, theta, unconnected_gradients="zero")
    hessian = closure.all_reduce(outer.jacobian(gradient, theta))
    return 0.5 * (hessian + tf.transpose(hessian))


def _finite_or_zero(tensors):
    """``tensors`` with non-finite entries replaced by 0 (``eigh`` fails on NaN input)."""
    return [tf.where(tf.math.is_finite(t), t, tf.zeros_like(t)) for t in tensors]


def _rows_product(matvec, rows, like):
    """``[m, n]``: ``matvec`` applied to every row (straight-line code: may all-reduce)."""
    return tf.stack([flatten(matvec(unflatten(r, like))) for r in tf.unstack(rows)])


def _rotate(rows, matrix):
    """Eigenvalues of the symmetric ``matrix`` (in the basis ``rows``) and the rotated rows."""
    (matrix,) = _finite_or_zero([0.5 * (matrix + tf.transpose(matrix))])
    values, vectors = tf.linalg.eigh(matrix)
    return values, tf.transpose(vectors) @ rows


def hessian_basis(closure, gradient, mode, num_steps, subspace="hessian"):
    """``(rows, ritz_values, apply_hessian, finite)``: a basis diagonalizing the projected
    Hessian.

    ``apply_hessian(rows)`` multiplies every row by ``H``. Non-finite products are replaced
    by 0 (so the decompositions run) and reported by ``finite``: the dense Hessian's
    entries, or the product of ``H`` (of the subspace's matrix) with the gradient. See the
    module docstring.
    """
    like = closure.params
    if mode == "exact":
        hessian = dense_hessian(closure)
        finite = tf.reduce_all(tf.math.is_finite(hessian))
        (hessian,) = _finite_or_zero([hessian])
        values, vectors = tf.linalg.eigh(hessian)
        return tf.transpose(vectors), values, lambda rows: rows @ hessian, finite

    def apply_hessian(rows):
        return _finite_or_zero([_rows_product(closure.hvp, rows, like)])[0]

    product = closure.hvp if subspace == "hessian" else closure.ggn_vp
    start = _finite_or_zero(gradient)
    usable = linear_operator.norm(start) > 0
    start = [tf.where(usable, s, tf.ones_like(s)) for s in start]
    finite = guard.all_finite(product(start))
    result = spectra.lanczos(
        lambda v: _finite_or_zero(product(v)), start, num_steps, dot=closure.dot,
        unroll=closure.distributed,
    )
    rows = tf.concat(
        [tf.reshape(v, [num_steps, -1]) for v in result.ritz_vectors], axis=1
    )
    if subspace == "hessian":
        return rows, result.ritz_values, apply_hessian, finite
    values, rows = _rotate(rows, rows @ tf.transpose(apply_hessian(rows)))
    return rows, values, apply_hessian, finite


def curvature_basis(closure, gradient, mode, matrix, num_steps, subspace="hessian",
                    fisher_distribution="categorical"):
    """The `Basis` of ``matrix`` (one of ``MATRICES``) at ``closure.params``.

    Args:
        closure: a ``keras_diffusion.training.Closure``.
        gradient: the gradient at ``closure.params`` (list of tensors; Lanczos starts there).
        mode: ``"exact"`` or ``"krylov"``.
        matrix: one of ``MATRICES``.
        num_steps: the number of Lanczos vectors (``"krylov"``).
        subspace: one of ``SUBSPACES`` (``"krylov"``).
        fisher_distribution: the predictive distribution of ``Closure.fisher_vp``.
    """
    rows, ritz, apply_hessian, finite = hessian_basis(
        closure, gradient, mode, num_steps, subspace
    )
    if matrix == "abs":
        return Basis(rows, tf.abs(ritz), ritz, finite)
    if matrix == "hessian":
        return Basis(rows, ritz, ritz, finite)
    hr = apply_hessian(rows)
    curvature = hr @ tf.transpose(hr)
    if matrix != "squared":
        curvature = curvature / tf.reduce_max(tf.abs(ritz))
    if matrix == "rescaled_squared_fisher":
        fisher = _rows_product(
            lambda v: closure.fisher_vp(v, distribution=fisher_distribution),
            rows,
            closure.params,
        )
        curvature = curvature + rows @ tf.transpose(fisher)
    finite &= tf.reduce_all(tf.math.is_finite(curvature))
    values, rows = _rotate(rows, curvature)
    return Basis(rows, tf.maximum(values, 0.0), ritz, finite)
