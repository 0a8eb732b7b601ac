"""Spectra of curvature operators: power iteration, Lanczos, SLQ densities, Hutchinson traces.

Operators are callables ``matvec(vectors) -> vectors`` on lists of tensors shaped like the
model weights (e.g. ``lambda v: hvp(loss_fn, params, v)``), assumed symmetric. Every
reduction goes through ``dot`` (default `linear_operator.dot`) so that a distributed caller
can pass an all-reduced inner product; random probes come from stateless seeds, so every
replica draws the same probes. Everything runs in-graph and under
``tf.function(jit_compile=True)``; ``unroll=True`` runs the loops as straight-line code
(`loops.run_loop`, identical results) for matvecs or dots that all-reduce across replicas
inside a replica context, where TensorFlow forbids ``tf.while_loop`` and ``tf.cond``.

References:
    Golub & Van Loan (2013), "Matrix Computations", 4th ed., sec. 7.3 (power iteration),
    sec. 10.1 (Lanczos; full reorthogonalization sec. 10.3.1).
    Ubaru, Chen & Saad (2017), "Fast estimation of tr(f(A)) via stochastic Lanczos
    quadrature", SIAM J. Matrix Anal. Appl. 38(4), sec. 3 (nodes theta_k and weights
    tau_k^2 from the eigendecomposition of the Lanczos tridiagonal matrix).
    Ghorbani, Krishnan & Xiao (2019), "An investigation into neural net optimization via
    Hessian eigenvalue density", ICML, sec. 2-3 (Gaussian-smoothed density, eq. 3).
    Hutchinson (1989), "A stochastic estimator of the trace of the influence matrix for
    Laplacian smoothing splines" (Rademacher probes: E[v^T A v] = tr A).
"""

import collections
import math

import tensorflow as tf

from keras_diffusion import validation
from keras_diffusion.curvature import linear_operator as lo
from keras_diffusion.curvature import loops

PowerIterationResult = collections.namedtuple(
    "PowerIterationResult", ["eigenvalue", "vector", "num_iterations", "converged"]
)
LanczosResult = collections.namedtuple(
    "LanczosResult", ["ritz_values", "ritz_vectors", "alphas", "betas"]
)
SLQResult = collections.namedtuple("SLQResult", ["nodes", "weights"])
HutchinsonResult = collections.namedtuple(
    "HutchinsonResult", ["trace", "standard_error", "samples"]
)

# Loop states (`loops.run_loop`).
_PowerState = collections.namedtuple(
    "_PowerState", ["i", "v", "v_prev", "eigenvalue", "converged"]
)
# Lanczos: step ``i``, current and previous basis vectors, the last off-diagonal ``beta``,
# the basis so far (rows ``>= i`` zero) and the diagonal / off-diagonal of ``T``.
_LanczosState = collections.namedtuple(
    "_LanczosState", ["i", "v", "v_prev", "beta", "basis", "alphas", "betas"]
)
# Probe loops (SLQ, Hutchinson): probe index ``p`` and one row (or entry) per probe.
_ProbeState = collections.namedtuple("_ProbeState", ["p", "rows"])


