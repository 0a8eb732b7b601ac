"""Tests for keras_diffusion.curvature.spectra against numpy.linalg.eigh and exact traces."""

import dense_blocks as db
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_diffusion.curvature import linear_operator as lo
from keras_diffusion.curvature import spectra


INDEFINITE = db.symmetric(np.array([-6.0, -2.5, -1.0, -0.2, 0.3, 0.8, 1.5, 2.0, 3.0, 4.0, 4.5]), 0)
V0 = np.random.default_rng(1).normal(size=db.N)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_power_iteration_finds_largest_magnitude_eigenpair(sign):
    a = sign * INDEFINITE  # dominant eigenvalue -6 or +6
    result = spectra.power_iteration(db.operator(a), db.blocks(V0), max_iterations=500, tol=1e-12)
    w, v = np.linalg.eigh(a)
    top = np.argmax(np.abs(w))
    np.testing.assert_allclose(float(result.eigenvalue), w[top], rtol=1e-10)
    assert bool(result.converged) and int(result.num_iterations) < 500
    np.testing.assert_allclose(abs(db.flat(result.vector) @ v[:, top]), 1.0, atol=1e-6)


def test_smallest_eigenvalue_by_shifted_power_iteration():
    a = -INDEFINITE + 1.0  # eigenvalues in [-3.5, 7]: dominant is positive
    result = spectra.smallest_eigenvalue(db.operator(a), db.blocks(V0), max_iterations=2000,
                                         tol=1e-13)
    w, v = np.linalg.eigh(a)
    np.testing.assert_allclose(float(result.eigenvalue), w[0], rtol=1e-8)
    np.testing.assert_allclose(abs(db.flat(result.vector) @ v[:, 0]), 1.0, atol=1e-5)


def test_lanczos_full_run_gives_all_eigenpairs():
    result = spectra.lanczos(db.operator(INDEFINITE), db.blocks(V0), db.N)
    w = np.linalg.eigvalsh(INDEFINITE)
    np.testing.assert_allclose(result.ritz_values.numpy(), w, atol=1e-12)
    ritz = np.stack([db.flatten([q[j] for q in result.ritz_vectors]).numpy() for j in range(db.N)])
    np.testing.assert_allclose(ritz @ ritz.T, np.eye(db.N), atol=1e-12)
    np.testing.assert_allclose(ritz @ INDEFINITE, w[:, None] * ritz, atol=1e-10)
    assert result.alphas.shape == [db.N] and result.betas.shape == [db.N - 1]


def test_lanczos_partial_run_converges_at_the_extremes():
    n = 200
    eigenvalues = np.concatenate([[-3.0], np.linspace(0.0, 1.0, n - 2), [5.0]])
    a = db.symmetric(eigenvalues, 2)
    like = [tf.zeros([10, 10], tf.float64), tf.zeros([100], tf.float64)]
    matvec = db.operator(a)
    v0 = lo.random_normal_like(like, seed=(3, 4))
    ritz = spectra.lanczos(matvec, v0, 30).ritz_values.numpy()
    np.testing.assert_allclose([ritz[0], ritz[-1]], [-3.0, 5.0], rtol=1e-10)
    assert ritz[1] >= -1e-8 and ritz[-2] <= 1.0 + 1e-8  # interlacing


def test_lanczos_restarts_on_invariant_krylov_space():
    # Three distinct eigenvalues: the Krylov space of any v0 is invariant after 3 steps.
    eigenvalues = np.array([-1.0] * 4 + [2.0] * 4 + [5.0] * 3)
    result = spectra.lanczos(db.operator(db.symmetric(eigenvalues, 5)), db.blocks(V0), db.N)
    np.testing.assert_allclose(result.ritz_values.numpy(), np.sort(eigenvalues), atol=1e-10)
    assert abs(float(result.betas[2])) == 0.0


def test_jit_compiled_spectra_match_eager():
    matvec = db.operator(INDEFINITE)

    def run(v0):
        return (
            spectra.power_iteration(matvec, v0, max_iterations=50),
            spectra.lanczos(matvec, v0, 6),
            spectra.stochastic_lanczos_quadrature(matvec, db.LIKE, 3, 5, seed=(1, 2)),
            spectra.hutchinson_trace(matvec, db.LIKE, 4, seed=(1, 2)),
        )

    eager = run(db.blocks(V0))
    jitted = tf.function(run, jit_compile=True)(db.blocks(V0))
    for e, j in zip(tf.nest.flatten(eager), tf.nest.flatten(jitted)):
        np.testing.assert_allclose(j.numpy(), e.numpy(), rtol=1e-9, atol=1e-9)


