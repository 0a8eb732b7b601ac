"""HessianFree: each piece of Martens' algorithm against dense numpy references on tiny problems.

Newton steps (linear least squares, a convex quadratic), the Fisher option, backtracking over
saved CG iterates, the Levenberg-Marquardt rule, the diagonal preconditioner, the
structural-damping product of a tiny RNN, the Hessian option at negative curvature, the
non-finite guard, saving, and 2 replicas against 1 device.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import test_probes as rnn_ref
from closure_reference import data, flat

import keras_diffusion as kd
from keras_diffusion.curvature import solvers
from keras_diffusion.optimizers import HessianFree, cg_backtracking, damping, line_search
from keras_diffusion.optimizers import preconditioners, structural_damping
from keras_diffusion.optimizers.hessian_free import curvature_matvec


def _linear(l2=0.0, units=2):
    keras.utils.set_random_seed(1)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    return kd.Sequential([keras.Input((3,)),
                          keras.layers.Dense(units, kernel_regularizer=regularizer)])


def _weighted_least_squares(x, y, w, l2):
    """Minimizer of sum_n w_n |x1_n theta - y_n|^2 / (N K) + l2 |W|^2 (x1 = [x, 1]), float64."""
    n, k = y.shape
    x1 = np.concatenate([x, np.ones((n, 1))], 1).astype(np.float64)
    reg = np.diag([1.0] * x.shape[1] + [0.0])
    lhs = 2.0 / (n * k) * x1.T @ (w[:, None] * x1) + 2.0 * l2 * reg
    theta = np.linalg.solve(lhs, 2.0 / (n * k) * x1.T @ (w[:, None] * y))
    return theta[:-1], theta[-1]


# --- Newton steps ------------------------------------------------------------------------


@pytest.mark.parametrize("curvature, l2", [("gauss_newton", 0.0), ("hessian", 0.05)])
def test_one_step_with_vanishing_damping_is_the_newton_step(curvature, l2):
    """Least squares (G = H) and a convex quadratic with an L2 term (the Hessian option):
    preconditioned CG to convergence, backtracking and line search keep the full step."""
    x, y, w = data()
    model = _linear(l2)
    lam = 1e-6
    # Float32 preconditioned CG needs more than P = 8 iterations to converge: give it 40.
    model.compile(HessianFree(damping=lam, curvature=curvature, cg_max_iterations=40,
                              cg_tol=1e-6), "mse", jit_compile=False)
    history = model.fit(x, y, sample_weight=w, batch_size=6, epochs=1, verbose=0).history
    W, b = _weighted_least_squares(x, y, w, l2)
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), W, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(model.layers[0].bias.numpy(), b, rtol=2e-3, atol=2e-4)
    # The quadratic model is exact: rho = 1, so lambda shrinks by 2/3; the full step is taken.
    assert history["rho"][0] == pytest.approx(1.0, abs=1e-2)
    assert history["damping"][0] == pytest.approx(lam * 2 / 3, rel=1e-5)
    assert history["step_length"] == [1.0]
    assert history["rejected_steps"] == [0.0]


def test_fisher_option_equals_gauss_newton_for_matching_losses():
    """Softmax cross-entropy on logits: the categorical Fisher matrix is the Gauss-Newton one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3)).astype("float32")
    y = rng.integers(0, 4, size=(5,))
    keras.utils.set_random_seed(2)
    model = kd.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                           keras.layers.Dense(4)])
    model.compile(HessianFree(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.compute_loss(x, y, model(x))  # builds the compiled loss
    closure = kd.Closure(model, x, y)
    v = [tf.constant(rng.normal(size=p.shape), "float32") for p in closure.params]
    fisher = curvature_matvec(closure, "fisher", fisher_distribution="categorical")(v)
    gauss_newton = curvature_matvec(closure, "gauss_newton")(v)
    np.testing.assert_allclose(flat(fisher), flat(gauss_newton), rtol=1e-4, atol=1e-6)
    assert np.linalg.norm(flat(fisher)) > 1e-3


# --- The pieces --------------------------------------------------------------------------


@pytest.mark.parametrize("losses, expected", [
    ([5.0, 3.0, 2.0, 4.0], 2),   # walk back from 4: 2 is better, 3 is not: row 2
    ([5.0, 3.0, 4.0, 1.0], 3),   # the final iterate is the best neighbour: keep it
    ([1.0, 2.0, 3.0, 4.0], 0),   # objective keeps falling back to the first
])
@pytest.mark.parametrize("unroll", [False, True])
def test_backtracking_picks_the_best_saved_iterate_walking_back(losses, expected, unroll):
    num_saved = len(losses)
    # Saved iterates along one coordinate (two padding rows); the loss reads them off a table.
    rows = np.arange(num_saved + 2, dtype="float32")
    table = tf.constant(losses + [-100.0, -100.0])

    def loss_fn(weights):
        return tf.gather(table, tf.cast(weights[0][0] - 10.0, tf.int32))

    chosen = cg_backtracking.backtrack(loss_fn, [tf.constant([10.0])],
                                       [tf.constant(rows[:, None])], tf.constant(num_saved),
                                       unroll=unroll)
    assert int(chosen.index) == expected
    assert float(chosen.loss) == losses[expected]
    assert float(chosen.step[0][0]) == expected
    # Martens' walk: the last, then back while improving, plus the first worse one.
    walked = num_saved - expected + (1 if expected > 0 else 0)
    assert int(chosen.evaluations) == walked


@pytest.mark.parametrize("rho, accepted, factor", [
    (-1.0, True, 1.5), (0.1, True, 1.5), (0.25, True, 1.0), (0.5, True, 1.0),
    (0.75, True, 1.0), (0.9, True, 2 / 3), (float("nan"), True, 1.5), (0.9, False, 1.5),
])
def test_levenberg_marquardt_rule(rho, accepted, factor):
    new = damping.levenberg_marquardt(tf.constant(2.0), tf.constant(rho), tf.constant(accepted))
    assert float(new) == pytest.approx(2.0 * factor)


def test_reduction_ratio_of_a_null_step_is_zero():
    assert float(damping.reduction_ratio(tf.constant(0.0), tf.constant(0.0))) == 0.0
    assert float(damping.reduction_ratio(tf.constant(-1.0), tf.constant(-2.0))) == 0.5


def test_armijo_line_search_takes_the_largest_sufficient_step():
    # f(t) = (t - 0.3)^2 along d = 1 from t = 0: f0 = 0.09, slope = -0.6.
    def loss_fn(weights):
        return tf.reduce_sum((weights[0] - 0.3) ** 2)

    found = line_search.armijo(loss_fn, [tf.constant([0.0])], [tf.constant([1.0])],
                               tf.constant(0.09), tf.constant(-0.6), tf.constant(0.49))
    alphas = 0.8 ** np.arange(1, 61)
    ok = (alphas - 0.3) ** 2 <= 0.09 - 0.01 * alphas * 0.6
    assert float(found.step_length) == pytest.approx(alphas[np.argmax(ok)])
    assert int(found.evaluations) == np.argmax(ok) + 1
    none = line_search.armijo(loss_fn, [tf.constant([0.0])], [tf.constant([1.0])],
                              tf.constant(0.09), tf.constant(-0.6), tf.constant(0.49),
                              max_steps=2)
    assert float(none.step_length) == 0.0 and float(none.loss) == pytest.approx(0.09)


# A closure of half the batch records its pass; the whole batch after the train step's
# forward pass reuses that one (no pass of the preconditioner's own).
@pytest.mark.parametrize("fraction, size", [(0.5, 3), (1.0, 6)])
def test_preconditioner_matches_numpy_per_example_gradients(fraction, size):
    x, y, w = data(n=6)
    model = _linear()
    model.compile(HessianFree(), "mse")
    closure = kd.Closure(model, x, y, w, curvature_fraction=fraction)
    if fraction == 1.0:
        closure.forward_pass()
    W, b = (p.numpy().astype(np.float64) for p in closure.params)
    # Per-example loss l_n = w_n |x_n W + b - y_n|^2 / K on the leading examples.
    xs, ys, ws = (t[:size].astype(np.float64) for t in (x, y, w))
    resid = xs @ W + b - ys
    grad_W = 2 / 2 * ws[:, None, None] * xs[:, :, None] * resid[:, None, :]
    grad_b = 2 / 2 * ws[:, None] * resid
    squares = preconditioners.mean_squared_example_gradients(closure)
    np.testing.assert_allclose(squares[0], np.mean(grad_W**2, 0), rtol=1e-4)
    np.testing.assert_allclose(squares[1], np.mean(grad_b**2, 0), rtol=1e-4)
    v = [tf.ones_like(p) for p in closure.params]
    applied = preconditioners.martens_diagonal(squares, 0.5)(v)
    np.testing.assert_allclose(applied[1], (np.mean(grad_b**2, 0) + 0.5) ** -0.75, rtol=1e-4)


def _central_jacobian(fn, theta, eps=1e-6):
    return np.stack([(fn(theta + e) - fn(theta - e)).ravel() / (2 * eps)
                     for e in np.eye(theta.size) * eps], 1)


def test_structural_damping_product_matches_explicit_jacobians():
    model, rnn = rnn_ref._model()
    closure = kd.Closure(model, rnn_ref.X, rnn_ref.Y)
    params, v, theta = rnn_ref._point()
    closure.params = params

    def outputs(t):
        return rnn_ref._numpy_states(t) @ t[-4:-1].reshape(rnn_ref.N, 1) + t[-1:]

    jac_out = _central_jacobian(outputs, theta)
    jac_h = _central_jacobian(rnn_ref._numpy_states, theta)
    b, t = rnn_ref.B, rnn_ref.T
    model.compute_loss(rnn_ref.X, rnn_ref.Y, model(rnn_ref.X))  # builds the compiled loss
    weight = 0.7  # mu * lambda
    product = structural_damping.structural_ggn_vp(closure, [rnn], weight)(v)
    # mse over (B, T, 1): H_L = 2 / (B T) I; the state distance: I / B.
    dense = 2.0 / (b * t) * jac_out.T @ jac_out + weight / b * jac_h.T @ jac_h
    np.testing.assert_allclose(flat(product), dense @ flat(v), rtol=1e-4, atol=1e-5)
    plain = curvature_matvec(closure, "gauss_newton")(v)
    np.testing.assert_allclose(flat(plain), 2.0 / (b * t) * jac_out.T @ jac_out @ flat(v),
                               rtol=1e-4, atol=1e-5)


def test_structural_damping_trains_a_tiny_rnn_in_fit():
    model, rnn = rnn_ref._model()
    model.compile(HessianFree(structural_layers=[rnn.name], cg_max_iterations=5), "mse")
    history = model.fit(rnn_ref.X, rnn_ref.Y, batch_size=2, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert history["rejected_steps"] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="'nope'.*recurrent"):
        bad, _ = rnn_ref._model()
        bad.compile(HessianFree(structural_layers=["nope"], cg_max_iterations=2), "mse")
        bad.fit(rnn_ref.X, rnn_ref.Y, batch_size=2, epochs=1, verbose=0)


def test_hessian_option_stops_at_negative_curvature_and_takes_a_safe_step():
    """f(a, b) = (a b - 1)^2 at (1, 0.2): H is indefinite; CG's second direction has negative
    curvature, so the step is CG's first iterate, which decreases f."""
    model = kd.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False),
                           keras.layers.Dense(1, use_bias=False)])
    model.set_weights([np.array([[1.0]], "float32"), np.array([[0.2]], "float32")])
    model.compile(HessianFree(damping=1e-4, curvature="hessian", preconditioner=None,
                              adapt_damping=False), "mse", jit_compile=False)
    ones = np.ones((4, 1), "float32")
    history = model.fit(ones, ones, batch_size=4, epochs=1, verbose=0).history
    a, b = 1.0, 0.2
    g = 2 * (a * b - 1) * np.array([b, a])
    hessian = 2 * np.array([[b * b, 2 * a * b - 1], [2 * a * b - 1, a * a]])
    assert np.linalg.eigvalsh(hessian)[0] < 0
    p = -g
    expected = np.array([a, b]) + (g @ g) / (p @ hessian @ p + 1e-4 * p @ p) * p
    np.testing.assert_allclose(flat(model.get_weights()), expected, rtol=1e-4)
    assert history["cg_stop_reason"] == [float(solvers.NEGATIVE_CURVATURE)]
    assert history["cg_iterations"] == [1.0]
    assert (expected[0] * expected[1] - 1) ** 2 < (a * b - 1) ** 2