def power_iteration(matvec, v0, *, max_iterations=100, tol=1e-6, dot=lo.dot, unroll=False):
    """Largest-magnitude eigenvalue (with sign) and eigenvector by power iteration.

    Iterates ``v <- A v / ||A v||`` and returns the Rayleigh quotient ``v^T A v`` of the last
    normalized iterate ``v`` (Golub & Van Loan, sec. 7.3.1). Stops once the quotient changes
    by at most ``tol * |quotient|`` between iterations, or after ``max_iterations`` matvecs.
    Convergence is linear with rate ``|lambda_2 / lambda_1|``; it stalls when the two
    largest-magnitude eigenvalues are ``+-lambda`` (use `lanczos` then).

    Args:
        matvec: symmetric operator, a callable on lists of tensors.
        v0: starting vector, list of tensors (e.g. `linear_operator.random_normal_like`).
        max_iterations: positive int.
        tol: relative tolerance on the change of the eigenvalue estimate (>= 0).
        dot: inner product of two lists of tensors.
        unroll: unroll the ``max_iterations`` iterations as straight-line code (identical
            result), needed when ``matvec``/``dot`` all-reduce across replicas inside a
            replica context (TensorFlow forbids that inside ``tf.while_loop``).

    Returns:
        `PowerIterationResult` ``(eigenvalue, vector, num_iterations, converged)``;
        ``vector`` has unit norm.

    Example:

    ```python
    v0 = random_normal_like(model.trainable_variables, seed=(0, 1))
    top = power_iteration(lambda v: hvp(loss_fn, params, v), v0, max_iterations=50)
    ```
    """
    validation.positive_int("max_iterations", max_iterations, "Pass a budget such as 100.")
    validation.nonnegative("tol", tol, "Pass a relative tolerance such as 1e-6 (0: no early stop).")
    v = lo.as_vector(v0, "v0")
    v = lo.scale(1.0 / lo.norm(v, dot), v)
    zero = tf.zeros([], v[0].dtype)

    def step(s):
        w = list(matvec(s.v))
        eigenvalue = dot(s.v, w)
        converged = tf.abs(eigenvalue - s.eigenvalue) <= tol * tf.abs(eigenvalue)
        w_norm = lo.norm(w, dot)
        # A v = 0: v is an eigenvector (eigenvalue 0); keep it rather than divide by 0.
        v_next = [tf.where(w_norm > 0, x / w_norm, y) for x, y in zip(w, s.v)]
        return _PowerState(s.i + 1, v_next, s.v, eigenvalue, converged)

    final = loops.run_loop(
        lambda s: (s.i < max_iterations) & ~s.converged,
        step,
        _PowerState(tf.constant(0), v, v, zero + float("inf"), tf.constant(False)),
        max_iterations,
        unroll,
    )
    return PowerIterationResult(final.eigenvalue, final.v_prev, final.i, final.converged)


def smallest_eigenvalue(matvec, v0, *, max_iterations=100, tol=1e-6, dot=lo.dot,
                        unroll=False):
    """Most negative (smallest algebraic) eigenvalue by shifted power iteration.

    First estimates the largest-magnitude eigenvalue ``lambda_1`` with `power_iteration`,
    then runs `power_iteration` on ``A - |lambda_1| I``, whose spectrum lies in
    ``[lambda_min - |lambda_1|, 0]`` so its dominant eigenvalue is
    ``lambda_min - |lambda_1|``; adds ``|lambda_1|`` back. For a positive semidefinite ``A``
    this is the smallest eigenvalue. Both runs share ``max_iterations`` and ``tol``; the
    second converges with rate ``(|lambda_1| - lambda_2') / (|lambda_1| - lambda_min)``
    (``lambda_2'`` the second smallest), slowly when the bottom of the spectrum is
    crowded - prefer `lanczos` there.

    Args:
        matvec, v0, max_iterations, tol, dot, unroll: as in `power_iteration`.

    Returns:
        `PowerIterationResult` for ``A``; ``num_iterations`` counts both runs.

    Example:

    ```python
    bottom = smallest_eigenvalue(lambda v: hvp(loss_fn, params, v), v0)
    ```
    """
    top = power_iteration(
        matvec, v0, max_iterations=max_iterations, tol=tol, dot=dot, unroll=unroll
    )
    shift = tf.abs(top.eigenvalue)
    shifted = power_iteration(
        lambda v: lo.axpy(-shift, v, list(matvec(v))),
        v0,
        max_iterations=max_iterations,
        tol=tol,
        dot=dot,
        unroll=unroll,
    )
    return PowerIterationResult(
        shifted.eigenvalue + shift,
        shifted.vector,
        top.num_iterations + shifted.num_iterations,
        shifted.converged,
    )


