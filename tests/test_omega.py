"""Omega (Pascanu thesis eqs. (5.20)-(5.21)): value, immediate-derivative gradient and the
back-propagated errors against explicit numpy computations on tiny recurrent nets."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_diffusion import probes, regularizers
from keras_diffusion.layers.deep_transition import DeepTransitionRNN, DeepTransitionRNNCell
from keras_diffusion.optimizers import AnnealedStep

RNG = np.random.default_rng(1)
B, T, D, N = 2, 5, 2, 3
X = RNG.normal(size=(B, T, D))
Y = RNG.normal(size=(B, T, 1))


def _tiny_model():
    layer = DeepTransitionRNN(DeepTransitionRNNCell(N), return_sequences=True)
    inputs = keras.Input((T, D))
    model = keras.Model(inputs, keras.layers.Dense(1)(layer(inputs)))
    params = dict(U=RNG.normal(scale=0.8, size=(D, N)), R=RNG.normal(scale=0.9, size=(N, N)),
                  b=RNG.normal(scale=0.3, size=N), V=RNG.normal(size=(N, 1)),
                  c=RNG.normal(size=1))
    cell = layer.cell
    for var, key in ((cell.kernel, "U"), (cell.recurrent_kernel, "R"), (cell.bias, "b")):
        var.assign(params[key])
    model.layers[-1].kernel.assign(params["V"])
    model.layers[-1].bias.assign(params["c"])
    return model, layer, params


def _numpy_forward(p):
    """States h_0..h_T and errors delta_1..delta_T = dL/dh_t for L = mean squared error."""
    h = [np.zeros((B, N))]
    for t in range(T):
        h.append(np.tanh(X[:, t] @ p["U"] + h[-1] @ p["R"] + p["b"]))
    h = np.stack(h, 1)
    direct = 2 * ((h[:, 1:] @ p["V"] + p["c"]) - Y) / (B * T) @ p["V"].T
    delta = np.zeros_like(direct)
    delta[:, -1] = direct[:, -1]
    for t in range(T - 2, -1, -1):
        delta[:, t] = direct[:, t] + (delta[:, t + 1] * (1 - h[:, t + 2] ** 2)) @ p["R"].T
    return h, delta


def _numpy_omega(p, h_prev, delta):
    """Eq. (5.20) for h[k+1] = tanh(x U + h[k] R + b): delta J = (delta * tanh') R^T."""
    h_next = np.tanh(X @ p["U"] + h_prev @ p["R"] + p["b"])
    back = (delta * (1 - h_next**2)) @ p["R"].T
    ratio = (back**2).sum(-1) / (delta**2).sum(-1)
    return ((ratio - 1) ** 2).sum() / B


def _numeric_grad(f, p, key, eps=1e-6):
    grad = np.zeros_like(p[key])
    for i in np.ndindex(p[key].shape):
        up, down = {k: v.copy() for k, v in p.items()}, {k: v.copy() for k, v in p.items()}
        up[key][i] += eps
        down[key][i] -= eps
        grad[i] = (f(up) - f(down)) / (2 * eps)
    return grad


def _record(model, layer):
    with tf.GradientTape() as tape:
        with probes.capture([layer], tape=tape) as captured:
            pred = model(X.astype("float32"))
        loss = keras.losses.MeanSquaredError()(Y.astype("float32"), pred)
    record = captured[layer]
    return tape.gradient(loss, record.probe), record.previous, record.inputs


def test_probe_gives_states_and_backpropagated_errors():
    model, layer, p = _tiny_model()
    errors, states, inputs = _record(model, layer)
    h, delta = _numpy_forward(p)
    np.testing.assert_allclose(states, h[:, :-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(errors, delta, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(inputs, X, rtol=1e-6)


def test_omega_value_and_immediate_gradient_match_numpy():
    model, layer, p = _tiny_model()
    errors, states, inputs = _record(model, layer)
    cell = layer.cell
    with tf.GradientTape() as tape:
        value = regularizers.omega(lambda h, u: cell(u, [h])[0], states, errors, inputs)
    grads = dict(zip("URb", tape.gradient(value, [cell.kernel, cell.recurrent_kernel, cell.bias])))
    h, delta = _numpy_forward(p)
    frozen = lambda q: _numpy_omega(q, h[:, :-1], delta)  # noqa: E731  (eq. 5.21 semantics)
    assert float(value) == pytest.approx(frozen(p), rel=1e-4)
    for key in "URb":
        np.testing.assert_allclose(grads[key], _numeric_grad(frozen, p, key), rtol=2e-3,
                                   atol=1e-4)
    # the total derivative (states and errors moving with R) is a different vector: the
    # test above would fail for an implementation that did not hold them constant
    def total(q):
        h_q, delta_q = _numpy_forward(q)
        return _numpy_omega(q, h_q[:, :-1], delta_q)

    assert np.linalg.norm(_numeric_grad(total, p, "R") - grads["R"]) > 0.05 * np.linalg.norm(
        grads["R"])


def test_omega_of_deep_transition_cell_matches_explicit_jacobian():
    cell = DeepTransitionRNNCell(3, [4], shortcut=True, transition_activation="relu")
    cell.build((None, D))
    for v in cell.weights:
        v.assign(RNG.normal(scale=0.7, size=v.shape))
    h_prev, delta = RNG.normal(size=(B, T, 3)), RNG.normal(size=(B, T, 3))
    value = regularizers.omega(lambda h, u: cell(u, [h])[0], h_prev.astype("float32"),
                               delta.astype("float32"), X.astype("float32"))
    w = {v.path.split("/")[-1]: np.asarray(v, dtype=float) for v in cell.weights}
    pre1 = X @ w["kernel"] + h_prev @ w["recurrent_kernel"] + w["bias"]
    z = np.maximum(pre1, 0)
    h_next = np.tanh(z @ w["transition_kernel_2"] + w["transition_bias_2"]
                     + h_prev @ w["shortcut_kernel"])
    d_pre = delta * (1 - h_next**2)
    back = ((d_pre @ w["transition_kernel_2"].T) * (pre1 > 0)) @ w["recurrent_kernel"].T
    back = back + d_pre @ w["shortcut_kernel"].T
    expected = ((((back**2).sum(-1) / (delta**2).sum(-1)) - 1) ** 2).sum() / B
    assert float(value) == pytest.approx(expected, rel=1e-4)


def test_zero_errors_contribute_nothing():
    cell = DeepTransitionRNNCell(3)
    cell.build((None, D))
    delta = np.zeros((B, T, 3), "float32")
    value = regularizers.omega(lambda h, u: cell(u, [h])[0], np.ones((B, T, 3), "float32"),
                               delta, X.astype("float32"))
    assert float(value) == 0.0


@pytest.mark.parametrize("weight, jit", [(0.7, False),
                                         (regularizers.OmegaWeight(0.7, decay_steps=2.0), True)])
def test_train_step_adds_weighted_omega_gradient(weight, jit):
    model, layer, p = _tiny_model()
    wrapped = regularizers.NormPreservingModel(model, layer, weight=weight)
    wrapped.compile(keras.optimizers.SGD(0.1), loss="mse", jit_compile=jit)
    variables = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias,
                 model.layers[-1].kernel, model.layers[-1].bias]
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(Y.astype("float32"), model(X.astype("float32")))
    loss_grads = [np.asarray(g) for g in tape.gradient(loss, variables)]
    h, delta = _numpy_forward(p)
    frozen = lambda q: _numpy_omega(q, h[:, :-1], delta)  # noqa: E731
    omega_grads = [_numeric_grad(frozen, p, k) for k in "URb"] + [0, 0]
    before = [np.asarray(v) for v in variables]
    logs = wrapped.train_on_batch(X.astype("float32"), Y.astype("float32"), return_dict=True)
    assert logs["omega"] == pytest.approx(frozen(p), rel=1e-4)
    assert logs["loss"] == pytest.approx(float(loss), rel=1e-5)
    for v, b, gl, go in zip(variables, before, loss_grads, omega_grads):
        np.testing.assert_allclose(np.asarray(v), b - 0.1 * (gl + 0.7 * go), rtol=1e-3,
                                   atol=1e-5)


def test_mirrored_strategy_step_equals_single_device_step(mirrored_strategy):
    _, _, p = _tiny_model()
    values = [p["U"], p["R"], p["b"], p["V"], p["c"]]
    results = []
    for strategy in (tf.distribute.get_strategy(), mirrored_strategy):
        with strategy.scope():
            model, layer, _ = _tiny_model()
            for var, value in zip(model.trainable_variables, values):
                var.assign(value)
            wrapped = regularizers.NormPreservingModel(model, layer, weight=0.5)
            wrapped.compile(keras.optimizers.SGD(0.1), loss="mse")
        logs = wrapped.train_on_batch(X.astype("float32"), Y.astype("float32"),
                                      return_dict=True)
        results.append(([np.asarray(v) for v in model.trainable_variables], logs["loss"]))
    assert mirrored_strategy.num_replicas_in_sync == 2
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)


def test_mixed_precision_train_step_with_loss_scaling():
    _, _, p = _tiny_model()
    h, delta = _numpy_forward(p)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, layer, _ = _tiny_model()
        for var, value in zip(model.trainable_variables,
                              [p["U"], p["R"], p["b"], p["V"], p["c"]]):
            var.assign(value)
        wrapped = regularizers.NormPreservingModel(model, layer, weight=1.0)
        wrapped.compile(keras.optimizers.SGD(0.01), loss="mse")
        assert isinstance(wrapped.optimizer, keras.optimizers.LossScaleOptimizer)
        logs = wrapped.train_on_batch(X.astype("float32"), Y.astype("float32"),
                                      return_dict=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert logs["omega"] == pytest.approx(_numpy_omega(p, h[:, :-1], delta), rel=2e-2)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in model.trainable_variables)


def test_omega_weight_schedule_values_and_config():
    constant = regularizers.OmegaWeight(4.0)
    assert float(constant(0)) == 4.0 and float(constant(10**6)) == 4.0
    decay = regularizers.OmegaWeight(0.05, decay_steps=2800, start=100)
    for t in (0, 100, 2900, 28100):
        assert float(decay(t)) == pytest.approx(0.05 / (1 + max(0, t - 100) / 2800))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(decay))
    assert restored.get_config() == decay.get_config()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(initial=-1.0), "initial Omega weight.*-1.0"),
        (dict(initial=1.0, decay_steps=0), "decay_steps must be > 0.*got 0"),
        (dict(initial=1.0, start=-5), "start must be a step >= 0, got -5"),
    ],
)
def test_bad_weights_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        regularizers.OmegaWeight(**kwargs)


def test_wrapper_rejects_other_layers():
    model, layer, _ = _tiny_model()
    with pytest.raises(TypeError, match="regularizes a DeepTransitionRNN"):
        regularizers.NormPreservingModel(model, model.layers[-1])
    other = DeepTransitionRNN(DeepTransitionRNNCell(2))
    with pytest.raises(ValueError, match="is not part of model"):
        regularizers.NormPreservingModel(model, other)


def test_train_step_logs_the_optimizers_diagnostics():
    model, layer, _ = _tiny_model()
    wrapped = regularizers.NormPreservingModel(model, layer, weight=0.5)
    wrapped.compile(AnnealedStep(0.1, bandwidth=2.0, sigma_floor=0.0), loss="mse")
    before = [np.asarray(v) for v in model.trainable_variables]
    logs = wrapped.train_on_batch(X.astype("float32"), Y.astype("float32"), return_dict=True)
    moved = np.sqrt(sum(((np.asarray(v) - b) ** 2).sum()
                        for v, b in zip(model.trainable_variables, before)))
    assert logs["rejected_steps"] == 0.0
    assert logs["step_length"] == pytest.approx(0.2) == pytest.approx(moved, rel=1e-4)
