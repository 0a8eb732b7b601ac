"""Hidden-state probes: states of a tiny RNN as functions of the weights, ``J_h v`` and
``J_h^T u`` through ``Closure.outputs_and_states`` against an explicit numpy Jacobian."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_diffusion as kd
from keras_diffusion.curvature import forward
from keras_diffusion.layers import DeepTransitionRNN, DeepTransitionRNNCell

B, T, D, N = 2, 4, 2, 3
RNG = np.random.default_rng(4)
X = RNG.normal(size=(B, T, D)).astype("float32")
Y = RNG.normal(size=(B, T, 1)).astype("float32")
SHAPES = [(D, N), (N, N), (N,), (N, 1), (1,)]  # U, R, b of the cell; V, c of the Dense


def _model():
    keras.utils.set_random_seed(0)
    rnn = DeepTransitionRNN(DeepTransitionRNNCell(N), return_sequences=True)
    inputs = keras.Input((T, D))
    model = kd.Model(inputs, keras.layers.Dense(1)(rnn(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    assert [tuple(v.shape) for v in model.trainable_variables] == SHAPES
    return model, rnn


def _numpy_states(theta):
    """h[1..T] of h[t] = tanh(x[t] U + h[t-1] R + b) for the flat float64 parameters."""
    sizes = np.cumsum([int(np.prod(s)) for s in SHAPES])[:-1]
    U, R, b, _, _ = (p.reshape(s) for p, s in zip(np.split(theta, sizes), SHAPES))
    h, states = np.zeros((B, N)), []
    for t in range(T):
        h = np.tanh(X[:, t] @ U + h @ R + b)
        states.append(h)
    return np.stack(states, 1)


def _jacobian(theta, eps=1e-6):
    """d vec(h[1..T]) / d theta by central differences in float64, shape (B T N, P)."""
    columns = []
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = eps
        columns.append((_numpy_states(theta + step) - _numpy_states(theta - step)).ravel()
                       / (2 * eps))
    return np.stack(columns, 1)


def _flat(values):
    return np.concatenate([np.ravel(v) for v in values])


def _point():
    rng = np.random.default_rng(7)
    params = [tf.constant(rng.normal(scale=0.7, size=s), "float32") for s in SHAPES]
    v = [tf.constant(rng.normal(size=s), "float32") for s in SHAPES]
    return params, v, _flat(params).astype(np.float64)


def test_states_are_the_hidden_states_at_the_given_weights():
    model, rnn = _model()
    closure = kd.Closure(model, X, Y)
    params, _, theta = _point()
    outputs, (states,) = closure.outputs_and_states([rnn], params)
    np.testing.assert_allclose(states, _numpy_states(theta), rtol=1e-5, atol=1e-6)
    V, c = theta[-4:-1].reshape(N, 1), theta[-1:]
    np.testing.assert_allclose(outputs, _numpy_states(theta) @ V + c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(closure.outputs(params), outputs, rtol=1e-6)


@pytest.mark.parametrize("mode", ["forward", "double_backward"])
def test_state_jacobian_products_match_explicit_jacobian(mode):
    model, rnn = _model()
    closure = kd.Closure(model, X, Y)
    params, v, theta = _point()
    jac = _jacobian(theta)
    u = np.random.default_rng(8).normal(size=(B, T, N)).astype("float32")
    # Outputs and states in one linearization, as a structural-damping product needs them.
    lin = forward.linearize(lambda p: closure.outputs_and_states([rnn], p), params, v, mode)
    _, (jhv,) = lin.jvp
    np.testing.assert_allclose(np.ravel(jhv), jac @ _flat(v), rtol=1e-4, atol=1e-5)
    zero_outputs = tf.zeros_like(lin.outputs[0])
    jhtu = lin.vjp((zero_outputs, [tf.constant(u)]))
    np.testing.assert_allclose(_flat(jhtu), jac.T @ u.ravel(), rtol=1e-4, atol=1e-5)


def test_states_on_each_replica_are_its_share(mirrored_strategy):
    strategy = mirrored_strategy
    with strategy.scope():
        model, rnn = _model()
    params, _, theta = _point()

    def states(x, y):
        return kd.Closure(model, x, y).outputs_and_states([rnn], params)[1][0]

    def shard(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group:][:1])
        )

    per_replica = strategy.experimental_local_results(strategy.run(states, (shard(X), shard(Y))))
    np.testing.assert_allclose(np.concatenate(per_replica), _numpy_states(theta), rtol=1e-5,
                               atol=1e-6)


def test_capture_errors_name_the_problem():
    model, rnn = _model()
    simple = keras.layers.SimpleRNN(2)
    with pytest.raises(TypeError, match="SimpleRNN.*DeepTransitionRNN"):
        with kd.probes.capture([simple]):
            pass
    with kd.probes.capture([rnn]) as captured:
        pass
    with pytest.raises(KeyError, match="not called inside the capture block"):
        captured[rnn]  # noqa: B018
    with pytest.raises(ValueError, match="called twice"):
        with kd.probes.capture([rnn]):
            rnn(X)
            rnn(X)
    backwards = DeepTransitionRNN(DeepTransitionRNNCell(N), go_backwards=True)
    with pytest.raises(ValueError, match="go_backwards=False"):
        with kd.probes.capture([backwards]):
            backwards(X)
    with kd.probes.capture([rnn]) as captured:  # outside the block: the plain loop again
        rnn(X)
    assert rnn in captured
    rnn(X)
    assert kd.probes.requested(rnn) is None