def lanczos(matvec, v0, num_steps, *, dot=lo.dot, seed=(0, 0), unroll=False):
    """``num_steps`` Lanczos steps with full reorthogonalization: Ritz values and vectors.

    Builds an orthonormal Krylov basis ``V`` (``num_steps`` vectors, each reorthogonalized
    twice against all previous ones by classical Gram-Schmidt) and the tridiagonal
    ``T = V^T A V`` (Golub & Van Loan, alg. 10.1.1 and sec. 10.3.1); the Ritz pairs are the
    eigenpairs of ``T`` mapped back by ``V``. Extreme Ritz values converge first; with
    ``num_steps`` equal to the dimension they are all eigenvalues. When the Krylov space
    becomes invariant (``beta_j`` below ``100 eps ||A v_j||``) the recurrence restarts from a
    random vector (from ``seed``) orthogonal to the basis and ``beta_j`` is set to 0, so the
    basis still has ``num_steps`` vectors.

    Args:
        matvec: symmetric operator, a callable on lists of tensors.
        v0: starting vector, list of tensors; normalized internally.
        num_steps: positive int, at most the total number of entries of ``v0``.
        dot: inner product of two lists of tensors.
        seed: stateless seed (2 ints) for restart vectors.
        unroll: unroll the loops as straight-line code (identical result; the graph grows
            like ``num_steps^2``), needed when ``matvec``/``dot`` all-reduce across replicas
            inside a replica context (TensorFlow forbids that inside ``tf.while_loop``).

    Returns:
        `LanczosResult` ``(ritz_values, ritz_vectors, alphas, betas)``: ``ritz_values``
        ``[num_steps]`` ascending; ``ritz_vectors`` per block ``[num_steps, *block_shape]``
        (row ``j`` pairs with ``ritz_values[j]``, sign chosen so that its inner product
        with ``v0`` is >= 0); ``alphas`` ``[num_steps]`` and ``betas``
        ``[num_steps - 1]`` the diagonal and off-diagonal of ``T``.

    Example:

    ```python
    result = lanczos(lambda v: hvp(loss_fn, params, v), v0, num_steps=20)
    lambda_min, lambda_max = result.ritz_values[0], result.ritz_values[-1]
    ```
    """
    v0 = lo.as_vector(v0, "v0")
    alphas, betas, basis = _lanczos_tridiagonal(matvec, v0, num_steps, dot, seed, unroll)
    values, vectors = _tridiagonal_eigh(alphas, betas)
    ritz_vectors = [tf.tensordot(tf.transpose(vectors), q, axes=1) for q in basis]
    return LanczosResult(values, ritz_vectors, alphas, betas)


def stochastic_lanczos_quadrature(
    matvec, like, num_probes, num_steps, *, seed=(0, 0), dot=lo.dot, unroll=False
):
    """Spectral density of ``A`` as Gauss quadrature nodes and weights (SLQ).

    For each Rademacher probe ``v`` (``||v||^2 = n``), runs ``num_steps`` Lanczos steps from
    ``v``; with ``T = S diag(theta) S^T`` the nodes are ``theta`` and the weights
    ``S[0, :]^2 / num_probes`` (Ubaru, Chen & Saad 2017, sec. 3; Ghorbani et al. 2019,
    sec. 2). Then ``sum(weights * f(nodes))`` estimates ``tr f(A) / n``; per probe it equals
    ``v^T f(A) v / n`` exactly for polynomials ``f`` of degree ``< 2 num_steps``. The weights
    sum to 1. Smooth with `spectral_density`.

    Args:
        matvec: symmetric operator, a callable on lists of tensors.
        like: list of tensors or variables giving the blocks' shapes and dtypes.
        num_probes: positive int.
        num_steps: positive int, Lanczos steps per probe (at most the dimension).
        seed: stateless seed (2 ints): the same seed gives the same probes everywhere.
        dot: inner product of two lists of tensors.
        unroll: unroll all loops as straight-line code (identical result), as in `lanczos`.

    Returns:
        `SLQResult` ``(nodes, weights)``, both ``[num_probes, num_steps]``.

    Example:

    ```python
    slq = stochastic_lanczos_quadrature(hvp_fn, params, num_probes=4, num_steps=30)
    grid = tf.linspace(-1.0, 5.0, 200)
    density = spectral_density(slq.nodes, slq.weights, grid, sigma=0.05)
    ```
    """
    validation.positive_int("num_probes", num_probes, "Pass e.g. 4 probes.")
    _check_num_steps(num_steps)
    specs = lo.as_vector(like, "like")
    dtype = specs[0].dtype

    def probe(state):
        p = state.p
        v = lo.rademacher_like(specs, lo.fold_seed(seed, 2 * p))
        restart_seed = lo.fold_seed(seed, 2 * p + 1)
        alphas, betas, _ = _lanczos_tridiagonal(
            matvec, v, num_steps, dot, restart_seed, unroll
        )
        theta, s = _tridiagonal_eigh(alphas, betas)
        nodes, weights = state.rows
        tau = s[0] ** 2 / num_probes
        return _ProbeState(p + 1, SLQResult(_set_row(nodes, p, theta), _set_row(weights, p, tau)))

    empty = tf.zeros([num_probes, num_steps], dtype)
    return _run_probes(probe, SLQResult(empty, empty), num_probes, unroll)


