"""Krylov solvers for curvature systems: Martens' truncated CG and Paige-Saunders MINRES.

Both solve ``(A + damping I) x = b`` where ``A`` is a symmetric operator given as a callable
``matvec(vectors) -> vectors`` on lists of tensors (e.g. ``lambda v: ggn_vp(..., v)``). All
reductions go through ``dot`` (default: `linear_operator.dot`), so a distributed caller can
pass an all-reduced inner product. Both run in-graph (``tf.while_loop`` with fixed-shape loop
variables) and compile with ``tf.function(jit_compile=True)``. With ``unroll=True`` the same
iteration runs as straight-line code instead (`loops.run_loop`), for matvecs or dots that
all-reduce across replicas inside a replica context, where ``tf.while_loop`` is forbidden.

References:
    Martens (2010), "Deep learning via Hessian-free optimization", ICML, sec. 4.3 (damping),
    4.4 (CG stopping rule), 4.5 (warm start), 4.6 (CG iterate backtracking).
    Pascanu (2014), PhD thesis, sec. 4.1.1 (truncated Newton), 4.1.2 (conjugate gradient),
    4.3.2 (Hessian-free optimization).
    Paige & Saunders (1975), "Solution of sparse indefinite systems of linear equations",
    SIAM J. Numer. Anal. 12(4) (MINRES).
"""

import collections
import math

import tensorflow as tf

from keras_diffusion import validation
from keras_diffusion.curvature import cross_replica, loops
from keras_diffusion.curvature import linear_operator as lo

# Stop reasons (the ``stop_reason`` field of the results; names in `STOP_REASONS`).
MAX_ITERATIONS = 0
RELATIVE_PROGRESS = 1
NEGATIVE_CURVATURE = 2
RESIDUAL_TOLERANCE = 3
STOP_REASONS = ("max_iterations", "relative_progress", "negative_curvature", "residual_tolerance")
_RUNNING = -1

CGResult = collections.namedtuple(
    "CGResult",
    [
        "x",  # final iterate, list of tensors shaped like b
        "iterates",  # per block: [max_saved, *block_shape]; rows >= num_saved are zero
        "iterations",  # int32 [max_saved]: CG iteration of each saved iterate, -1 padding
        "phi",  # [max_saved]: phi(x) = 0.5 x^T A x - b^T x of each saved iterate
        "num_saved",  # int32 scalar: number of valid saved iterates (last one is `x`)
        "num_iterations",  # int32 scalar: CG steps taken
        "residual_norm",  # ||b - A x|| (recursively updated residual)
        "stop_reason",  # int32 scalar, index into STOP_REASONS
    ],
)

MinresResult = collections.namedtuple(
    "MinresResult", ["x", "num_iterations", "residual_norm", "stop_reason"]
)

# Loop states (`loops.run_loop`). CG: iteration ``i``, iterate ``x``, residual ``r``,
# preconditioned residual ``z``, direction ``p``, ``rz = r^T z``, ``phi`` of every iteration so
# far (for the relative-progress test), the stored iterates with their iterations and phis
# and how many are stored, and the stop reason (`_RUNNING` while running).
_CGState = collections.namedtuple(
    "_CGState",
    ["i", "x", "r", "z", "p", "rz", "history", "stored", "iterations", "phis", "num_saved",
     "reason"],
)
# MINRES, in the names of scipy's ``minres`` (Paige & Saunders 1975): Lanczos vectors
# ``r1, r2, y``, search directions ``w, w2``, Lanczos ``beta`` and ``oldb``, the QR
# factorization's ``dbar, epsln``, the residual estimate ``phibar``, the Givens rotation
# ``cs, sn``.
_MinresState = collections.namedtuple(
    "_MinresState",
    ["itn", "x", "r1", "r2", "y", "w", "w2", "beta", "oldb", "dbar", "epsln", "phibar", "cs",
     "sn", "reason"],
)


def _running(state):
    return state.reason == _RUNNING


