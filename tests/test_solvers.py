"""Tests for keras_diffusion.curvature.solvers against dense numpy linear algebra."""

import collections
import math

import dense_blocks as db
import numpy as np
import pytest
import tensorflow as tf

from keras_diffusion.curvature import loops, solvers


def _martens_cg(a, b, max_iterations, epsilon=5e-4):
    """Plain numpy CG from 0 with Martens' relative-progress rule (Martens 2010, sec. 4.4)."""
    x, r = np.zeros_like(b), b.copy()
    p, phis, iterates = r.copy(), [0.0], [x]
    for i in range(1, max_iterations + 1):
        ap = a @ p
        alpha = (r @ r) / (p @ ap)
        x = x + alpha * p
        r_new = r - alpha * ap
        p = r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
        phis.append(0.5 * x @ a @ x - b @ x)
        iterates.append(x)
        k = max(10, math.ceil(0.1 * i))
        if i > k and phis[i] < 0 and (phis[i] - phis[i - k]) / phis[i] < k * epsilon:
            return i, iterates, phis
    return max_iterations, iterates, phis


def test_save_schedule_is_ceil_of_powers_of_1_3():
    assert solvers.cg_save_schedule(60) == (1, 2, 3, 4, 5, 7, 9, 11, 14, 18, 24, 31, 40, 52)
    assert solvers.cg_save_schedule(1) == (1,)


@pytest.mark.parametrize("jit", [False, True])
def test_cg_matches_solve_with_warm_start_damping_and_preconditioner(jit):
    rng = np.random.default_rng(0)
    a = db.symmetric(np.geomspace(0.1, 50.0, db.N), seed=1)
    damping, diag = 0.3, rng.uniform(0.5, 2.0, db.N)
    b, x0 = rng.normal(size=db.N), rng.normal(size=db.N)

    def solve(b, x0):
        return solvers.conjugate_gradient(
            db.operator(a), b, x0, damping=damping,
            preconditioner=solvers.diagonal_preconditioner(db.blocks(diag)),
            tol=1e-12, epsilon=0.0, max_iterations=50,
        )

    if jit:
        solve = tf.function(solve, jit_compile=True)
    result = solve(db.blocks(b), db.blocks(x0))
    expected = np.linalg.solve(a + damping * np.eye(db.N), b)
    np.testing.assert_allclose(db.flat(result.x), expected, rtol=1e-9, atol=1e-9)
    assert solvers.STOP_REASONS[int(result.stop_reason)] == "residual_tolerance"
    assert int(result.num_iterations) <= 2 * db.N
    assert float(result.residual_norm) <= 1e-12 * np.linalg.norm(b)


def test_cg_martens_rule_iterates_and_phi_match_numpy_reference():
    rng = np.random.default_rng(3)
    n = 150
    shapes = ([10, 10], [50])
    a = db.symmetric(np.geomspace(1e-2, 1.0, n), seed=4)  # CG stays stable: paths agree
    b = rng.normal(size=n)
    like = [tf.zeros(s, tf.float64) for s in shapes]
    matvec = db.operator(a)
    result = solvers.conjugate_gradient(
        matvec, db.unflatten(tf.constant(b), like), max_iterations=120, tol=0.0
    )
    stop, iterates, phis = _martens_cg(a, b, 120)
    assert 10 < stop < 120  # the rule, not the iteration cap, stopped the reference
    assert int(result.num_iterations) == stop
    assert solvers.STOP_REASONS[int(result.stop_reason)] == "relative_progress"
    schedule = [i for i in solvers.cg_save_schedule(120) if i <= stop]
    expected_its = schedule + ([stop] if stop not in schedule else [])
    num_saved = int(result.num_saved)
    assert num_saved == len(expected_its)
    assert result.iterations.numpy()[:num_saved].tolist() == expected_its
    assert (result.iterations.numpy()[num_saved:] == -1).all()
    for row, it in enumerate(expected_its):
        np.testing.assert_allclose(
            db.flatten([s[row] for s in result.iterates]).numpy(), iterates[it],
            rtol=1e-6, atol=1e-8,
        )
        np.testing.assert_allclose(float(result.phi[row]), phis[it], rtol=1e-8)
    np.testing.assert_allclose(db.flat(result.x), iterates[stop], rtol=1e-6, atol=1e-8)


