"""The Hessian-free benchmark's quick run: TensorFlow and JAX compute the same HF step."""

import numpy as np
import pytest

from scripts import benchmark_hessian_free

jax = pytest.importorskip("jax")


def test_quick_run_times_the_same_step_in_every_framework():
    times, solutions = benchmark_hessian_free.run_model(
        "mlp", batch_size=8, cg_iterations=3, repeats=1, use_jax=True, quick=True
    )
    # Same weights, batch and CG iterations: the same step, so the times compare the same work.
    np.testing.assert_allclose(solutions["tf"], solutions["jax"], rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(solutions["xla"], solutions["jax"], rtol=2e-3, atol=1e-5)
    assert np.linalg.norm(solutions["jax"]) > 0
    for column, steps in (("tf", ("grad",) + benchmark_hessian_free.TF_MODES),
                          ("jax", ("grad", "hf"))):
        assert all(times[column][s] > 0 for s in steps)
    table = benchmark_hessian_free.format_table({"mlp": times})
    assert len(table.splitlines()) == 2 + 1 + len(benchmark_hessian_free.TF_MODES)
    assert "HF recorded" in table and "TF/JAX" in table


def test_fit_timing_of_gauss_newton_and_sgd():
    seconds = benchmark_hessian_free.time_fit(
        quick=True, batch_size=8, cg_iterations=2, steps=2, jit_compile=False
    )
    assert set(seconds) == {"gauss_newton", "sgd"}
    assert all(s > 0 for s in seconds.values())


def test_hf_step_timing_on_one_and_two_replicas(mirrored_strategy):
    hf, sgd = benchmark_hessian_free.time_hf_steps(
        quick=True, batch_size=8, caps=(3,), steps=2, strategy=mirrored_strategy
    )
    assert set(hf) == {(1, 3), (2, 3)} and set(sgd) == {1, 2}
    # Every CG iteration up to the cap runs, on one device and across replicas.
    assert all(iterations == cap for (_, cap), (_, iterations) in hf.items())
    assert all(seconds > 0 for seconds, _ in hf.values())
    table = benchmark_hessian_free.format_hf_steps(hf, sgd, 8)
    assert len(table.splitlines()) == 3 + 2 and "| 2 | 3 |" in table
