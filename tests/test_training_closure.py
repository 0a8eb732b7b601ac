"""Closure training: kd.Model/Sequential, Closure, ClosureOptimizer and GaussNewton."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from closure_reference import L2, data, flat, forward, random_point, terms, tiny_model

import keras_diffusion as kd
from keras_diffusion.optimizers import ClosureOptimizer, GaussNewton

# --- Ordinary optimizers: exactly keras.Model -------------------------------------------


def _mlp(inputs):
    h = keras.layers.Dense(4, activation="tanh")(inputs)
    return keras.layers.Dense(2)(h)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_plain_optimizers_match_keras_model(optimizer):
    x, y, w = data(n=12)
    histories, weights = [], []
    for cls in (keras.Model, kd.Model):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((3,))
        model = cls(inputs, _mlp(inputs))
        opt = (
            keras.optimizers.SGD(0.1, momentum=0.9)
            if optimizer == "sgd"
            else keras.optimizers.Adam(0.01)
        )
        model.compile(optimizer=opt, loss="mse", metrics=["mae"], jit_compile=False)
        h = model.fit(x, y, sample_weight=w, batch_size=4, epochs=2, shuffle=False, verbose=0)
        histories.append(h.history)
        weights.append(model.get_weights())
    assert isinstance(model, kd.Model) and isinstance(model, keras.Model)
    assert histories[0] == histories[1]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


# --- Closure values against explicit computations --------------------------------------


def test_closure_matches_dense_reference():
    x, y, w = data()
    model = tiny_model()
    model.compile(optimizer=GaussNewton(), loss="mse")
    closure = kd.Closure(model, x, y, w)
    # Evaluate away from the model's weights: the closure substitutes them.
    W, b, params, v = random_point()
    loss, grad, _, _, ggn, hessian = terms(W, b, x, y, w, L2)

    np.testing.assert_allclose(closure.loss(params), loss, rtol=1e-5)
    np.testing.assert_allclose(flat(closure.gradient(params)), grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(closure.outputs(params), forward(W, b, x), rtol=1e-5)
    np.testing.assert_allclose(
        closure.regularization(params), L2 * np.sum(W.astype(np.float64) ** 2), rtol=1e-5
    )
    assert closure.loss_hessian() is not None  # analytic squared-error Hessian
    np.testing.assert_allclose(
        flat(closure.ggn_vp(v, params)), ggn @ flat(v), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        flat(closure.hvp(v, params)), hessian @ flat(v), rtol=1e-4, atol=1e-6
    )
    # At the default params (the model's weights) the closure is the compiled Keras loss.
    keras_loss = model.compute_loss(x, y, model(x), sample_weight=w)
    np.testing.assert_allclose(closure.loss(), keras_loss, rtol=1e-6)


class _ActivityPenalty(keras.layers.Layer):
    """Identity that adds ``rate * mean(x^2)`` with ``add_loss``."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, x):
        self.add_loss(self.rate * tf.reduce_mean(x**2))
        return x


def test_closure_multi_output_add_loss_and_sample_weights():
    x, y, w = data(n=5)
    inputs = keras.Input((3,))
    keras.utils.set_random_seed(2)
    hidden = keras.layers.Dense(
        2, activation="tanh", kernel_regularizer=keras.regularizers.L2(L2), name="hidden"
    )(inputs)
    hidden = _ActivityPenalty(0.3)(hidden)
    out_a = keras.layers.Dense(1, name="a")(hidden)
    out_b = keras.layers.Dense(2, name="b")(hidden)
    model = kd.Model(inputs, [out_a, out_b])
    model.compile(
        optimizer=GaussNewton(),
        loss=["mse", "mae"],
        loss_weights=[1.0, 0.5],
        metrics=[["mae"], ["mse"]],
        jit_compile=False,
    )
    ya, yb = y[:, :1], np.roll(y, 1, axis=1)
    model.evaluate(x, [ya, yb], verbose=0)  # builds the compiled loss
    closure = kd.Closure(model, x, [ya, yb], w)
    rng = np.random.default_rng(7)
    params = [rng.normal(size=p.shape).astype("float32") for p in model.trainable_weights]
    names = [v.path for v in model.trainable_weights]
    lookup = dict(zip(names, params))
    Wh, bh, Wa, ba, Wb, bb = (
        lookup[f"{layer}/{kind}"] for layer in ("hidden", "a", "b") for kind in ("kernel", "bias")
    )

    h = np.tanh(x @ Wh + bh)
    pred_a, pred_b = h @ Wa + ba, h @ Wb + bb
    mse = np.sum(w * np.mean((pred_a - ya) ** 2, axis=1)) / len(x)
    mae = np.sum(w * np.mean(np.abs(pred_b - yb), axis=1)) / len(x)
    expected = mse + 0.5 * mae + 0.3 * np.mean(h**2) + L2 * np.sum(Wh**2)

    tensors = [tf.constant(p) for p in params]
    out_a_c, out_b_c = closure.outputs(tensors)
    np.testing.assert_allclose(out_a_c, pred_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_b_c, pred_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(closure.loss(tensors), expected, rtol=1e-5)
    np.testing.assert_allclose(
        closure.loss_from_outputs([tf.constant(pred_a), tf.constant(pred_b)]),
        mse + 0.5 * mae,
        rtol=1e-5,
    )
    assert closure.loss_hessian() is None  # multi-output: generic output Hessian
    # Gradient against Keras' own loss on the real variables set to the same values.
    model.set_weights([params[names.index(v.path)] for v in model.weights])
    with tf.GradientTape() as tape:
        keras_loss = model.compute_loss(x, [ya, yb], model(x, training=True), w)
    expected_grad = tape.gradient(keras_loss, model.trainable_variables)
    for got, want in zip(closure.gradient(tensors), expected_grad):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The closure never touched the metrics: evaluation/training still start from zero.
    with pytest.warns(UserWarning, match="'mean_absolute_error' is piecewise linear"):
        history = model.fit(x, [ya, yb], sample_weight=w, batch_size=5, epochs=1, verbose=0)
    assert {"loss", "a_loss", "b_loss", "a_mae", "b_mse"} <= set(history.history)
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)