def test_cg_without_saving_keeps_only_the_final_iterate():
    a = db.symmetric(np.linspace(1.0, 5.0, db.N), seed=2)
    b = db.blocks(np.ones(db.N))
    result = solvers.conjugate_gradient(db.operator(a), b, save_iterates=False, tol=1e-10)
    assert result.iterations.shape == [1] and int(result.num_saved) == 1
    assert int(result.iterations[0]) == int(result.num_iterations)
    np.testing.assert_allclose(db.flat([s[0] for s in result.iterates]), db.flat(result.x))


def test_cg_stops_on_negative_curvature_like_numpy():
    a = db.symmetric(np.concatenate([[-1.0, -0.5], np.linspace(1.0, 3.0, db.N - 2)]), seed=5)
    rng = np.random.default_rng(6)
    for trial in range(5):
        b = rng.normal(size=db.N)
        x, r, p = np.zeros(db.N), b.copy(), b.copy()
        steps = 0
        while p @ a @ p > 0:
            alpha = (r @ r) / (p @ a @ p)
            x, r_new = x + alpha * p, r - alpha * (a @ p)
            p, r = r_new + (r_new @ r_new) / (r @ r) * p, r_new
            steps += 1
        result = solvers.conjugate_gradient(db.operator(a), db.blocks(b), tol=0.0, epsilon=0.0)
        assert solvers.STOP_REASONS[int(result.stop_reason)] == "negative_curvature"
        assert int(result.num_iterations) == steps
        np.testing.assert_allclose(db.flat(result.x), x, rtol=1e-8, atol=1e-10)
    # b along a negative eigenvector: the very first direction has negative curvature.
    w, v = np.linalg.eigh(a)
    result = solvers.conjugate_gradient(db.operator(a), db.blocks(v[:, 0]))
    assert int(result.num_iterations) == 0 and int(result.num_saved) == 1
    assert int(result.stop_reason) == solvers.NEGATIVE_CURVATURE
    np.testing.assert_allclose(db.flat(result.x), 0.0)


@pytest.mark.parametrize("jit", [False, True])
def test_minres_matches_solve_on_indefinite_systems(jit):
    rng = np.random.default_rng(7)
    a = db.symmetric(np.concatenate([np.linspace(-4.0, -0.3, 5), np.linspace(0.2, 6.0, db.N - 5)]),
                   seed=8)
    b, x0, diag = rng.normal(size=db.N), rng.normal(size=db.N), rng.uniform(0.5, 2.0, db.N)

    def solve(b, x0):
        return solvers.minres(
            db.operator(a), b, x0, damping=0.05, tol=1e-12, max_iterations=60,
            preconditioner=solvers.diagonal_preconditioner(db.blocks(diag)),
        )

    if jit:
        solve = tf.function(solve, jit_compile=True)
    result = solve(db.blocks(b), db.blocks(x0))
    expected = np.linalg.solve(a + 0.05 * np.eye(db.N), b)
    np.testing.assert_allclose(db.flat(result.x), expected, rtol=1e-8, atol=1e-8)
    assert int(result.stop_reason) == solvers.RESIDUAL_TOLERANCE


def test_minres_residual_estimate_and_iteration_cap():
    a = db.symmetric(np.concatenate([np.linspace(-3.0, -1.0, 5), np.linspace(1.0, 9.0, db.N - 5)]),
                   seed=9)
    b = np.random.default_rng(10).normal(size=db.N)
    result = solvers.minres(db.operator(a), db.blocks(b), max_iterations=4, tol=0.0)
    assert int(result.num_iterations) == 4
    assert int(result.stop_reason) == solvers.MAX_ITERATIONS
    true_residual = np.linalg.norm(b - a @ db.flat(result.x))
    np.testing.assert_allclose(float(result.residual_norm), true_residual, rtol=1e-8)


