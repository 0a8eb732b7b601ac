"""Analytic output Hessians of Keras losses against nested-tape Hessians."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from dense_blocks import dense_hessian

from keras_diffusion import curvature
from keras_diffusion.curvature import loss_hessians

F64 = "float64"


def dense_operator(op, outputs):
    """Dense matrix of ``v -> op(outputs, v)`` over the flattened output space."""
    size = int(np.prod(outputs.shape))
    cols = [np.ravel(op(outputs, tf.reshape(tf.constant(e), outputs.shape))) for e in np.eye(size)]
    return np.stack(cols, axis=1)


def _targets(kind, shape, rng):
    if kind == "sparse":
        return tf.constant(rng.integers(0, shape[-1], size=shape[:-1]))
    y = rng.uniform(size=shape)
    if kind == "categorical":
        y = y / y.sum(-1, keepdims=True)
    return tf.constant(y)


LOSSES = {
    "mse": lambda **kw: keras.losses.MeanSquaredError(dtype=F64, **kw),
    "binary": lambda **kw: keras.losses.BinaryCrossentropy(from_logits=True, dtype=F64, **kw),
    "categorical": lambda **kw: keras.losses.CategoricalCrossentropy(
        from_logits=True, dtype=F64, **kw
    ),
    "sparse": lambda **kw: keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, dtype=F64, **kw
    ),
}


@pytest.mark.parametrize("kind", sorted(LOSSES))
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight"])
@pytest.mark.parametrize(
    "shape,weight_shape", [((4, 3), None), ((4, 3), (4,)), ((2, 3, 3), (2, 1))]
)
def test_analytic_hessian_matches_keras_loss(kind, reduction, shape, weight_shape):
    rng = np.random.default_rng(0)
    outputs = tf.constant(rng.normal(size=shape))
    y = _targets(kind, shape, rng)
    weights = None if weight_shape is None else tf.constant(rng.uniform(0.5, 2, size=weight_shape))
    loss = LOSSES[kind](reduction=reduction)
    expected = dense_hessian(lambda o: loss(y, o, sample_weight=weights), outputs)
    h = curvature.from_keras_loss(loss, y_true=y, sample_weight=weights, loss_weight=0.7)
    np.testing.assert_allclose(dense_operator(h, outputs), 0.7 * expected, atol=1e-12)
    assert np.linalg.eigvalsh(expected).min() > -1e-12  # matching losses are PSD


@pytest.mark.parametrize("name", ["mse", "mean_squared_error"])
def test_string_names(name):
    outputs = tf.constant(np.random.default_rng(1).normal(size=(3, 2)))
    expected = dense_hessian(lambda o: keras.losses.get(name)(tf.zeros_like(o), o), outputs)
    expected = expected / 3  # keras.losses.get(name) is the unreduced function; sum over 3
    h = curvature.from_keras_loss(name)
    np.testing.assert_allclose(dense_operator(h, outputs), expected, atol=1e-12)


@pytest.mark.parametrize(
    "kind,keras_kind",
    [
        ("sigmoid_cross_entropy", "binary"),
        ("softmax_cross_entropy", "categorical"),
        ("sparse_softmax_cross_entropy", "sparse"),
    ],
)
def test_logit_kind_names(kind, keras_kind):
    rng = np.random.default_rng(2)
    outputs = tf.constant(rng.normal(size=(3, 4)))
    y = _targets(keras_kind, (3, 4), rng)
    expected = dense_hessian(lambda o: LOSSES[keras_kind]()(y, o), outputs)
    got = dense_operator(curvature.from_keras_loss(kind), outputs)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_replica_scaling_under_mirrored_strategy(mirrored_strategy):
    strategy = mirrored_strategy
    outputs = tf.constant(np.random.default_rng(3).normal(size=(4, 3)))
    labels = tf.constant([0, 1, 2, 0])
    loss = LOSSES["sparse"]()

    def replica_fn():
        h = curvature.from_keras_loss(loss, y_true=labels)
        u = tf.ones_like(outputs)
        with tf.GradientTape() as outer:
            outer.watch(outputs)
            with tf.GradientTape() as inner:
                inner.watch(outputs)
                value = loss(labels, outputs)
            g = inner.gradient(value, outputs)
        return h(outputs, u), outer.gradient(g, outputs, output_gradients=u)

    analytic, autodiff = strategy.run(replica_fn)
    for a, b in zip(strategy.experimental_local_results(analytic),
                    strategy.experimental_local_results(autodiff)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    np.testing.assert_allclose(
        strategy.experimental_local_results(analytic)[0],
        curvature.from_keras_loss(loss, y_true=labels)(outputs, tf.ones_like(outputs)) / 2,
        atol=1e-12,
    )


def test_categorical_crossentropy_on_probabilities_is_indefinite_so_rejected():
    probs = tf.constant([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], F64)
    y = tf.constant([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], F64)
    loss = keras.losses.CategoricalCrossentropy(dtype=F64)
    assert np.linalg.eigvalsh(dense_hessian(lambda p: loss(y, p), probs)).min() < -0.1
    for bad in (
        loss,
        keras.losses.BinaryCrossentropy(),
        keras.losses.SparseCategoricalCrossentropy(),
        "categorical_crossentropy",
        "binary_crossentropy",
        "sparse_categorical_crossentropy",
    ):
        with pytest.raises(ValueError, match="from_logits=False"):
            curvature.from_keras_loss(bad)


def test_unsupported_losses_raise_clear_errors():
    with pytest.raises(ValueError, match="No analytic output Hessian"):
        curvature.from_keras_loss(keras.losses.Huber())
    with pytest.raises(ValueError, match="No analytic output Hessian"):
        curvature.from_keras_loss("hinge")
    with pytest.raises(ValueError, match="axis=1"):
        curvature.from_keras_loss(keras.losses.CategoricalCrossentropy(from_logits=True, axis=1))
    with pytest.raises(ValueError, match="ignore_class"):
        curvature.from_keras_loss(
            keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
        )
    with pytest.raises(ValueError, match="reduction must be one of"):
        curvature.from_keras_loss(keras.losses.MeanSquaredError(reduction=None))
    with pytest.raises(ValueError, match="kind must be one of"):
        loss_hessians.LossHessian("hinge")
    with pytest.raises(ValueError, match="distribution must be one of"):
        curvature.OutputFisher("poisson")
    with pytest.raises(ValueError, match="variance must be > 0"):
        curvature.OutputFisher("gaussian", variance=0.0)