def cg_save_schedule(max_iterations, gamma=1.3):
    """Iterations at which `conjugate_gradient` saves iterates: sorted unique ``ceil(gamma^j)``.

    Martens (2010), sec. 4.6: CG iterates are stored at iterations ``ceil(gamma^j)``,
    ``j = 0, 1, ...`` (``gamma = 1.3``), for backtracking. Only iterations
    ``<= max_iterations`` are kept.

    Example:
        >>> cg_save_schedule(20)
        (1, 2, 3, 4, 5, 7, 9, 11, 14, 18)
    """
    _check_max_iterations(max_iterations)
    if not validation.real("gamma", gamma, _GAMMA_HINT) > 1.0:
        raise ValueError(
            f"`gamma` must be > 1 for a growing save schedule, got {gamma!r}. {_GAMMA_HINT}"
        )
    schedule, j = set(), 0
    while True:
        it = math.ceil(gamma**j)
        if it > max_iterations:
            return tuple(sorted(schedule))
        schedule.add(it)
        j += 1


def diagonal_preconditioner(diagonal):
    """Returns ``v -> v / diagonal`` blockwise: a Jacobi preconditioner ``M^-1``.

    Martens (2010), sec. 4.7 uses ``diag(sum_i grad_i^2 + lambda)^0.75`` as ``M``.

    Args:
        diagonal: list of positive tensors shaped like the solution.
    """
    diagonal = lo.as_vector(diagonal, "diagonal")
    return lambda v: [x / d for x, d in zip(v, diagonal)]


