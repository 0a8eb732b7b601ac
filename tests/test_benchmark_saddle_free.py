"""The Saddle-Free Newton benchmark: its JAX peer computes the optimizer's step; smoke run."""

import numpy as np
import pytest
import script_runner

from models import curvature_nets
from scripts import benchmark_saddle_free

pytest.importorskip("jax")


def test_jax_peer_computes_the_tensorflow_krylov_step():
    model = curvature_nets.build_mlp((6, 5, 10))
    x, y = curvature_nets.random_batch(model, 8)
    tf_fns = benchmark_saddle_free.tf_steps(model, x, y, [5], jit_compile=False)
    jax_fns = benchmark_saddle_free.jax_steps(model, x, y, [5])
    tf_grad = np.concatenate([np.ravel(g) for g in tf_fns["gradient"]()])
    np.testing.assert_allclose(np.asarray(jax_fns["gradient"]()), tf_grad, rtol=1e-5, atol=1e-6)
    step = np.asarray(jax_fns[5]())
    assert np.linalg.norm(step) > 0
    np.testing.assert_allclose(step, tf_fns[5]().numpy(), rtol=1e-3, atol=1e-4 * np.abs(step).max())


def test_quick_benchmark_prints_ratios():
    done = script_runner.run_script("benchmark_saddle_free.py", "--quick")
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("mlp"))
    cells = line.split()
    assert cells[1] == "4" and len(cells) == 10  # model, k, 3 x (ms, /grad), TF/JAX, XLA/JAX
    assert all(float(c) > 0 for c in cells[2:])