def spectral_density(nodes, weights, grid, sigma):
    """Gaussian-smoothed spectral density ``sum_k w_k N(t; theta_k, sigma^2)`` on ``grid``.

    Ghorbani et al. (2019), eq. 3. Integrates to ``sum(weights)`` (1 for
    `stochastic_lanczos_quadrature`) when ``grid`` covers the nodes with margin
    ``>> sigma``.

    Args:
        nodes, weights: tensors of equal shape (any rank), e.g. from SLQ.
        grid: 1-D tensor of evaluation points.
        sigma: positive smoothing width.

    Returns:
        Density values, shape of ``grid``.

    Example:

    ```python
    slq = stochastic_lanczos_quadrature(hvp_fn, params, num_probes=4, num_steps=30)
    density = spectral_density(slq.nodes, slq.weights, tf.linspace(-1.0, 5.0, 200), 0.05)
    ```
    """
    validation.if_known(
        validation.positive, "sigma", sigma,
        "Pass a smoothing width of about the spacing of the eigenvalues of interest (e.g. 0.05).",
    )
    nodes = tf.reshape(nodes, [-1])
    weights = tf.cast(tf.reshape(weights, [-1]), nodes.dtype)
    grid = tf.cast(tf.convert_to_tensor(grid, dtype_hint=nodes.dtype), nodes.dtype)
    sigma = tf.cast(tf.convert_to_tensor(sigma, dtype_hint=nodes.dtype), nodes.dtype)
    z = (grid[:, None] - nodes[None, :]) / sigma
    kernel = tf.exp(-0.5 * z**2) / (sigma * math.sqrt(2.0 * math.pi))
    return tf.linalg.matvec(kernel, weights)


def hutchinson_trace(matvec, like, num_probes, *, seed=(0, 0), dot=lo.dot, unroll=False):
    """Hutchinson's trace estimate ``mean_i v_i^T A v_i`` with Rademacher probes ``v_i``.

    Unbiased: ``E[v v^T] = I``; the variance per probe is ``2 sum_{i != j} A_ij^2``.

    Args:
        matvec: operator (need not be symmetric), a callable on lists of tensors.
        like: list of tensors or variables giving the blocks' shapes and dtypes.
        num_probes: int >= 2 (the standard error needs two samples).
        seed: stateless seed (2 ints): the same seed gives the same probes everywhere.
        dot: inner product of two lists of tensors.
        unroll: unroll the probe loop as straight-line code (identical result), needed when
            ``matvec``/``dot`` all-reduce across replicas inside a replica context.

    Returns:
        `HutchinsonResult` ``(trace, standard_error, samples)``; ``standard_error`` is the
        sample standard deviation over ``sqrt(num_probes)``, ``samples`` ``[num_probes]``.

    Example:

    ```python
    est = hutchinson_trace(lambda v: hvp(loss_fn, params, v), params, num_probes=10)
    est.trace, est.standard_error
    ```
    """
    validation.integer("num_probes", num_probes, minimum=2,
                       hint="Two probes at least estimate a standard error; pass e.g. 10.")
    specs = lo.as_vector(like, "like")

    def probe(state):
        v = lo.rademacher_like(specs, lo.fold_seed(seed, state.p))
        return _ProbeState(state.p + 1, _set_row(state.rows, state.p, dot(v, list(matvec(v)))))

    samples = _run_probes(probe, tf.zeros([num_probes], specs[0].dtype), num_probes, unroll)
    mean = tf.reduce_mean(samples)
    variance = tf.reduce_sum((samples - mean) ** 2) / (num_probes - 1)
    return HutchinsonResult(mean, tf.sqrt(variance / num_probes), samples)


def _check_num_steps(num_steps):
    validation.positive_int("num_steps", num_steps, "Pass e.g. 20 Lanczos steps.")