@cross_replica.solve_across_replicas
def conjugate_gradient(
    matvec,
    b,
    x0=None,
    *,
    preconditioner=None,
    damping=0.0,
    max_iterations=250,
    tol=1e-6,
    epsilon=5e-4,
    min_progress_window=10,
    progress_window_fraction=0.1,
    gamma=1.3,
    save_iterates=True,
    dot=lo.dot,
    unroll=False,
):
    """Preconditioned conjugate gradient for ``(A + damping I) x = b``, Martens style.

    Minimizes ``phi(x) = 0.5 x^T (A + damping I) x - b^T x`` starting from ``x0``
    (Martens 2010, sec. 4.5 warm-starts from the previous step's solution). Iteration ``i``
    (counting CG steps) stops when any of:

    * residual: ``||b - A x_i|| <= tol * ||b||`` (``tol=0`` disables it);
    * relative progress (Martens 2010, sec. 4.4): ``i > k``, ``phi(x_i) < 0`` and
      ``(phi(x_i) - phi(x_{i-k})) / phi(x_i) < k * epsilon`` with
      ``k = max(min_progress_window, ceil(progress_window_fraction * i))``
      (``max(10, 0.1 i)``, ``epsilon = 5e-4``; ``epsilon=0`` disables it);
    * negative curvature: ``p^T A p <= 0`` for the next search direction ``p``; the step is
      not taken and ``x`` is the last iterate;
    * ``max_iterations`` steps.

    With ``save_iterates`` the iterates at iterations `cg_save_schedule` (``ceil(gamma^j)``,
    Martens 2010 sec. 4.6) and the final iterate are stored, in order, for backtracking.

    Args:
        matvec: callable mapping a list of tensors to ``A`` times it (symmetric ``A``).
        b: list of tensors, the right-hand side (e.g. the negative gradient).
        x0: optional initial guess shaped like ``b``; default zeros.
        preconditioner: optional callable applying ``M^-1`` (symmetric positive definite)
            to a list of tensors, e.g. `diagonal_preconditioner`.
        damping: scalar Tikhonov damping added to ``A`` (Martens 2010, sec. 4.3).
        max_iterations: positive int, maximum number of CG steps.
        tol: relative residual tolerance (>= 0).
        epsilon: Martens' relative-progress tolerance (>= 0).
        min_progress_window, progress_window_fraction: the window ``k`` above.
        gamma: ratio of the geometric save schedule (> 1).
        save_iterates: whether to store the scheduled iterates (memory: about
            ``log(max_iterations) / log(gamma)`` copies of ``b``).
        dot: inner product of two lists of tensors (all-reduce it for distributed use).
        unroll: run the iterations as ``max_iterations`` copies of straight-line graph code
            (`loops.run_loop`) instead of a ``tf.while_loop``; iterations after the stop
            leave the state unchanged, so the result is identical. Needed when ``matvec``
            or ``dot`` all-reduces across replicas inside a replica context (e.g.
            ``closure.ggn_vp`` in a ``MirroredStrategy`` train step, where
            ``closure.distributed``): TensorFlow forbids that ``merge_call`` inside
            ``tf.while_loop``. The graph grows linearly with ``max_iterations``, and every
            unrolled iteration costs one matvec even after the stop. Not needed for a
            ``matvec`` that is a `cross_replica.ReplicaSumOperator` (e.g.
            ``closure.gauss_newton_operator()``): the solve then runs once across replicas
            in a ``tf.while_loop`` and stops early (``unroll`` is ignored).

    Returns:
        A `CGResult`. ``iterates``/``iterations``/``phi`` have a static leading size
        ``len(cg_save_schedule(max_iterations, gamma)) + 1`` (1 without ``save_iterates``,
        holding only the final iterate); only the first ``num_saved`` rows are valid.

    Example:

    ```python
    result = conjugate_gradient(lambda v: ggn_vp(loss_fn, params, v), neg_grad,
                                x0=previous_step, damping=lam, max_iterations=100)
    step, candidates = result.x, result.iterates
    # Inside a MirroredStrategy train step: the operator drives the solve across replicas
    # (one merge_call, a tf.while_loop that stops early).
    step = conjugate_gradient(closure.gauss_newton_operator(), neg_grad, damping=lam,
                              dot=closure.dot).x
    # Any other all-reducing matvec (closure.hvp) needs the unrolled loop.
    step = conjugate_gradient(closure.hvp, neg_grad, damping=lam, dot=closure.dot,
                              unroll=closure.distributed).x
    ```
    """
    _check_max_iterations(max_iterations)
    _check_tol(tol)
    validation.positive_int("min_progress_window", min_progress_window, "Martens (2010) uses 10.")
    validation.fraction("progress_window_fraction", progress_window_fraction,
                        "Martens (2010) uses 0.1.", allow_zero=True)
    validation.nonnegative("epsilon", epsilon, "Martens (2010) uses 5e-4; 0 disables the test.")
    validation.if_known(validation.nonnegative, "damping", damping, _DAMPING_HINT)
    b = lo.as_vector(b, "b")
    dtype = b[0].dtype
    operator = _damped(matvec, damping, dtype)
    precondition = preconditioner or (lambda v: v)
    schedule = cg_save_schedule(max_iterations, gamma) if save_iterates else ()
    num_slots = len(schedule) + 1
    is_scheduled = tf.constant([i in schedule for i in range(max_iterations + 1)])

    x, r = _initial_residual(operator, b, x0)
    b_norm = lo.norm(b, dot)
    z = list(precondition(r))
    rz = dot(r, z)
    phi0 = _phi(x, r, b, dot)
    # Stored iterates get one extra trash row: unscheduled writes go there (no tf.cond).
    stored = [tf.zeros(tf.concat([[num_slots + 1], tf.shape(x_)], 0), dtype) for x_ in x]
    iterations = tf.fill([num_slots + 1], -1)
    phis = tf.zeros([num_slots + 1], dtype)
    history = tf.tensor_scatter_nd_update(tf.zeros([max_iterations + 1], dtype), [[0]], [phi0])
    reason = tf.where(lo.norm(r, dot) <= tol * b_norm, RESIDUAL_TOLERANCE, _RUNNING)
    state = _CGState(i=tf.constant(0), x=x, r=r, z=z, p=z, rz=rz, history=history,
                     stored=stored, iterations=iterations, phis=phis,
                     num_saved=tf.constant(0), reason=reason)

    def step(state):
        i, x, r, p, rz, history, num_saved = (
            state.i, state.x, state.r, state.p, state.rz, state.history, state.num_saved)
        ap = list(operator(p))
        pap = dot(p, ap)
        # Negative curvature: take no step (alpha = 0) and stop. Selecting instead of a
        # tf.cond keeps every `dot` (possibly a cross-replica reduction) unconditional.
        curved = pap > 0
        alpha = tf.where(curved, rz / tf.where(curved, pap, 1.0), 0.0)
        x = lo.axpy(alpha, p, x)
        r = lo.axpy(-alpha, ap, r)
        z = list(precondition(r))
        rz_new = dot(r, z)
        p = lo.axpy(rz_new / rz, p, z)
        i = i + tf.cast(curved, tf.int32)
        phi = _phi(x, r, b, dot)
        history = tf.tensor_scatter_nd_update(history, [[i]], [phi])
        save = curved & is_scheduled[i]
        stored, iterations, phis = _store(
            state.stored, state.iterations, state.phis, tf.where(save, num_saved, num_slots),
            x, i, phi
        )
        window = tf.maximum(
            min_progress_window,
            tf.cast(tf.math.ceil(progress_window_fraction * tf.cast(i, tf.float64)), tf.int32),
        )
        phi_old = history[tf.maximum(i - window, 0)]
        progress = (phi - phi_old) / phi
        stalled = (i > window) & (phi < 0) & (progress < tf.cast(window, dtype) * epsilon)
        reason = tf.where(
            ~curved,
            NEGATIVE_CURVATURE,
            tf.where(
                lo.norm(r, dot) <= tol * b_norm,
                RESIDUAL_TOLERANCE,
                tf.where(
                    stalled,
                    RELATIVE_PROGRESS,
                    tf.where(i >= max_iterations, MAX_ITERATIONS, _RUNNING),
                ),
            ),
        )
        return _CGState(i=i, x=x, r=r, z=z, p=p, rz=rz_new, history=history, stored=stored,
                        iterations=iterations, phis=phis,
                        num_saved=num_saved + tf.cast(save, tf.int32), reason=reason)

    final = loops.run_loop(_running, step, state, max_iterations, unroll)
    i, x, num_saved = final.i, final.x, final.num_saved
    # The final iterate is always the last saved one.
    final_saved = is_scheduled[i]
    row = tf.where(final_saved, num_slots, num_saved)
    stored, iterations, phis = _store(
        final.stored, final.iterations, final.phis, row, x, i, final.history[i]
    )
    num_saved = num_saved + 1 - tf.cast(final_saved, tf.int32)
    return CGResult(
        x=x,
        iterates=[s[:num_slots] for s in stored],
        iterations=iterations[:num_slots],
        phi=phis[:num_slots],
        num_saved=num_saved,
        num_iterations=i,
        residual_norm=lo.norm(final.r, dot),
        stop_reason=final.reason,
    )