# --- Guard, state, saving, distribution ----------------------------------------------------


def test_non_finite_step_is_rejected_and_damping_grows():
    x, y, _ = data()
    y = y.copy()
    y[0, 0] = np.nan
    model = _linear()
    model.compile(HessianFree(damping=0.5, cg_max_iterations=4), "mse", jit_compile=False)
    before = model.get_weights()
    history = model.fit(x, y, batch_size=6, epochs=1, verbose=0).history
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert history["rejected_steps"] == [1.0]
    assert history["damping"] == [pytest.approx(0.75)]
    assert all(not np.any(v.numpy()) for v in model.optimizer.warm_start)


def _fitted(**kwargs):
    """Three HF steps (batches of 3) on a small tanh net."""
    x, y, w = data(n=9)
    keras.utils.set_random_seed(3)
    model = kd.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="tanh"),
                           keras.layers.Dense(2)])
    model.compile(HessianFree(cg_max_iterations=6, line_search_max_steps=4, **kwargs), "mse",
                  jit_compile=False)
    history = model.fit(x, y, sample_weight=w, batch_size=3, epochs=1, verbose=0).history
    return model, history


def test_keras_file_round_trip_keeps_state_and_continues_identically(tmp_path):
    x, y, _ = data(n=8)
    model, history = _fitted(damping=0.3)
    assert {"damping", "rho", "cg_iterations", "cg_stop_reason", "step_length", "step_norm",
            "loss_evaluations", "rejected_steps"} <= history.keys()
    assert float(model.optimizer.damping.value) != np.float32(0.3)
    assert any(np.any(v.numpy()) for v in model.optimizer.warm_start)
    path = os.path.join(tmp_path, "hf.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, HessianFree)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    # Same variables in the same order (warm-start names follow the auto-named layers).
    saved, restored = model.optimizer.variables, loaded.optimizer.variables
    assert [v.name for v in saved[:10]] == [v.name for v in restored[:10]]
    assert len(saved) == len(restored) == 14
    for a, b in zip(saved, restored):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.name)
    for m in (model, loaded):
        m.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_restores_damping_warm_start_and_counters(tmp_path):
    model, _ = _fitted(damping=0.3)
    fresh = _fitted(damping=0.3)[0]  # same variables, other values after a refit below
    fresh.optimizer.damping.assign(9.0)
    for w in fresh.optimizer.warm_start:
        w.assign(tf.zeros_like(w))
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
        os.path.join(tmp_path, "ckpt"))
    tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).read(prefix).assert_consumed()
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.name)
    assert float(fresh.optimizer.damping.value) != 9.0


