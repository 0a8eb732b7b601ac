"""SaddleFreeNewton against dense numpy references (Pascanu 2014, thesis sec. 4.4-4.5)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_diffusion as kd
from keras_diffusion.optimizers import SaddleFreeNewton
from keras_diffusion.optimizers import saddle_free_basis as sfb
from keras_diffusion.optimizers import saddle_free_damping as sfd
from keras_diffusion.training import Closure
import closure_reference as ref


class SaddleLayer(keras.layers.Layer):
    """Weights ``(a, b)``; outputs ``a^2 - b^2`` (a saddle at 0) for every example."""

    def __init__(self, start, **kwargs):
        super().__init__(**kwargs)
        self.start = start

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=(2,), initializer=keras.initializers.Constant(self.start), name="w"
        )

    def call(self, x):
        return tf.zeros_like(x) + self.w[0] ** 2 - self.w[1] ** 2


def _output(y_true, y_pred):
    return tf.reduce_mean(y_pred, axis=-1)


def _saddle_run(matrix, steps=4, start=(0.1, 0.1)):
    model = kd.Sequential([keras.Input((1,)), SaddleLayer(start)])
    model.compile(
        optimizer=SaddleFreeNewton(
            mode="exact", matrix=matrix, damping=1e-3, damping_rule="fixed",
            line_search_steps=0,
        ),
        loss=_output,
    )
    zeros = np.zeros((1, 1), "float32")
    model.fit(zeros, zeros, epochs=steps, verbose=0)
    return model.get_weights()[0]


def test_newton_converges_to_the_saddle_and_saddle_free_newton_leaves_it():
    # H = diag(2, -2), g = (2a, -2b): Newton -(H + l)^-1 g maps b to b l / (l - 2) -> 0,
    # Saddle-Free Newton -(|H| + l)^-1 g maps b to b (4 + l) / (2 + l): it grows.
    a, b = 0.1, 0.1
    newton, free = _saddle_run("hessian"), _saddle_run("abs")
    l = 1e-3
    for _ in range(4):
        a, b = a * l / (2 + l), b * l / (l - 2)
    np.testing.assert_allclose(newton, [a, b], atol=1e-7)
    assert np.abs(newton).max() < 1e-9
    a, b = 0.1, 0.1
    for _ in range(4):
        a, b = a * l / (2 + l), b * (4 + l) / (2 + l)
    np.testing.assert_allclose(free, [a, b], rtol=1e-4, atol=1e-9)
    assert free[1] > 1.5  # 0.1 * 2^4: left the saddle


def _least_squares(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = (x @ rng.normal(size=(3, 1)) + 0.1 * rng.normal(size=(16, 1))).astype("float32")
    return x, y


def test_on_a_convex_quadratic_it_is_the_damped_newton_step():
    x, y = _least_squares()
    keras.utils.set_random_seed(0)
    model = kd.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    w0, b0 = model.get_weights()
    damping = 1e-4
    model.compile(
        optimizer=SaddleFreeNewton(
            mode="exact", damping=damping, damping_rule="fixed", line_search_steps=0
        ),
        loss="mse",
    )
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # mse = |X1 theta - y|^2 / n: H = 2 X1^T X1 / n (positive definite), so |H| = H.
    x1 = np.hstack([x, np.ones((16, 1))]).astype(np.float64)
    theta = np.concatenate([w0.ravel(), b0])
    g = 2 * x1.T @ (x1 @ theta - y[:, 0]) / 16
    h = 2 * x1.T @ x1 / 16
    newton = theta - np.linalg.solve(h + damping * np.eye(4), g)
    np.testing.assert_allclose(ref.flat(model.get_weights()), newton, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(newton, np.linalg.lstsq(x1, y[:, 0], rcond=None)[0], atol=1e-3)


def _tiny_closure(seed=5):
    x, y, w = ref.data()
    model = ref.tiny_model()
    model.compile(loss="mse")
    W, b, params, _ = ref.random_point(seed)
    model.set_weights([W, b])
    return model, Closure(model, x, y, w), ref.terms(W, b, x, y, w, ref.L2)


@pytest.mark.parametrize("mode", ["exact", "krylov"])
def test_abs_hessian_and_squared_matrices_against_numpy_eigh(mode):
    _, closure, (_, grad, _, _, _, hessian) = _tiny_closure()
    values, vectors = np.linalg.eigh(hessian)
    assert values[0] < 0 < values[-1]  # an indefinite point: |H| != H
    expected = {
        "abs": vectors @ np.diag(np.abs(values)) @ vectors.T,
        "squared": hessian @ hessian,
        "rescaled_squared": hessian @ hessian / np.abs(values).max(),
        "hessian": hessian,
    }
    grads = closure.gradient()
    for matrix, dense in expected.items():
        basis = sfb.curvature_basis(closure, grads, mode, matrix, num_steps=8)
        rows = basis.rows.numpy().astype(np.float64)
        np.testing.assert_allclose(rows @ rows.T, np.eye(8), atol=1e-4)
        rebuilt = rows.T @ np.diag(basis.eigenvalues.numpy()) @ rows
        np.testing.assert_allclose(rebuilt, dense, atol=2e-4, err_msg=matrix)
        np.testing.assert_allclose(np.sort(basis.ritz_values), values, atol=1e-4)


def test_rescaled_squared_fisher_matrix_in_the_full_krylov_space():
    _, closure, (_, _, _, _, _, hessian) = _tiny_closure()
    eye = np.eye(8, dtype=np.float32)
    fisher = np.stack([
        ref.flat(closure.fisher_vp(sfb.unflatten(tf.constant(e), closure.params), distribution="gaussian"))
        for e in eye
    ])
    basis = sfb.curvature_basis(
        closure, closure.gradient(), "krylov", "rescaled_squared_fisher", num_steps=8,
        fisher_distribution="gaussian",
    )
    rows = basis.rows.numpy()
    expected = hessian @ hessian / np.abs(np.linalg.eigvalsh(hessian)).max() + fisher
    np.testing.assert_allclose(rows.T @ np.diag(basis.eigenvalues) @ rows, expected, atol=2e-4)


def _one_step(**kwargs):
    model, closure, terms = _tiny_closure()
    x, y, w = ref.data()
    model.compile(optimizer=SaddleFreeNewton(**kwargs), loss="mse")
    model.fit(x, y, sample_weight=w, batch_size=6, epochs=1, shuffle=False, verbose=0)
    return model, terms


def test_krylov_mode_with_all_weights_equals_exact_mode():
    common = dict(damping=0.05, damping_rule="fixed", line_search_steps=0)
    exact, _ = _one_step(mode="exact", **common)
    krylov, _ = _one_step(mode="krylov", lanczos_num_steps=8, **common)
    np.testing.assert_allclose(
        ref.flat(krylov.get_weights()), ref.flat(exact.get_weights()), atol=1e-5
    )


def test_damping_search_picks_the_candidate_of_lowest_loss():
    model, (loss, grad, _, _, _, hessian) = _one_step(mode="exact")
    x, y, w = ref.data()
    W, b, _, _ = ref.random_point()
    theta = np.concatenate([W.ravel(), b]).astype(np.float64)
    values, vectors = np.linalg.eigh(hessian)
    losses = []
    for damping in sfd.DAMPING_CANDIDATES:
        step = -vectors @ ((vectors.T @ grad) / (np.abs(values) + damping))
        new = theta + step
        losses.append(ref.terms(new[:6].reshape(3, 2), new[6:], x, y, w, ref.L2)[0])
    best = int(np.argmin(losses))
    assert len(set(np.round(losses, 6))) == len(losses)  # the choice is not a tie
    optimizer = model.optimizer
    np.testing.assert_allclose(float(optimizer.damping.value), sfd.DAMPING_CANDIDATES[best])
    step = -vectors @ ((vectors.T @ grad) / (np.abs(values) + sfd.DAMPING_CANDIDATES[best]))
    np.testing.assert_allclose(ref.flat(model.get_weights()), theta + step, atol=1e-4)
    assert float(optimizer.step_length.value) == pytest.approx(np.linalg.norm(step), rel=1e-3)
    assert float(optimizer.ritz_min.value) == pytest.approx(values[0], abs=1e-4)
    assert float(optimizer.ritz_max.value) == pytest.approx(values[-1], abs=1e-4)


def test_levenberg_marquardt_rule_and_backtracking():
    damping = tf.constant(3.0)
    rho = tf.constant([0.9, 0.5, 0.1, float("nan")])
    np.testing.assert_allclose(
        sfd.levenberg_marquardt(damping, rho), [2.0, 3.0, 4.5, 4.5], rtol=1e-6
    )
    # f(t) = (t - 1)^2 along d = 4 from 0: alpha = 1, 1/2, 1/4 tried; 1/4 lands at t = 1.
    f = lambda step: (step - 1.0) ** 2  # noqa: E731
    for unroll in (False, True):
        alpha, loss = sfd.backtracking(
            f, tf.constant(4.0), tf.constant(1.0), tf.constant(-8.0), 1.0, 5, unroll
        )
        assert (float(alpha), float(loss)) == (0.25, 0.0)
    alpha, loss = sfd.backtracking(
        f, tf.constant(-4.0), tf.constant(1.0), tf.constant(-8.0), 1.0, 3, False
    )
    assert (float(alpha), float(loss)) == (0.0, 1.0)  # no decrease: no step


def test_levenberg_marquardt_mode_trains_and_adapts_the_damping():
    model, (loss, *_) = _one_step(mode="krylov", lanczos_num_steps=4, damping=3.0)
    optimizer = model.optimizer
    x, y, w = ref.data()
    new_loss = model.evaluate(x, y, sample_weight=w, verbose=0)
    assert new_loss < loss
    rho = float(optimizer.reduction_ratio.value)
    expected = 2.0 if rho > 0.75 else (3.0 if rho >= 0.25 else 4.5)
    assert float(optimizer.damping.value) == pytest.approx(expected)


def test_non_finite_loss_is_rejected_and_counted():
    model, _, _ = _tiny_closure()
    before = model.get_weights()
    x, y, w = ref.data()
    x[0, 0] = np.nan
    model.compile(optimizer=SaddleFreeNewton(mode="exact"), loss="mse")
    model.fit(x, y, batch_size=6, epochs=2, verbose=0)
    assert int(model.optimizer.rejected_steps.value) == 2
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_keras_round_trip_keeps_config_and_state(tmp_path):
    model, _ = _one_step(mode="krylov", lanczos_num_steps=5, damping=2.0, matrix="squared")
    path = str(tmp_path / "sfn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    optimizer = loaded.optimizer
    assert isinstance(optimizer, SaddleFreeNewton)
    assert optimizer.get_config() == model.optimizer.get_config()
    assert optimizer.get_config()["damping"] == 2.0
    for name, variable in model.optimizer.diagnostics.items():
        assert float(optimizer.diagnostics[name].value) == float(variable.value), name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="dense"), "`mode`.*'dense'"),
        (dict(matrix="fisher"), "`matrix`.*'fisher'"),
        (dict(mode="exact", matrix="rescaled_squared_fisher"), "mode='krylov'"),
        (dict(damping=0.0), "`damping`.*0.0"),
        (dict(damping_candidates=()), "damping_candidates is empty"),
        (dict(damping_candidates=(1.0, -1.0)), "damping_candidates entry.*-1.0"),
        (dict(lanczos_num_steps=0), "`lanczos_num_steps`"),
        (dict(line_search_steps=-1), "`line_search_steps`"),
        (dict(damping_rule="trust"), "`damping_rule`.*'trust'"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SaddleFreeNewton(**kwargs)


def test_too_many_lanczos_steps_names_the_limit():
    model, _, _ = _tiny_closure()
    x, y, w = ref.data()
    model.compile(optimizer=SaddleFreeNewton(lanczos_num_steps=9), loss="mse")
    with pytest.raises(ValueError, match="lanczos_num_steps=9 exceeds.*8"):
        model.fit(x, y, epochs=1, verbose=0)


class _Kink(keras.layers.Layer):
    """Outputs ``|w|^1.5 + w`` at ``w = 0``: loss and gradient finite, curvature not."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(1,), initializer="zeros")

    def call(self, x):
        return x * 0.0 + tf.pow(tf.abs(self.w), 1.5) + self.w