# --- GaussNewton ------------------------------------------------------------------------


def test_gauss_newton_step_matches_dense_solve():
    x, y, w = data()
    damping = 0.1
    model = tiny_model()
    W, b = (v.numpy().astype(np.float64) for v in model.trainable_weights)
    model.compile(
        optimizer=GaussNewton(damping=damping, cg_max_iterations=8, cg_tol=0.0),
        loss="mse",
        jit_compile=False,
    )
    model.fit(x, y, sample_weight=w, batch_size=6, epochs=1, verbose=0)
    _, grad, _, _, ggn, _ = terms(W, b, x, y, w, L2)
    step = -np.linalg.solve(ggn + damping * np.eye(8), grad)
    expected = np.concatenate([W.ravel(), b]) + step
    np.testing.assert_allclose(flat(model.get_weights()), expected, rtol=1e-4, atol=1e-5)
    assert int(model.optimizer.iterations) == 1


def test_gauss_newton_fits_a_regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = np.sin(x @ np.array([[1.0], [-0.5], [0.3]], np.float32))
    keras.utils.set_random_seed(0)
    model = kd.Sequential(
        [keras.Input((3,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )
    model.compile(
        optimizer=GaussNewton(damping=1e-3, cg_max_iterations=15), loss="mse", jit_compile=False
    )
    losses = model.fit(x, y, batch_size=32, epochs=6, verbose=0).history["loss"]
    assert losses[-1] < 1e-2 * losses[0], losses


@pytest.mark.parametrize("curvature_fraction", [1.0, 0.5])
def test_jit_compiled_train_step_matches_graph(curvature_fraction):
    x, y, w = data(n=8)
    weights = []
    for jit in (False, True):
        model = tiny_model()
        optimizer = GaussNewton(
            damping=0.1, cg_max_iterations=8, curvature_fraction=curvature_fraction
        )
        model.compile(optimizer=optimizer, loss="mse", jit_compile=jit)
        model.fit(x, y, sample_weight=w, batch_size=4, epochs=1, shuffle=False, verbose=0)
        weights.append(flat(model.get_weights()))
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-3, atol=1e-4)  # XLA fusion


def test_closure_optimizer_in_plain_keras_model_names_the_fix():
    x, y, _ = data()
    model = tiny_model(cls=keras.Sequential)
    model.compile(optimizer=GaussNewton(), loss="mse", jit_compile=False)
    with pytest.raises(TypeError, match=r"keras_diffusion\.Model.*ClosureTrainingMixin"):
        model.fit(x, y, verbose=0)


def test_non_finite_update_is_rejected_and_counted():
    x, y, _ = data()
    y[0, 0] = np.nan
    model = tiny_model()
    before = model.get_weights()
    model.compile(optimizer=GaussNewton(), loss="mse", jit_compile=False)
    history = model.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    assert history.history["rejected_steps"] == [1.0]  # the NaN batch only
    assert int(model.optimizer.rejected_steps.value) == 1
    assert int(model.optimizer.iterations) == 2
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert all(changed)  # the finite second batch was applied
    assert all(np.all(np.isfinite(v)) for v in model.get_weights())


def test_gauss_newton_rejects_bad_arguments():
    with pytest.raises(ValueError, match="damping > 0"):
        GaussNewton(damping=0.0)
    with pytest.raises(ValueError, match="cg_max_iterations"):
        GaussNewton(cg_max_iterations=0)
    with pytest.raises(ValueError, match="clipnorm"):
        GaussNewton(clipnorm=1.0)

    class NoStep(ClosureOptimizer):
        pass

    with pytest.raises(NotImplementedError, match="step"):
        NoStep().step(None)


# --- Non-trainable state, subclassing, serialization ------------------------------------


def test_batchnorm_updated_once_per_step_and_closure_deterministic():
    x, y, _ = data(n=8)
    stats = []
    for cls, opt in ((keras.Sequential, keras.optimizers.SGD(0.0)), (kd.Sequential, GaussNewton())):
        keras.utils.set_random_seed(4)
        model = cls(
            [
                keras.Input((3,)),
                keras.layers.Dense(4),
                keras.layers.BatchNormalization(),
                keras.layers.Dropout(0.5),
                keras.layers.Dense(2),
            ]
        )
        model.compile(optimizer=opt, loss="mse", jit_compile=False)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        stats.append([v.numpy() for v in model.layers[1].non_trainable_weights])
    for a, b in zip(*stats):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    closure = kd.Closure(model, x, y)
    seeds = [v.numpy() for v in model.non_trainable_weights]
    np.testing.assert_array_equal(closure.loss(), closure.loss())  # same dropout mask
    for a, b in zip(seeds, [v.numpy() for v in model.non_trainable_weights]):
        np.testing.assert_array_equal(a, b)  # evaluating changes no state


class MixinNet(kd.ClosureTrainingMixin, keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(6, activation="tanh")
        self.out = keras.layers.Dense(2)

    def call(self, x):
        return self.out(self.hidden(x))


def test_subclassed_model_with_mixin_trains():
    x, _, _ = data(n=16)
    y = np.tanh(x @ np.array([[1.0, 0.2], [-0.5, 0.4], [0.3, -1.0]], np.float32))
    keras.utils.set_random_seed(0)
    model = MixinNet()
    model.compile(optimizer=GaussNewton(damping=0.1), loss="mse", jit_compile=False)
    losses = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses


def test_keras_file_round_trip(tmp_path):
    x, y, _ = data()
    model = tiny_model()
    model.compile(
        optimizer=GaussNewton(damping=0.2, cg_max_iterations=7, cg_tol=1e-3),
        loss="mse",
        jit_compile=False,
    )
    model.fit(x, y, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is kd.Sequential
    assert isinstance(loaded.optimizer, GaussNewton)
    config = loaded.optimizer.get_config()
    assert (config["damping"], config["cg_max_iterations"], config["cg_tol"]) == (0.2, 7, 1e-3)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    inputs = keras.Input((3,))
    functional = kd.Model(inputs, keras.layers.Dense(1)(inputs))
    functional.save(path)
    assert type(keras.saving.load_model(path)) is kd.Model


# --- Mixed precision: closure products in float32 --------------------------------------


def _mixed_and_float32(policy):
    """A Dense-tanh kd.Sequential under ``policy`` and its float32 twin (same weights)."""

    def build():
        return kd.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(
                    4, activation="tanh", kernel_regularizer=keras.regularizers.L2(L2)
                ),
                keras.layers.Dense(2),
            ]
        )

    keras.utils.set_random_seed(7)
    keras.mixed_precision.set_global_policy(policy)
    try:
        mixed = build()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    reference = build()
    reference.set_weights(mixed.get_weights())
    assert mixed.dtype_policy.name == policy and mixed.layers[0].compute_dtype != "float32"
    assert reference.layers[0].compute_dtype == "float32"
    for model in (mixed, reference):
        model.compile(optimizer=GaussNewton(damping=0.1, cg_max_iterations=5), loss="mse")
    return mixed, reference


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_closure_matches_float32(policy):
    x, y, w = data(n=8)
    mixed, reference = _mixed_and_float32(policy)
    closures = [kd.Closure(m, x, y, w) for m in (mixed, reference)]
    v = [
        tf.constant(np.random.default_rng(2).normal(size=p.shape), "float32")
        for p in closures[1].params
    ]
    results = []
    for closure in closures:
        assert closure.outputs().dtype == tf.float32
        results.append(
            {
                "loss": closure.loss().numpy(),
                "gradient": flat(closure.gradient()),
                "hvp": flat(closure.hvp(v)),
                "ggn_vp": flat(closure.ggn_vp(v)),
            }
        )
    for key in results[1]:
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-5, err_msg=key)
    # Without the float32 evaluation the half-precision model is far from the reference.
    half = keras.ops.convert_to_numpy(mixed(x)).astype("float32")
    assert mixed.layers[-1].compute_dtype != "float32"
    assert np.max(np.abs(half - closures[1].outputs().numpy())) > 1e-4


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_gauss_newton_step_matches_float32(policy):
    x, y, w = data(n=8)
    mixed, reference = _mixed_and_float32(policy)
    histories = [
        m.fit(x, y, sample_weight=w, batch_size=8, epochs=1, verbose=0)
        for m in (mixed, reference)
    ]
    assert histories[0].history["rejected_steps"] == [0.0]
    if policy == "mixed_float16":  # compile wrapped it; the train step unwraps it
        assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
        assert isinstance(mixed.optimizer.inner_optimizer, GaussNewton)
    for a, b in zip(mixed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The step moved the weights (the comparison is not trivially of unchanged weights).
    moved = kd.Closure(reference, x, y, w).loss().numpy()
    assert moved < float(np.asarray(histories[1].history["loss"][0]))