def test_bad_arguments_name_the_value_and_the_fix():
    with pytest.raises(ValueError, match="`curvature`.*'newton'"):
        HessianFree(curvature="newton")
    with pytest.raises(ValueError, match="`damping`.*0.0"):
        HessianFree(damping=0.0)
    with pytest.raises(ValueError, match="damping_increase > 1"):
        HessianFree(damping_increase=0.9)
    with pytest.raises(ValueError, match="`warm_start_decay`.*1.5.*0.95"):
        HessianFree(warm_start_decay=1.5)
    with pytest.raises(ValueError, match="`preconditioner`.*'jacobi'"):
        HessianFree(preconditioner="jacobi")
    with pytest.raises(ValueError, match="`cg_gamma` must be > 1.*0.9"):
        HessianFree(cg_gamma=0.9)
    with pytest.raises(ValueError, match="curvature='gauss_newton'.*'hessian'"):
        HessianFree(curvature="hessian", structural_layers=["rnn"])


def _distributed_fit(strategy, init, x, y, w):
    with strategy.scope():
        keras.utils.set_random_seed(3)
        model = kd.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="tanh"),
                               keras.layers.Dense(2)])
        model.set_weights(init)
        model.compile(HessianFree(damping=0.5, cg_max_iterations=5, line_search_max_steps=3),
                      "mse", jit_compile=False)
    history = model.fit(x, y, sample_weight=w, batch_size=8, epochs=2, shuffle=False,
                        verbose=0).history
    return model, history