@cross_replica.solve_across_replicas
def minres(matvec, b, x0=None, *, preconditioner=None, damping=0.0, max_iterations=250,
           tol=1e-6, dot=lo.dot, unroll=False):
    """MINRES (Paige & Saunders 1975) for symmetric, possibly indefinite ``(A + damping I)``.

    Minimizes ``||b - A x||`` over the Krylov space, so it handles the indefinite Hessians of
    saddle-free Newton work where CG breaks down. Follows the recurrences of scipy's
    ``scipy.sparse.linalg.minres``; stops when the recursively estimated residual norm
    (measured in the ``M^-1`` norm when preconditioned) is ``<= tol * ||b||`` (same norm),
    or after ``max_iterations``.

    Args:
        matvec: callable mapping a list of tensors to ``A`` times it (symmetric ``A``).
        b: list of tensors, the right-hand side.
        x0: optional initial guess shaped like ``b``; default zeros.
        preconditioner: optional callable applying a symmetric positive definite ``M^-1``.
        damping: scalar added to the diagonal of ``A``.
        max_iterations: positive int.
        tol: relative residual tolerance (>= 0).
        dot: inner product of two lists of tensors (all-reduce it for distributed use).
        unroll: unroll the ``max_iterations`` iterations as straight-line code (identical
            result), for all-reducing ``matvec``/``dot`` in a replica context; see
            `conjugate_gradient`.

    Returns:
        A `MinresResult` ``(x, num_iterations, residual_norm, stop_reason)``;
        ``stop_reason`` is `RESIDUAL_TOLERANCE` or `MAX_ITERATIONS`.

    Example:

    ```python
    result = minres(lambda v: hvp(loss_fn, params, v), neg_grad, max_iterations=50)
    ```
    """
    _check_max_iterations(max_iterations)
    _check_tol(tol)
    validation.if_known(validation.real, "damping", damping,
                        "Pass a finite shift of the diagonal (0 for none).")
    b = lo.as_vector(b, "b")
    dtype = b[0].dtype
    operator = _damped(matvec, damping, dtype)
    precondition = preconditioner or (lambda v: v)
    x, r1 = _initial_residual(operator, b, x0)
    y = list(precondition(r1))
    beta1 = tf.sqrt(tf.maximum(dot(r1, y), 0.0))
    mb = list(precondition(b))
    target = tol * tf.sqrt(tf.maximum(dot(b, mb), 0.0))
    zero = tf.zeros([], dtype)
    tiny = tf.constant(tf.experimental.numpy.finfo(dtype.as_numpy_dtype).tiny, dtype)
    reason = tf.where(beta1 <= target, RESIDUAL_TOLERANCE, _RUNNING)
    w = lo.zeros_like(b)
    state = _MinresState(itn=tf.constant(0), x=x, r1=r1, r2=r1, y=y, w=w, w2=w, beta=beta1,
                         oldb=zero, dbar=zero, epsln=zero, phibar=beta1,
                         cs=-tf.ones([], dtype), sn=zero, reason=reason)

    def step(s):
        # Lanczos step.
        v = lo.scale(1.0 / s.beta, s.y)
        y = list(operator(v))
        y = lo.axpy(-tf.math.divide_no_nan(s.beta, s.oldb), s.r1, y)
        alfa = dot(v, y)
        y = lo.axpy(-alfa / s.beta, s.r2, y)
        r2 = y
        y = list(precondition(r2))
        beta = tf.sqrt(tf.maximum(dot(r2, y), 0.0))
        # QR of the tridiagonal matrix by Givens rotations.
        delta = s.cs * s.dbar + s.sn * alfa
        gbar = s.sn * s.dbar - s.cs * alfa
        gamma = tf.maximum(tf.sqrt(gbar**2 + beta**2), tiny)
        cs, sn = gbar / gamma, beta / gamma
        w = lo.scale(1.0 / gamma, lo.axpy(-delta, s.w, lo.axpy(-s.epsln, s.w2, v)))
        itn = s.itn + 1
        phibar = sn * s.phibar
        reason = tf.where(
            phibar <= target,
            RESIDUAL_TOLERANCE,
            tf.where(itn >= max_iterations, MAX_ITERATIONS, _RUNNING),
        )
        return _MinresState(
            itn=itn, x=lo.axpy(cs * s.phibar, w, s.x), r1=s.r2, r2=r2, y=y, w=w, w2=s.w,
            beta=beta, oldb=s.beta, dbar=-s.cs * beta, epsln=s.sn * beta, phibar=phibar,
            cs=cs, sn=sn, reason=reason,
        )

    out = loops.run_loop(_running, step, state, max_iterations, unroll)
    return MinresResult(x=out.x, num_iterations=out.itn, residual_norm=out.phibar,
                        stop_reason=out.reason)