def test_slq_weights_sum_to_one_and_moments_match_traces():
    a = db.symmetric(np.linspace(-1.0, 3.0, db.N) ** 3, 6)
    num_probes, num_steps = 60, 4
    slq = spectra.stochastic_lanczos_quadrature(db.operator(a), db.LIKE, num_probes, num_steps)
    nodes, weights = slq.nodes.numpy(), slq.weights.numpy()
    assert nodes.shape == weights.shape == (num_probes, num_steps)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0 / num_probes, rtol=1e-12)
    assert (weights >= 0).all()
    for p in (1, 2, 3):  # Gauss quadrature with 4 nodes is exact to degree 7 per probe
        ap = np.linalg.matrix_power(a, p)
        # Rademacher: Var(v^T B v) = 2 sum_{i != j} B_ij^2.
        off = ap - np.diag(np.diag(ap))
        std_error = np.sqrt(2 * (off**2).sum() / num_probes) / db.N
        estimate = (weights * nodes**p).sum()
        assert abs(estimate - np.trace(ap) / db.N) < 4 * std_error


def test_spectral_density_integrates_to_one_with_slq_mean():
    a = db.symmetric(np.linspace(0.0, 4.0, db.N), 7)
    slq = spectra.stochastic_lanczos_quadrature(db.operator(a), db.LIKE, 5, 6, seed=(5, 5))
    grid = np.linspace(-3.0, 7.0, 4001)
    density = spectra.spectral_density(slq.nodes, slq.weights, grid, sigma=0.2).numpy()
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-8)
    mean = (slq.weights * slq.nodes).numpy().sum()
    np.testing.assert_allclose(np.trapezoid(grid * density, grid), mean, rtol=1e-8)
    # Smoothing by N(0, sigma^2) adds sigma^2 to the variance of the node distribution.
    nodes, weights = slq.nodes.numpy(), slq.weights.numpy()
    variance = (weights * (nodes - mean) ** 2).sum() + 0.2**2
    np.testing.assert_allclose(np.trapezoid((grid - mean) ** 2 * density, grid), variance,
                               rtol=1e-8)


def test_hutchinson_is_unbiased_within_standard_errors_on_keras_variables():
    a = db.symmetric(np.linspace(-2.0, 6.0, db.N), 8) + 0.5
    like = [keras.Variable(np.zeros(s), dtype="float64") for s in db.SHAPES]
    result = spectra.hutchinson_trace(db.operator(a), like, 400, seed=(7, 7))
    off = a - np.diag(np.diag(a))
    expected_se = np.sqrt(2 * (off**2).sum() / 400)
    np.testing.assert_allclose(float(result.standard_error), expected_se, rtol=0.25)
    assert abs(float(result.trace) - np.trace(a)) < 4 * expected_se
    np.testing.assert_allclose(result.samples.numpy().mean(), float(result.trace))
    # Diagonal operator: every Rademacher probe gives the exact trace.
    d = np.diag(np.arange(1.0, db.N + 1))
    exact = spectra.hutchinson_trace(db.operator(d), db.LIKE, 3)
    np.testing.assert_allclose(float(exact.trace), d.trace(), rtol=1e-12)
    np.testing.assert_allclose(float(exact.standard_error), 0.0, atol=1e-12)


def test_spectra_use_only_the_given_inner_product():
    # In the M-inner product, M^-1 A is self-adjoint with the generalized eigenvalues of
    # (A, M): any reduction that bypassed `dot` would break this.
    rng = np.random.default_rng(9)
    m = np.diag(rng.uniform(0.5, 3.0, db.N))
    m_dot = db.inner_product(m)

    operator = db.operator(np.linalg.solve(m, INDEFINITE))
    m_half = np.diag(np.diag(m) ** -0.5)
    expected = np.linalg.eigvalsh(m_half @ INDEFINITE @ m_half)
    ritz = spectra.lanczos(operator, db.blocks(V0), db.N, dot=m_dot).ritz_values.numpy()
    np.testing.assert_allclose(ritz, expected, atol=1e-10)
    top = spectra.power_iteration(operator, db.blocks(V0), dot=m_dot, max_iterations=1000,
                                  tol=1e-13)
    np.testing.assert_allclose(float(top.eigenvalue), expected[np.abs(expected).argmax()],
                               rtol=1e-9)