def test_non_finite_curvature_with_a_finite_loss_is_rejected():
    x, y = np.zeros((2, 1), "float32"), np.zeros((2, 1), "float32")
    for mode in ("exact", "krylov"):
        model = kd.Sequential([keras.Input((1,)), _Kink()])
        model.compile(optimizer=SaddleFreeNewton(mode=mode, lanczos_num_steps=1), loss=_output)
        closure = Closure(model, x, y)
        loss, grads = closure.value_and_gradient()
        assert np.isfinite(loss) and np.isfinite(grads[0]).all()
        assert not np.isfinite(closure.hvp(grads)[0]).all()
        model.fit(x, y, epochs=1, verbose=0)
        assert int(model.optimizer.rejected_steps.value) == 1, mode
        assert model.get_weights()[0][0] == 0.0


def _train_replicated(strategy, init, x, y):
    with strategy.scope():
        model = kd.Sequential(
            [keras.Input((3,)), keras.layers.Dense(3, "tanh"), keras.layers.Dense(2)]
        )
        model.set_weights(init)
        model.compile(
            optimizer=SaddleFreeNewton(lanczos_num_steps=3, line_search_steps=2),
            loss="mse", jit_compile=False,
        )
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return model, history.history


def test_two_replicas_match_one_device(mirrored_strategy):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    keras.utils.set_random_seed(0)
    init = kd.Sequential(
        [keras.Input((3,)), keras.layers.Dense(3, "tanh"), keras.layers.Dense(2)]
    ).get_weights()
    single, single_history = _train_replicated(tf.distribute.get_strategy(), init, x, y)
    double, double_history = _train_replicated(mirrored_strategy, init, x, y)
    for key in ("loss", "damping", "ritz_min", "ritz_max", "step_length", "rejected_steps"):
        np.testing.assert_allclose(double_history[key], single_history[key], rtol=1e-4, atol=1e-6)
    assert single_history["step_length"][-1] > 0
    for a, b in zip(double.get_weights(), single.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_mixed_precision_under_jit_equals_float32():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    weights = []
    for policy in ("float32", "mixed_float16"):
        keras.config.set_dtype_policy(policy)
        try:
            keras.utils.set_random_seed(0)
            model = kd.Sequential(
                [keras.Input((3,)), keras.layers.Dense(4, "tanh"), keras.layers.Dense(1)]
            )
            model.compile(
                optimizer=SaddleFreeNewton(lanczos_num_steps=4), loss="mse", jit_compile=True
            )
            history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
            assert history["rejected_steps"] == [0.0] and history["step_length"][0] > 0
            weights.append(ref.flat(model.get_weights()))
        finally:
            keras.config.set_dtype_policy("float32")
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-4, atol=1e-5)
