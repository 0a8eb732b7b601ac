"""Gradient-norm clipping (Pascanu thesis sec. 5.7, Algorithm 5) with the deep-transition
cells: Keras's ``global_clipnorm`` rescales the whole gradient to the threshold."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_diffusion import regularizers
from keras_diffusion.layers.deep_output import DeepOutput
from keras_diffusion.layers.deep_transition import DeepTransitionRNN, DeepTransitionRNNCell

RNG = np.random.default_rng(2)
X = RNG.normal(size=(4, 6, 3)).astype("float32")
Y = (10 * RNG.normal(size=(4, 6, 2))).astype("float32")


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    large = keras.initializers.Orthogonal(2.0, seed=seed)  # large gradients to clip
    cell = DeepTransitionRNNCell(5, [4], shortcut=True, recurrent_initializer=large)
    layer = DeepTransitionRNN(cell, return_sequences=True)
    inputs = keras.Input((6, 3))
    return keras.Model(inputs, keras.layers.Dense(2)(DeepOutput([4])(layer(inputs)))), layer


def _gradient(model):
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(Y, model(X))
    return [np.asarray(g) for g in tape.gradient(loss, model.trainable_variables)]


def _clip(grads, threshold):
    norm = np.sqrt(sum((g.astype("float64") ** 2).sum() for g in grads))
    return [g * min(1.0, threshold / norm) for g in grads], norm


@pytest.mark.parametrize("jit", [False, True])
def test_sgd_step_is_rescaled_to_the_threshold(jit):
    model, _ = _model()
    grads = _gradient(model)
    clipped, norm = _clip(grads, 0.5)
    assert norm > 0.5 * 4  # the threshold is active
    before = [np.asarray(v) for v in model.trainable_variables]
    model.compile(keras.optimizers.SGD(0.1, global_clipnorm=0.5), loss="mse", jit_compile=jit)
    model.train_on_batch(X, Y)
    step = [b - np.asarray(v) for b, v in zip(before, model.trainable_variables)]
    assert np.sqrt(sum((s**2).sum() for s in step)) == pytest.approx(0.1 * 0.5, rel=1e-4)
    for s, c in zip(step, clipped):
        np.testing.assert_allclose(s, 0.1 * c, rtol=2e-3, atol=1e-6)


def test_small_gradients_are_not_changed():
    model, _ = _model()
    grads = _gradient(model)
    _, norm = _clip(grads, 1.0)
    before = [np.asarray(v) for v in model.trainable_variables]
    model.compile(keras.optimizers.SGD(0.01, global_clipnorm=float(10 * norm)), loss="mse")
    model.train_on_batch(X, Y)
    for b, v, g in zip(before, model.trainable_variables, grads):
        np.testing.assert_allclose(np.asarray(v), b - 0.01 * g, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("make", [keras.optimizers.Adam, keras.optimizers.RMSprop])
def test_adaptive_optimizers_see_the_clipped_gradient(make):
    clipped_model, _ = _model()
    reference, _ = _model()
    clipped, _ = _clip(_gradient(reference), 0.3)
    clipped_model.compile(make(0.01, global_clipnorm=0.3), loss="mse")
    clipped_model.train_on_batch(X, Y)
    optimizer = make(0.01)
    optimizer.apply([tf.constant(c, "float32") for c in clipped], reference.trainable_variables)
    for a, b in zip(clipped_model.trainable_variables, reference.trainable_variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_clipping_applies_to_loss_plus_omega_gradient():
    model, layer = _model()
    reference, ref_layer = _model()
    unclipped = regularizers.NormPreservingModel(reference, ref_layer, weight=2.0)
    unclipped.compile(keras.optimizers.SGD(1.0), loss="mse")
    before = [np.asarray(v) for v in reference.trainable_variables]
    unclipped.train_on_batch(X, Y)
    total = [b - np.asarray(v) for b, v in zip(before, reference.trainable_variables)]
    clipped, norm = _clip(total, 0.2)
    assert norm > 0.2
    wrapped = regularizers.NormPreservingModel(model, layer, weight=2.0)
    wrapped.compile(keras.optimizers.SGD(1.0, global_clipnorm=0.2), loss="mse")
    wrapped.train_on_batch(X, Y)
    for b, v, c in zip(before, model.trainable_variables, clipped):
        np.testing.assert_allclose(b - np.asarray(v), c, rtol=2e-3, atol=1e-6)