def test_bad_arguments_raise():
    op = db.operator(INDEFINITE)
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="num_steps"):
            spectra.lanczos(op, db.blocks(V0), bad)
        with pytest.raises(ValueError, match="max_iterations"):
            spectra.power_iteration(op, db.blocks(V0), max_iterations=bad)
        with pytest.raises(ValueError, match="num_probes"):
            spectra.stochastic_lanczos_quadrature(op, db.LIKE, bad, 3)
    with pytest.raises(ValueError, match="exceeds the dimension"):
        spectra.lanczos(op, db.blocks(V0), db.N + 1)
    with pytest.raises(ValueError, match=">= 2"):
        spectra.hutchinson_trace(op, db.LIKE, 1)
    with pytest.raises(TypeError, match="list of tensors"):
        spectra.power_iteration(op, db.flatten(db.blocks(V0)))
    with pytest.raises(ValueError, match="sigma"):
        spectra.spectral_density([1.0], [1.0], [0.0], sigma=0.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e-6])
def test_non_finite_or_negative_tolerances_name_the_value_and_fix(bad):
    op, v0 = db.operator(INDEFINITE), db.blocks(V0)
    for estimate in (spectra.power_iteration, spectra.smallest_eigenvalue):
        with pytest.raises(ValueError, match=rf"`tol` must be .*{bad}.*1e-6"):
            estimate(op, v0, tol=bad)
    with pytest.raises(ValueError, match=r"`max_iterations` must be an integer >= 1, got inf"):
        spectra.power_iteration(op, v0, max_iterations=float("inf"))
    with pytest.raises(ValueError, match=r"`num_probes` must be an integer >= 2, got 1\. Two"):
        spectra.hutchinson_trace(op, db.LIKE, 1)
    with pytest.raises(ValueError, match=r"`num_steps` must be an integer >= 1, got nan"):
        spectra.stochastic_lanczos_quadrature(op, db.LIKE, 2, float("nan"))
    with pytest.raises(ValueError, match=r"`sigma` must be finite and > 0.*0\.05"):
        spectra.spectral_density([1.0], [1.0], [0.0], sigma=tf.constant(-1.0))


# Two replicas' halves of one indefinite matrix (A = A_0 + A_1).
HALVES = np.stack([INDEFINITE, db.symmetric(np.linspace(-1.0, 2.0, db.N), 10)])