def test_solvers_use_only_the_given_inner_product():
    # CG and MINRES on M^-1 A in the M-inner product solve the same system A x = b: any
    # reduction that bypassed `dot` would break this.
    rng = np.random.default_rng(11)
    a = db.symmetric(np.geomspace(0.2, 20.0, db.N), seed=12)
    m = np.diag(rng.uniform(0.5, 3.0, db.N))
    b = rng.normal(size=db.N)
    m_inv = np.linalg.inv(m)
    m_dot = db.inner_product(m)

    operator, rhs = db.operator(m_inv @ a), db.blocks(m_inv @ b)
    expected = np.linalg.solve(a, b)
    cg = solvers.conjugate_gradient(operator, rhs, dot=m_dot, tol=1e-12, epsilon=0.0)
    np.testing.assert_allclose(db.flat(cg.x), expected, rtol=1e-8, atol=1e-8)
    mr = solvers.minres(operator, rhs, dot=m_dot, tol=1e-12)
    np.testing.assert_allclose(db.flat(mr.x), expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_max_iterations_raise(bad):
    b = db.blocks(np.ones(db.N))
    op = db.operator(np.eye(db.N))
    with pytest.raises(ValueError, match="max_iterations"):
        solvers.conjugate_gradient(op, b, max_iterations=bad)
    with pytest.raises(ValueError, match="max_iterations"):
        solvers.minres(op, b, max_iterations=bad)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(damping=-1e-3), r"`damping` must be finite and >= 0, got -0.001.*minres"),
        (dict(damping=tf.constant(-1.0)), r"`damping` must be finite and >= 0"),
        (dict(damping=float("inf")), r"`damping` must be a finite real number, got inf"),
        (dict(tol=float("nan")), r"`tol` must be a finite real number, got nan.*1e-6"),
        (dict(tol=-1.0), r"`tol` must be finite and >= 0"),
        (dict(max_iterations=float("inf")), r"`max_iterations` must be an integer >= 1, got inf"),
        (dict(epsilon=float("inf")), r"`epsilon` must be a finite real number"),
        (dict(progress_window_fraction=1.5), r"`progress_window_fraction` must be in \[0, 1\]"),
        (dict(min_progress_window=0), r"`min_progress_window` must be an integer >= 1"),
    ],
)
def test_cg_refuses_bad_hyperparameters_naming_value_and_fix(kwargs, message):
    b = db.blocks(np.ones(db.N))
    with pytest.raises(ValueError, match=message):
        solvers.conjugate_gradient(db.operator(np.eye(db.N)), b, **kwargs)


def test_minres_accepts_a_negative_shift_but_not_a_non_finite_one():
    a = np.diag(np.linspace(1.0, 3.0, db.N))
    b = db.blocks(np.ones(db.N))
    result = solvers.minres(db.operator(a), b, damping=-0.5, tol=1e-12)
    np.testing.assert_allclose(db.flat(result.x), 1.0 / (np.diag(a) - 0.5), rtol=1e-8)
    for bad, message in ((float("nan"), "finite real number, got nan"),
                         (float("inf"), "finite real number, got inf")):
        with pytest.raises(ValueError, match=f"`damping` must be a {message}"):
            solvers.minres(db.operator(a), b, damping=bad)
    with pytest.raises(ValueError, match="`tol` must be a finite real number"):
        solvers.minres(db.operator(a), b, tol=float("inf"))


def test_cg_damping_in_a_variable_is_used_unchecked():
    a = np.diag(np.linspace(1.0, 2.0, db.N))
    b = db.blocks(np.ones(db.N))
    damping = tf.Variable(0.5, dtype=tf.float64)
    result = solvers.conjugate_gradient(db.operator(a), b, damping=damping, tol=1e-12)
    np.testing.assert_allclose(db.flat(result.x), 1.0 / (np.diag(a) + 0.5), rtol=1e-8)


@pytest.mark.parametrize("unroll", [False, True])
def test_run_loop_keeps_a_named_tuple_state(unroll):
    State = collections.namedtuple("State", ["i", "total"])
    final = loops.run_loop(
        lambda s: s.total < 10.0,
        lambda s: State(s.i + 1, s.total + tf.cast(s.i, tf.float32)),
        State(tf.constant(0), tf.constant(0.0)),
        20,
        unroll,
    )
    assert isinstance(final, State)
    assert (int(final.i), float(final.total)) == (5, 10.0)


