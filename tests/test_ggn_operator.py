"""The Gauss-Newton operator linearized once per step (Closure.gauss_newton_operator)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from closure_reference import L2, data, flat, random_point, terms, tiny_model

import keras_diffusion as kd
from keras_diffusion.curvature import solvers
from keras_diffusion.curvature.gauss_newton_operator import MODES, GaussNewtonOperator
from keras_diffusion.optimizers import GaussNewton


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fraction, size", [(1.0, 6), (0.5, 3)])
def test_operator_equals_dense_gauss_newton_for_every_vector(mode, fraction, size):
    x, y, w = data()
    model = tiny_model()
    model.compile(optimizer=GaussNewton(), loss="mse")
    closure = kd.Closure(model, x, y, w, curvature_fraction=fraction)
    W, b, params, v = random_point()
    ggn = terms(W, b, x[:size], y[:size], w[:size], L2)[4]  # regularizer Hessian included
    matvec = closure.gauss_newton_operator(params, mode=mode)
    # One linearization, several vectors (a CG solve changes the vector every iteration).
    for vector in (v, [2.0 * v[0] - 1.0, -v[1]], [tf.ones_like(t) for t in v]):
        np.testing.assert_allclose(
            flat(matvec(vector)), ggn @ flat(vector), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            flat(matvec(vector)), flat(closure.ggn_vp(vector, params)), rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize("jit_compile", [False, True])
def test_cg_with_the_recorded_operator_matches_the_dense_solve(jit_compile):
    x, y, w = data()
    model = tiny_model()
    model.compile(optimizer=GaussNewton(), loss="mse")
    W, b, params, _ = random_point()
    _, grad, _, _, ggn, _ = terms(W, b, x, y, w, L2)
    damping = 0.1

    @tf.function(jit_compile=jit_compile)
    def solve(params):
        closure = kd.Closure(model, x, y, w)
        grads = closure.gradient(params)
        result = solvers.conjugate_gradient(
            closure.gauss_newton_operator(params), [-g for g in grads], damping=damping,
            max_iterations=8, tol=1e-10, epsilon=0.0, save_iterates=False,
        )
        return result.x, result.num_iterations

    x_cg, iterations = solve(params)
    expected = np.linalg.solve(ggn + damping * np.eye(ggn.shape[0]), -grad)
    np.testing.assert_allclose(flat(x_cg), expected, rtol=1e-3, atol=1e-5)
    assert 1 <= int(iterations) <= 8


def _rnn(unroll):
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [keras.Input((5, 2)), keras.layers.SimpleRNN(3, unroll=unroll), keras.layers.Dense(4)]
    )


@pytest.mark.parametrize("unroll", [False, True])
def test_recorded_operator_through_a_recurrent_while_loop(unroll):
    """Keras' RNN ``tf.while_loop`` (where forward mode fails) inside CG's ``tf.while_loop``."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5, 2)).astype("float32")
    y = rng.integers(0, 4, size=(4,)).astype("int32")
    model = _rnn(unroll)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    vectors = [tf.constant(rng.normal(size=v.shape), tf.float32) for v in model.weights]

    def products(vectors):
        closure = kd.Closure(model, x, y)
        matvec = closure.gauss_newton_operator(mode="recorded")
        # G (G v) from the loop (the vector changes every iteration) and from ggn_vp.
        _, twice = tf.while_loop(
            lambda i, v: i < 2, lambda i, v: (i + 1, matvec(v)), (0, vectors)
        )
        return twice, closure.ggn_vp(closure.ggn_vp(vectors))

    for run in (products, tf.function(products)):
        got, want = run(vectors)
        np.testing.assert_allclose(flat(got), flat(want), rtol=1e-5, atol=1e-7)


def test_generic_loss_without_analytic_hessian():
    x, y, w = data()
    model = tiny_model()

    def loss(y_true, y_pred):  # a convex loss with no analytic H_L: differentiated twice
        return tf.reduce_mean((y_pred - y_true) ** 4)

    model.compile(optimizer=GaussNewton(), loss=loss)
    closure = kd.Closure(model, x, y, w)
    assert closure.loss_hessian() is None
    _, _, params, v = random_point()
    np.testing.assert_allclose(
        flat(closure.gauss_newton_operator(params)(v)), flat(closure.ggn_vp(v, params)),
        rtol=1e-5, atol=1e-7,
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_operator_is_the_float32_product(policy):
    x, y, w = data()
    _, _, params, v = random_point()
    results = []
    for p in (policy, "float32"):
        keras.mixed_precision.set_global_policy(p)
        try:
            model = tiny_model()
            model.compile(optimizer=GaussNewton(), loss="mse")
            gv = kd.Closure(model, x, y, w).gauss_newton_operator(params)(v)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        assert all(t.dtype == tf.float32 for t in gv)
        results.append(flat(gv))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-7)


class _CountingDense(keras.layers.Dense):
    """A Dense layer counting its calls (forward passes) in a Python list."""

    calls = []

    def call(self, inputs):
        self.calls.append(1)
        return super().call(inputs)


# The train step's pass, reused by the recorded operator, or one more per CG iteration (4).
@pytest.mark.parametrize("mode, passes", [("recorded", 1), ("forward", 1 + 4)])
def test_gauss_newton_runs_one_forward_pass_per_step(mode, passes):
    """Eagerly every forward pass is a call of the layer."""
    x, y, _ = data()
    keras.utils.set_random_seed(0)
    model = kd.Sequential([keras.Input((3,)), _CountingDense(2)])
    model.compile(
        optimizer=GaussNewton(damping=1.0, cg_max_iterations=4, cg_tol=0.0, product_mode=mode),
        loss="mse",
        run_eagerly=True,
    )
    _CountingDense.calls.clear()
    model.train_on_batch(x, y)
    assert int(model.optimizer.cg_iterations.numpy()) == 4
    assert len(_CountingDense.calls) == passes


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="mode.*'reverse'"):
        GaussNewtonOperator(lambda p: p[0], [tf.ones(2)], tf.reduce_sum, mode="reverse")