def test_two_replica_products_give_the_single_device_spectra(mirrored_strategy):
    # Each replica holds half of the curvature (A = A_0 + A_1, as for a split batch); the
    # estimators run in cross-replica context on the replica-summed product.
    strategy = mirrored_strategy
    halves = tf.constant(HALVES)
    local_product = db.replica_operator(HALVES)

    def distributed(v):
        per_replica = strategy.run(local_product, args=(v,))
        return [strategy.reduce("SUM", x, axis=None) for x in per_replica]

    def estimate(matvec):
        return (spectra.lanczos(matvec, db.blocks(V0), db.N).ritz_values,
                spectra.hutchinson_trace(matvec, db.LIKE, 5, seed=(3, 3)).trace)

    two = tf.function(lambda: estimate(distributed))()
    one = estimate(db.operator(tf.reduce_sum(halves, 0).numpy()))
    for t, o in zip(two, one):
        np.testing.assert_allclose(t.numpy(), o.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(two[0].numpy(), np.linalg.eigvalsh(tf.reduce_sum(halves, 0)),
                               atol=1e-10)


def test_power_iteration_on_the_zero_operator_keeps_a_unit_vector():
    result = spectra.power_iteration(lambda v: [0.0 * x for x in v], db.blocks(V0))
    assert float(result.eigenvalue) == 0.0 and bool(result.converged)
    np.testing.assert_allclose(np.linalg.norm(db.flat(result.vector)), 1.0, rtol=1e-12)


def test_random_probes_are_standardized_and_identical_under_jit():
    like = [tf.zeros([100, 50], tf.float32), tf.zeros([5000], tf.float32)]

    def draw(seed):
        return lo.random_normal_like(like, seed), lo.rademacher_like(like, seed)

    eager = draw(tf.constant([4, 2]))
    jitted = tf.function(draw, jit_compile=True)(tf.constant([4, 2]))
    for e, j in zip(tf.nest.flatten(eager), tf.nest.flatten(jitted)):
        np.testing.assert_allclose(j.numpy(), e.numpy(), rtol=1e-6, atol=1e-6)
    normal, signs = (db.flatten(v).numpy() for v in eager)
    n = normal.size
    assert abs(normal.mean()) < 4 / np.sqrt(n) and abs(normal.var() - 1) < 4 * np.sqrt(2 / n)
    assert abs(np.mean(normal**4) - 3) < 0.2  # Gaussian kurtosis
    assert set(np.unique(signs)) == {-1.0, 1.0} and abs(signs.mean()) < 4 / np.sqrt(n)
    other = db.flatten(lo.random_normal_like(like, (4, 3))).numpy()
    assert abs(np.corrcoef(normal, other)[0, 1]) < 4 / np.sqrt(n)


def test_unrolled_spectra_equal_looped():
    from test_solvers import looped_and_unrolled

    # Three distinct eigenvalues: Lanczos restarts after 3 steps (a selected, not a
    # tf.cond, branch); power iteration stops early on its tolerance (a frozen state).
    clustered = db.symmetric(np.array([-1.0] * 4 + [2.0] * 4 + [5.0] * 3), 5)

    def run(indefinite, clustered, v0, unroll):
        matvec, restarting = db.operator(indefinite), db.operator(clustered)
        return (
            spectra.power_iteration(restarting, v0, max_iterations=40, tol=1e-8,
                                    unroll=unroll),
            spectra.smallest_eigenvalue(matvec, v0, max_iterations=8, unroll=unroll),
            spectra.lanczos(restarting, v0, 6, unroll=unroll),
            spectra.stochastic_lanczos_quadrature(matvec, db.LIKE, 2, 3, seed=(1, 2),
                                                  unroll=unroll),
            spectra.hutchinson_trace(matvec, db.LIKE, 3, seed=(1, 2), unroll=unroll),
        )

    power, smallest, lanczos, slq, trace = looped_and_unrolled(
        run, tf.constant(INDEFINITE), tf.constant(clustered), db.blocks(V0)
    )[1]
    assert bool(power.converged) and int(power.num_iterations) < 40
    np.testing.assert_allclose(float(power.eigenvalue), 5.0, rtol=1e-7)
    assert float(lanczos.betas[2]) == 0.0
    np.testing.assert_allclose(lanczos.ritz_values.numpy()[[0, -1]], [-1.0, 5.0], rtol=1e-10)
    rows = np.stack([db.flatten([q[j] for q in lanczos.ritz_vectors]).numpy() for j in range(6)])
    np.testing.assert_allclose(rows @ rows.T, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(slq.weights.numpy().sum(), 1.0, rtol=1e-12)
    assert smallest.eigenvalue.dtype == tf.float64 and trace.samples.shape == [3]


def test_unrolled_spectra_run_with_all_reduces_in_replica_context(mirrored_strategy):
    # Inside strategy.run (as in a train step) each replica all-reduces its half of the
    # product: TensorFlow rejects that inside tf.while_loop/tf.cond, unrolled loops run it.
    strategy = mirrored_strategy
    halves = HALVES
    local = db.replica_operator(halves)

    def replica_fn(unroll):
        ctx = tf.distribute.get_replica_context()
        matvec = lambda v: ctx.all_reduce("SUM", local(v))  # noqa: E731
        return (spectra.lanczos(matvec, db.blocks(V0), 4, unroll=unroll).ritz_values,
                spectra.hutchinson_trace(matvec, db.LIKE, 2, seed=(3, 3), unroll=unroll).samples)

    with pytest.raises(RuntimeError, match="synchronization point"):
        tf.function(lambda: strategy.run(replica_fn, args=(False,)))()
    ritz, samples = tf.function(lambda: strategy.run(replica_fn, args=(True,)))()
    total = halves.sum(0)
    # Four steps: the Ritz values of the single-device run on the summed matrix, whose
    # extremes already bracket the spectrum.
    expected = spectra.lanczos(db.operator(total), db.blocks(V0), 4).ritz_values.numpy()
    w = np.linalg.eigvalsh(total)
    assert w[0] <= expected[0] < expected[-1] <= w[-1]
    for replica_ritz in strategy.experimental_local_results(ritz):
        np.testing.assert_allclose(replica_ritz.numpy(), expected, rtol=1e-10, atol=1e-12)
    for replica_samples in strategy.experimental_local_results(samples):
        for p, sample in enumerate(replica_samples.numpy()):
            v = db.flat(lo.rademacher_like(db.LIKE, lo.fold_seed((3, 3), p)))
            np.testing.assert_allclose(sample, v @ total @ v, rtol=1e-12)