def _lanczos_tridiagonal(matvec, v0, num_steps, dot, seed, unroll):
    """Lanczos with full reorthogonalization: (alphas [k], betas [k-1], basis [k, ...])."""
    _check_num_steps(num_steps)
    sizes = [v.shape.num_elements() for v in v0]
    dimension = None if None in sizes else sum(sizes)  # checked only where shapes are static
    if dimension is not None and num_steps > dimension:
        raise ValueError(
            f"`num_steps` ({num_steps}) exceeds the dimension of the space ({dimension}); "
            f"use at most {dimension}."
        )
    dtype = v0[0].dtype
    eps = tf.constant(100 * tf.experimental.numpy.finfo(dtype.as_numpy_dtype).eps, dtype)
    v = lo.scale(1.0 / lo.norm(v0, dot), v0)
    basis = [tf.zeros(tf.concat([[num_steps], tf.shape(x)], 0), dtype) for x in v0]
    zero = tf.zeros([], dtype)

    def step(s):
        i, v = s.i, s.v
        basis = [_set_row(q, i, x) for q, x in zip(s.basis, v)]
        av = list(matvec(v))
        alpha = dot(v, av)
        w = lo.axpy(-s.beta, s.v_prev, lo.axpy(-alpha, v, av))
        w = _orthogonalize(w, basis, dot)
        beta = lo.norm(w, dot)
        breakdown = beta <= eps * lo.norm(av, dot)
        # Both candidates are computed and one selected (no tf.cond), so every `dot`, possibly
        # a cross-replica reduction, runs unconditionally.
        r = lo.random_normal_like(v, lo.fold_seed(seed, i), dtype)
        r = _orthogonalize(r, basis, dot)
        restart = (lo.scale(1.0 / lo.norm(r, dot), r), zero)
        proceed = (lo.scale(tf.math.divide_no_nan(tf.ones_like(beta), beta), w), beta)
        v_next, beta = loops.select(breakdown & (i + 1 < num_steps), restart, proceed)
        return _LanczosState(i + 1, v_next, v, beta, basis, _set_row(s.alphas, i, alpha),
                             _set_row(s.betas, i, beta))

    final = loops.run_loop(
        lambda s: s.i < num_steps,
        step,
        _LanczosState(tf.constant(0), v, lo.zeros_like(v), zero, basis,
                      tf.zeros([num_steps], dtype), tf.zeros([num_steps], dtype)),
        num_steps,
        unroll,
    )
    return final.alphas, final.betas[:-1], final.basis


def _orthogonalize(w, basis, dot):
    """Removes from ``w`` its components along the basis rows, twice (CGS2).

    Rows not written yet are zero and contribute exactly nothing; taking all rows (no loop
    bounded by the step) keeps the code straight-line, so it may all-reduce in `dot`.
    """
    for _ in range(2):
        coeffs = tf.stack([dot([q[j] for q in basis], w) for j in range(basis[0].shape[0])])
        w = [x - tf.tensordot(coeffs, q, axes=1) for x, q in zip(w, basis)]
    return w


def _tridiagonal_eigh(alphas, betas):
    """Eigenpairs of the tridiagonal ``T``; eigenvectors with nonnegative first entries.

    XLA's ``eigh`` (Jacobi) stops with eigenvectors accurate to about 1e-6 even in float64,
    so one first-order perturbation step refines them: with ``B = S^T T S = D + E``,
    ``S <- S (I + C)``, ``C_ij = E_ij / (d_j - d_i)`` (0 inside near-degenerate clusters,
    where any basis is exact enough), then one Newton-Schulz step re-orthonormalizes. In
    eager mode ``E`` is at rounding level and the step changes nothing measurable.
    """
    t = tf.linalg.diag(alphas) + tf.linalg.diag(betas, k=1) + tf.linalg.diag(betas, k=-1)
    values, vectors = tf.linalg.eigh(t)
    b = tf.matmul(vectors, tf.matmul(t, vectors), transpose_a=True)
    d = tf.linalg.diag_part(b)
    e = b - tf.linalg.diag(d)
    gap = d[None, :] - d[:, None]
    c = tf.where(tf.abs(e) < 0.5 * tf.abs(gap), tf.math.divide_no_nan(e, gap), tf.zeros_like(e))
    vectors = vectors + tf.matmul(vectors, c)
    gram = tf.matmul(vectors, vectors, transpose_a=True)
    vectors = 1.5 * vectors - 0.5 * tf.matmul(vectors, gram)
    # Fix eigh's sign freedom: each Ritz vector has a nonnegative component along v0.
    signs = tf.where(vectors[0] < 0, -tf.ones_like(values), tf.ones_like(values))
    return values, vectors * signs


def _run_probes(probe, rows, num_probes, unroll):
    """Runs ``probe`` for probes ``0 .. num_probes - 1``, each filling its row of ``rows``."""
    state = _ProbeState(tf.constant(0), rows)
    return loops.run_loop(lambda s: s.p < num_probes, probe, state, num_probes, unroll).rows


def _set_row(stack, i, row):
    return tf.tensor_scatter_nd_update(stack, [[i]], [row])
