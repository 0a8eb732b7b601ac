"""Gradient clipping (Pascanu thesis sec. 5.7, Algorithm 5) combined with this package.

Keras's own ``global_clipnorm`` / ``clipvalue`` are Keras's to test; here: the gradient of the
loss plus the norm-preserving regularizer Omega is clipped as one (``NormPreservingModel``),
``AnnealedStep`` normalizes the clipped gradient (Mobahi 2016, sec. 5.2) and still rejects a
non-finite one, and the closure optimizers refuse clipping options they cannot honour.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_diffusion import regularizers
from keras_diffusion.layers.deep_output import DeepOutput
from keras_diffusion.layers.deep_transition import DeepTransitionRNN, DeepTransitionRNNCell
from keras_diffusion.optimizers import AnnealedStep, GaussNewton

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
    return [np.asarray(g, "float64") for g in tape.gradient(loss, model.trainable_variables)]


def _global_norm(arrays):
    return np.sqrt(sum((a.astype("float64") ** 2).sum() for a in arrays))


def _clip(grads, threshold):
    norm = _global_norm(grads)
    return [g * min(1.0, threshold / norm) for g in grads], norm


def _step_of(model, optimizer, jit=False):
    """The change of every weight after one ``train_on_batch`` with ``optimizer``."""
    before = [np.asarray(v, "float64") for v in model.trainable_variables]
    model.compile(optimizer, loss="mse", jit_compile=jit)
    model.train_on_batch(X, Y)
    return [np.asarray(v, "float64") - b for b, v in zip(before, model.trainable_variables)]


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


@pytest.mark.parametrize("jit", [False, True])
def test_annealed_step_normalizes_the_elementwise_clipped_gradient(jit):
    model, _ = _model()
    grads = _gradient(model)
    clipped = [np.clip(g, -0.05, 0.05) for g in grads]
    assert any((np.abs(g) > 0.05).any() for g in grads)  # the clip is active
    step = _step_of(model, AnnealedStep(0.3, bandwidth=0.5, clipvalue=0.05), jit)
    # Mobahi (2016) sec. 5.2: length learning_rate * sigma along the (clipped) gradient.
    assert _global_norm(step) == pytest.approx(0.3 * 0.5, rel=1e-5)
    norm = _global_norm(clipped)
    for s, c in zip(step, clipped):
        np.testing.assert_allclose(s, -0.15 * c / norm, rtol=1e-3, atol=1e-7)


def test_annealed_step_is_unchanged_by_a_global_norm_clip():
    # A global rescaling keeps the direction, and AnnealedStep fixes the length.
    clipped_model, _ = _model()
    reference, _ = _model()
    assert _global_norm(_gradient(reference)) > 10 * 1e-3
    clipped = _step_of(clipped_model, AnnealedStep(0.3, bandwidth=0.5, global_clipnorm=1e-3))
    plain = _step_of(reference, AnnealedStep(0.3, bandwidth=0.5))
    for a, b in zip(clipped, plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("clipping", [dict(global_clipnorm=1.0), dict(clipvalue=1.0)])
def test_annealed_step_rejects_a_non_finite_gradient_after_clipping(clipping):
    optimizer = AnnealedStep(0.3, bandwidth=0.5, **clipping)
    variables = [keras.Variable([1.0, 2.0]), keras.Variable(3.0)]
    optimizer.apply([tf.constant([np.nan, 1.0]), tf.constant(1.0)], variables)
    assert int(optimizer.rejected_steps.numpy()) == 1
    np.testing.assert_array_equal(variables[0].numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(variables[1].numpy(), 3.0)


@pytest.mark.parametrize("option", ["global_clipnorm", "clipnorm", "clipvalue"])
def test_closure_optimizers_refuse_gradient_clipping(option):
    with pytest.raises(ValueError, match=option):
        GaussNewton(**{option: 1.0})
