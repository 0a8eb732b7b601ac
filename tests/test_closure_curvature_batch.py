"""Closure: curvature sub-batch (dense references, 2 replicas == 1 device), the one forward pass
per step, and the input checks of closure optimizers."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from closure_reference import CountingIdentity, L2, data, flat, random_point, terms, tiny_model

import keras_diffusion as kd
from keras_diffusion.optimizers import AnnealedStep, ClosureOptimizer, GaussNewton

# --- Curvature sub-batch ---------------------------------------------------------------


@pytest.mark.parametrize("fraction, size", [(0.5, 3), (0.3, 2), (0.01, 1)])
def test_curvature_products_use_the_leading_sub_batch(fraction, size):
    x, y, w = data()
    model = tiny_model()
    model.compile(optimizer=GaussNewton(), loss="mse")
    closure = kd.Closure(model, x, y, w, curvature_fraction=fraction)
    W, b, params, v = random_point()
    loss, grad, _, _, _, _ = terms(W, b, x, y, w, L2)
    _, _, _, _, ggn, hessian = terms(W, b, x[:size], y[:size], w[:size], L2)
    # Loss and gradient: the whole batch; products: the mean loss of the sub-batch.
    np.testing.assert_allclose(closure.loss(params), loss, rtol=1e-5)
    np.testing.assert_allclose(flat(closure.gradient(params)), grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(flat(closure.ggn_vp(v, params)), ggn @ flat(v), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(flat(closure.hvp(v, params)), hessian @ flat(v), rtol=1e-4,
                               atol=1e-6)
    assert closure.curvature.x.shape[0] == size


def test_fisher_product_on_the_sub_batch_matches_dense_gauss_newton():
    x, y, _ = data()
    model = tiny_model(l2=0.0)
    model.compile(optimizer=GaussNewton(), loss="mse")
    closure = kd.Closure(model, x, y, curvature_fraction=0.5)
    v = [tf.constant(np.random.default_rng(2).normal(size=p.shape), "float32")
         for p in closure.params]
    W, b = (p.numpy() for p in closure.params)
    # mse over K = 2 outputs: H_L = 2 / (N K) I = I / N, the Gaussian Fisher with variance 1.
    _, _, _, _, ggn, _ = terms(W, b, x[:3], y[:3], np.ones(3), 0.0)
    np.testing.assert_allclose(flat(closure.fisher_vp(v, distribution="gaussian")),
                               ggn @ flat(v), rtol=1e-4, atol=1e-6)


def test_two_replicas_equal_one_device_on_the_union_of_sub_batches(mirrored_strategy):
    strategy = mirrored_strategy
    x, y, w = data(n=8)
    with strategy.scope():
        model = tiny_model()
        model.compile(optimizer=GaussNewton(), loss="mse")
    v = [tf.constant(np.random.default_rng(3).normal(size=p.shape), "float32")
         for p in model.trainable_weights]

    def shard(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[4 * ctx.replica_id_in_sync_group:][:4])
        )

    def products(x, y, w, fraction):
        closure = kd.Closure(model, x, y, w, curvature_fraction=fraction)
        return closure.ggn_vp(v), closure.hvp(v), closure.fisher_vp(v, distribution="gaussian")

    per_replica = strategy.run(products, args=(shard(x), shard(y), shard(w), 0.5))
    union = np.r_[0:2, 4:6]
    single = products(x[union], y[union], w[union], 1.0)  # no replica context: one device
    for got, want in zip(tf.nest.flatten(per_replica), tf.nest.flatten(single)):
        for copy in strategy.experimental_local_results(got):
            np.testing.assert_allclose(copy, want, rtol=1e-5, atol=1e-6)


def test_gauss_newton_trains_on_a_sub_batch_with_the_dense_step():
    x, y, w = data()
    model = tiny_model()
    W, b = (v.numpy().astype(np.float64) for v in model.trainable_weights)
    optimizer = GaussNewton(damping=0.1, cg_max_iterations=8, cg_tol=0.0, curvature_fraction=0.5)
    assert optimizer.get_config()["curvature_fraction"] == 0.5
    model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    model.fit(x, y, sample_weight=w, batch_size=6, epochs=1, shuffle=False, verbose=0)
    _, grad, _, _, _, _ = terms(W, b, x, y, w, L2)
    _, _, _, _, ggn, _ = terms(W, b, x[:3], y[:3], w[:3], L2)
    step = -np.linalg.solve(ggn + 0.1 * np.eye(8), grad)
    np.testing.assert_allclose(flat(model.get_weights()),
                               np.concatenate([W.ravel(), b]) + step, rtol=1e-4, atol=1e-5)


# --- One forward pass per step ---------------------------------------------------------



class _GradientDescent(ClosureOptimizer):
    def step(self, closure):
        loss, grads = closure.value_and_gradient()
        lr = tf.cast(self.learning_rate, loss.dtype)
        self.assign_if_finite(closure.variables,
                              [p - lr * g for p, g in zip(closure.params, grads)], [loss])
        return loss


def test_one_forward_pass_per_step_gives_the_gradient_step():
    x, y, w = data()
    counter = CountingIdentity()
    keras.utils.set_random_seed(1)
    model = kd.Sequential([keras.Input((3,)), counter, keras.layers.Dense(
        2, activation="tanh", kernel_regularizer=keras.regularizers.L2(L2))])
    W, b = (v.numpy().astype(np.float64) for v in model.trainable_weights)
    model.compile(optimizer=_GradientDescent(0.5), loss="mse", metrics=["mae"],
                  run_eagerly=True)
    history = model.fit(x, y, sample_weight=w, batch_size=6, epochs=2, verbose=0).history
    assert counter.calls == 1 + 2  # the symbolic build, then one forward pass per step
    loss, _, _, _, _, _ = terms(W, b, x, y, w, L2)
    np.testing.assert_allclose(flat(model.get_weights()), _second_step(W, b, x, y, w, 0.5),
                               rtol=1e-4, atol=1e-6)
    assert history["loss"][0] == pytest.approx(loss, rel=1e-5)  # predictions before the step
    out = np.tanh(x @ W + b)
    assert history["mae"][0] == pytest.approx(np.mean(np.abs(out - y)), rel=1e-5)


def _second_step(W, b, x, y, w, lr):
    theta = np.concatenate([W.ravel(), b])
    for _ in range(2):
        _, grad, _, _, _, _ = terms(theta[:6].reshape(3, 2), theta[6:], x, y, w, L2)
        theta = theta - lr * grad
    return theta


def test_mixed_precision_keeps_a_separate_float32_evaluation():
    x, y, _ = data()
    counter = CountingIdentity()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = kd.Sequential([keras.Input((3,)), counter, keras.layers.Dense(2)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(optimizer=_GradientDescent(0.1), loss="mse", run_eagerly=True)
    model.fit(x, y, batch_size=6, epochs=1, verbose=0)
    # The symbolic build, then the model's pass (metrics) and the float32 closure pass.
    assert counter.calls == 1 + 2


# --- Input checks ----------------------------------------------------------------------


def _fit(loss, model=None):
    x, y, _ = data()
    model = model or tiny_model()
    model.compile(optimizer=GaussNewton(), loss=loss, jit_compile=False)
    return model.fit(x, y, batch_size=6, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "loss, match",
    [
        ("mae", "'mean_absolute_error'.*piecewise linear.*from_logits=True"),
        (keras.losses.Hinge(), "'hinge'.*piecewise linear"),
        (keras.losses.CosineSimilarity(), "'cosine_similarity'.*not convex"),
        ("binary_crossentropy", "'binary_crossentropy' on probabilities.*from_logits=True"),
        (keras.losses.CategoricalCrossentropy(), "on probabilities"),
        ("kld", "'kl_divergence' on probabilities"),
    ],
)
def test_loss_without_gauss_newton_form_is_refused_at_the_first_step(loss, match):
    with pytest.raises(ValueError, match=match):
        _fit(loss)


def test_unknown_or_concave_loss_warns_and_logit_losses_pass():
    def concave(y_true, y_pred):
        return -keras.ops.mean(keras.ops.square(y_pred - y_true), axis=-1)

    with pytest.warns(UserWarning, match="'concave' has no known Gauss-Newton form.*convex"):
        _fit(concave)
    with pytest.warns(UserWarning, match="'huber'"):
        _fit(keras.losses.Huber())
    with warnings.catch_warnings():  # no warning for losses with a Gauss-Newton form
        warnings.simplefilter("error")
        _fit(keras.losses.BinaryCrossentropy(from_logits=True))
        _fit("mse")
        _fit(kd.losses.SequenceSquaredError())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: GaussNewton(damping=float("inf")), "`damping` must be a finite.*inf"),
        (lambda: GaussNewton(damping=float("nan")), "`damping`.*nan"),
        (lambda: GaussNewton(learning_rate=float("nan")), "`learning_rate`.*nan"),
        (lambda: GaussNewton(cg_tol=float("inf")), "`cg_tol`.*inf"),
        (lambda: GaussNewton(cg_max_iterations=2.5), "`cg_max_iterations`.*2.5"),
        (lambda: GaussNewton(curvature_fraction=0.0), "`curvature_fraction`.*0.0.*0.25"),
        (lambda: GaussNewton(curvature_fraction=1.5), "`curvature_fraction`"),
        (lambda: AnnealedStep(learning_rate=float("inf")), "`learning_rate`.*inf"),
        (lambda: kd.Closure(tiny_model(), np.ones((2, 3)), np.ones((2, 2)), curvature_fraction=-1),
         "`curvature_fraction`.*-1"),
    ],
)
def test_non_finite_hyperparameters_are_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