def test_mismatched_structures_raise():
    b = db.blocks(np.ones(db.N))
    op = db.operator(np.eye(db.N))
    for solve in (solvers.conjugate_gradient, solvers.minres):
        with pytest.raises(ValueError, match="blocks"):
            solve(op, b, x0=b[:1])
        with pytest.raises(ValueError, match="shape"):
            solve(op, b, x0=[tf.zeros([2, 3], tf.float64), b[1]])
        with pytest.raises(TypeError, match="list of tensors"):
            solve(op, db.flatten(b))
    with pytest.raises(ValueError, match="epsilon"):
        solvers.conjugate_gradient(op, b, epsilon=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        solvers.cg_save_schedule(10, gamma=1.0)


# Two replicas' halves of one matrix (A = A_0 + A_1) and a right-hand side.
HALVES = np.stack([db.symmetric(np.linspace(0.5, 4.0, db.N), 13),
                   db.symmetric(np.linspace(-0.4, 3.0, db.N), 14)])
HALVES_B = db.blocks(np.random.default_rng(15).normal(size=db.N))


def test_two_replica_products_give_the_single_device_solution(mirrored_strategy):
    # Each replica holds half of the curvature (A = A_0 + A_1, as for a split batch); the
    # solvers run in cross-replica context on the replica-summed product.
    strategy, halves, b = mirrored_strategy, HALVES, HALVES_B
    local_product = db.replica_operator(halves)

    def distributed(v):
        per_replica = strategy.run(local_product, args=(v,))
        return [strategy.reduce("SUM", x, axis=None) for x in per_replica]

    def solve(matvec):
        cg = solvers.conjugate_gradient(matvec, b, tol=1e-12, epsilon=0.0)
        mr = solvers.minres(matvec, b, tol=1e-12)
        return cg.x, cg.num_iterations, mr.x, mr.num_iterations

    two = tf.function(lambda: solve(distributed))()
    one = solve(db.operator(halves.sum(0)))
    for t, o in zip(tf.nest.flatten(two), tf.nest.flatten(one)):
        np.testing.assert_allclose(t.numpy(), o.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db.flat(two[0]), np.linalg.solve(halves.sum(0), db.flat(b)),
                               rtol=1e-9)


def test_cg_and_lanczos_on_a_float32_network_hessian_under_jit():
    from keras_diffusion.curvature import hvp, lanczos

    rng = np.random.default_rng(16)
    x = tf.constant(rng.normal(size=(20, 3)), tf.float32)
    y = tf.constant(rng.normal(size=(20, 2)), tf.float32)
    params = [tf.constant(rng.normal(size=s) * 0.7, tf.float32) for s in ([3, 2], [2])]

    def loss_fn(p):
        return tf.reduce_mean((tf.tanh(x @ p[0] + p[1]) - y) ** 2)

    with tf.GradientTape() as outer:
        flat = db.flatten(params)
        outer.watch(flat)
        with tf.GradientTape() as inner:
            inner.watch(flat)
            loss = loss_fn(db.unflatten(flat, params))
        grad = inner.gradient(loss, flat)
    hessian = outer.jacobian(grad, flat).numpy().astype(np.float64)
    b = db.unflatten(tf.ones([8]), params)

    @tf.function(jit_compile=True)
    def run(params, b):
        matvec = lambda v: hvp(loss_fn, params, v)  # noqa: E731
        cg = solvers.conjugate_gradient(matvec, b, damping=1.0, tol=1e-6, epsilon=0.0)
        return cg.x, lanczos(matvec, b, 8).ritz_values

    x_cg, ritz = run(params, b)
    np.testing.assert_allclose(db.flat(x_cg), np.linalg.solve(hessian + np.eye(8), np.ones(8)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ritz.numpy(), np.linalg.eigvalsh(hessian), atol=1e-4)


def looped_and_unrolled(solve, *args):
    """``solve(*args, unroll=...)`` looped and unrolled, eagerly and in tf.function.

    Asserts that the eager results are bit-identical (the same operations run on the same
    state) and the graph ones equal to round-off (Grappler's arithmetic optimizer rewrites
    straight-line code and loop bodies differently), integers exactly everywhere; returns
    the graph results. Operators and data must be function arguments: constant folding would
    change the kernels used too. Also used by test_spectra.py.
    """
    eager = [tf.nest.flatten(solve(*args, unroll=u)) for u in (False, True)]
    graph = [tf.function(lambda *a, u=u: solve(*a, unroll=u))(*args) for u in (False, True)]
    flat_graph = [tf.nest.flatten(g) for g in graph]
    for k, (e_loop, e_unroll, g_loop, g_unroll) in enumerate(zip(*eager, *flat_graph)):
        message = f"flattened output {k}"
        np.testing.assert_array_equal(e_unroll.numpy(), e_loop.numpy(), err_msg=message)
        if g_loop.dtype.is_integer or g_loop.dtype.is_bool:
            for value in (g_unroll, e_loop):
                np.testing.assert_array_equal(value.numpy(), g_loop.numpy(), err_msg=message)
        else:
            np.testing.assert_allclose(g_unroll.numpy(), g_loop.numpy(), rtol=1e-12,
                                       atol=1e-14, err_msg=message)
    return graph


@pytest.mark.parametrize("unroll", [False, True])
def test_cg_few_iterations_against_dense_solve(unroll):
    rng = np.random.default_rng(3)
    q = rng.normal(size=(5, 5))
    a = q @ q.T + 0.1 * np.eye(5)
    b = rng.normal(size=5)
    op, rhs = db.operator(a), [tf.constant(b)]

    x = solvers.conjugate_gradient(op, rhs, damping=0.5, max_iterations=8, tol=1e-12,
                                   unroll=unroll).x
    np.testing.assert_allclose(x[0], np.linalg.solve(a + 0.5 * np.eye(5), b), rtol=1e-8)
    # One iteration is the Cauchy step; a converged solve stops moving.
    x1 = solvers.conjugate_gradient(op, rhs, max_iterations=1, unroll=unroll).x
    np.testing.assert_allclose(x1[0], (b @ b) / (b @ a @ b) * b, rtol=1e-10)
    tol = solvers.conjugate_gradient(op, rhs, max_iterations=30, tol=1e-6, unroll=unroll)
    assert int(tol.stop_reason) == solvers.RESIDUAL_TOLERANCE and int(tol.num_iterations) <= 6
    assert np.all(np.isfinite(tol.x[0]))
    np.testing.assert_allclose(a @ tol.x[0].numpy(), b, atol=1e-5)
    # Non-positive curvature: no step along that direction.
    neg = solvers.conjugate_gradient(lambda v: [-v[0]], rhs, max_iterations=3, unroll=unroll)
    np.testing.assert_array_equal(neg.x[0], np.zeros(5))
    assert int(neg.stop_reason) == solvers.NEGATIVE_CURVATURE


def test_unrolled_cg_equals_looped_with_martens_rule_and_saved_iterates():
    rng = np.random.default_rng(3)
    n = 150
    a = db.symmetric(np.geomspace(1e-2, 1.0, n), seed=4)
    b = db.unflatten(tf.constant(rng.normal(size=n)), [tf.zeros([10, 10]), tf.zeros([50])])
    looped, unrolled = looped_and_unrolled(
        lambda a, b, unroll: solvers.conjugate_gradient(
            db.operator(a), b, max_iterations=60, tol=0.0, unroll=unroll
        ),
        tf.constant(a), b,
    )
    # Martens' rule stopped it before the cap, so the unrolled run froze its state.
    assert solvers.STOP_REASONS[int(looped.stop_reason)] == "relative_progress"
    assert 10 < int(looped.num_iterations) < 60 and int(looped.num_saved) > 5
    stop, iterates, _ = _martens_cg(a, db.flat(b), 60)
    assert int(unrolled.num_iterations) == stop
    np.testing.assert_allclose(db.flat(unrolled.x), iterates[stop], rtol=1e-6, atol=1e-8)


def test_unrolled_cg_equals_looped_with_warm_start_damping_and_preconditioner():
    rng = np.random.default_rng(0)
    a = db.symmetric(np.geomspace(0.1, 50.0, db.N), seed=1)
    diag, b, x0 = rng.uniform(0.5, 2.0, db.N), rng.normal(size=db.N), rng.normal(size=db.N)

    def solve(a, diag, b, x0, unroll):
        return solvers.conjugate_gradient(
            db.operator(a), b, x0, damping=0.3,
            preconditioner=solvers.diagonal_preconditioner(diag),
            tol=1e-10, max_iterations=30, unroll=unroll,
        )

    looped, unrolled = looped_and_unrolled(
        solve, tf.constant(a), db.blocks(diag), db.blocks(b), db.blocks(x0)
    )
    assert int(looped.stop_reason) == solvers.RESIDUAL_TOLERANCE
    assert int(looped.num_iterations) < 30
    np.testing.assert_allclose(db.flat(unrolled.x), np.linalg.solve(a + 0.3 * np.eye(db.N), b),
                               rtol=1e-8, atol=1e-8)


def test_unrolled_cg_equals_looped_on_negative_curvature():
    a = db.symmetric(np.concatenate([[-1.0, -0.5], np.linspace(1.0, 3.0, db.N - 2)]), seed=5)
    b = db.blocks(np.random.default_rng(6).normal(size=db.N))
    looped, unrolled = looped_and_unrolled(
        lambda a, b, unroll: solvers.conjugate_gradient(
            db.operator(a), b, tol=0.0, epsilon=0.0, max_iterations=20, unroll=unroll
        ),
        tf.constant(a), b,
    )
    assert int(looped.stop_reason) == solvers.NEGATIVE_CURVATURE


def test_unrolled_minres_equals_looped():
    rng = np.random.default_rng(7)
    a = db.symmetric(np.concatenate([np.linspace(-4.0, -0.3, 5), np.linspace(0.2, 6.0, db.N - 5)]),
                   seed=8)
    b, x0, diag = rng.normal(size=db.N), rng.normal(size=db.N), rng.uniform(0.5, 2.0, db.N)

    def solve(a, diag, b, x0, unroll):
        return solvers.minres(
            db.operator(a), b, x0, damping=0.05, tol=1e-10, max_iterations=40,
            preconditioner=solvers.diagonal_preconditioner(diag), unroll=unroll,
        )

    looped, unrolled = looped_and_unrolled(
        solve, tf.constant(a), db.blocks(diag), db.blocks(b), db.blocks(x0)
    )
    assert int(looped.stop_reason) == solvers.RESIDUAL_TOLERANCE
    assert int(looped.num_iterations) < 40
    np.testing.assert_allclose(db.flat(unrolled.x), np.linalg.solve(a + 0.05 * np.eye(db.N), b),
                               rtol=1e-8, atol=1e-8)


def test_unrolled_solvers_run_with_all_reduces_in_replica_context(mirrored_strategy):
    # Inside strategy.run (as in a train step) each replica all-reduces its half of the
    # product: TensorFlow rejects that inside tf.while_loop, the unrolled solvers run it.
    strategy, halves, b = mirrored_strategy, HALVES, HALVES_B
    local = db.replica_operator(halves)

    def replica_fn(unroll):
        ctx = tf.distribute.get_replica_context()
        matvec = lambda v: ctx.all_reduce("SUM", local(v))  # noqa: E731
        cg = solvers.conjugate_gradient(matvec, b, tol=1e-10, epsilon=0.0, max_iterations=15,
                                        unroll=unroll)
        mr = solvers.minres(matvec, b, tol=1e-10, max_iterations=15, unroll=unroll)
        return cg.x, mr.x, cg.stop_reason, mr.stop_reason

    with pytest.raises(RuntimeError, match="synchronization point"):
        tf.function(lambda: strategy.run(replica_fn, args=(False,)))()
    *solutions, cg_reason, mr_reason = tf.function(
        lambda: strategy.run(replica_fn, args=(True,))
    )()
    for reason in (cg_reason, mr_reason):
        assert [int(r) for r in strategy.experimental_local_results(reason)] == [
            solvers.RESIDUAL_TOLERANCE
        ] * 2
    expected = np.linalg.solve(halves.sum(0), db.flat(b))
    for solution in solutions:
        for replica_x in strategy.experimental_local_results(solution):
            np.testing.assert_allclose(db.flat(replica_x), expected, rtol=1e-8, atol=1e-10)