def test_two_replicas_match_one_device_with_optimizer_state(mirrored_strategy):
    x, y, w = data(n=16)
    keras.utils.set_random_seed(3)
    init = kd.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="tanh"),
                          keras.layers.Dense(2)]).get_weights()
    single, single_history = _distributed_fit(tf.distribute.get_strategy(), init, x, y, w)
    double, double_history = _distributed_fit(mirrored_strategy, init, x, y, w)
    for key in ("loss", "damping", "rho", "cg_iterations", "step_length", "rejected_steps"):
        np.testing.assert_allclose(double_history[key], single_history[key], rtol=1e-4,
                                   atol=1e-6, err_msg=key)
    for a, b in zip(double.get_weights(), single.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(double.optimizer.warm_start, single.optimizer.warm_start):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-5)


def _tanh_net(policy="float32"):
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(3)
        return kd.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="tanh"),
                              keras.layers.Dense(2)])
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("variant", ["jit_compile", "mixed_float16"])
def test_jit_compile_and_mixed_precision_give_the_float32_graph_steps(variant):
    x, y, w = data(n=8)
    results = []
    for policy, jit in (("float32", False),
                        ("mixed_float16" if variant == "mixed_float16" else "float32",
                         variant == "jit_compile")):
        model = _tanh_net(policy)
        model.compile(HessianFree(damping=0.5, cg_max_iterations=6, line_search_max_steps=4),
                      "mse", jit_compile=jit)
        history = model.fit(x, y, sample_weight=w, batch_size=4, epochs=1, shuffle=False,
                            verbose=0).history
        results.append((model, history))
    (reference, ref_history), (model, history) = results
    assert history["rejected_steps"] == [0.0]
    assert history["damping"][0] == pytest.approx(ref_history["damping"][0], rel=1e-5)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)  # XLA fusion / float32 closure
    assert not np.allclose(flat(reference.get_weights()), flat(_tanh_net().get_weights()))
