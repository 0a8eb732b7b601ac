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