_GAMMA_HINT = "Martens (2010) uses 1.3."
_DAMPING_HINT = (
    "CG needs a positive definite A + damping I: pass damping >= 0 (Martens 2010, sec. 4.3; "
    "0 for none, e.g. 1e-3), or use `minres` for a negative shift."
)


def _check_max_iterations(max_iterations):
    validation.positive_int("max_iterations", max_iterations, "Pass a step budget such as 50.")


def _check_tol(tol):
    validation.nonnegative("tol", tol, "Pass a relative tolerance such as 1e-6 (0 disables it).")


def _phi(x, r, b, dot):
    """phi(x) = 0.5 x^T A x - b^T x with A x = b - r, i.e. -0.5 x^T (b + r)."""
    return -0.5 * dot(x, lo.axpy(1.0, b, r))


def _store(stored, iterations, phis, row, x, i, phi):
    """Writes iterate ``x`` (iteration ``i``, value ``phi``) into row ``row`` of the stores."""
    index = [[row]]
    return (
        [tf.tensor_scatter_nd_update(s, index, x_[None]) for s, x_ in zip(stored, x)],
        tf.tensor_scatter_nd_update(iterations, index, [i]),
        tf.tensor_scatter_nd_update(phis, index, [phi]),
    )


def _initial_residual(operator, b, x0):
    """The starting iterate (``x0`` or zeros) and its residual ``b - A x``."""
    if x0 is None:
        return lo.zeros_like(b), b
    x = lo.as_vector(x0, "x0")
    lo.check_same_structure(b, x, "b", "x0")
    return x, lo.axpy(-1.0, list(operator(x)), b)


def _damped(matvec, damping, dtype):
    if isinstance(damping, (int, float)) and damping == 0:
        return matvec
    damping = tf.cast(tf.convert_to_tensor(damping, dtype_hint=dtype), dtype)
    return lambda v: lo.axpy(damping, v, list(matvec(v)))
