"""Dense numpy reference for the closure tests: a one-layer ``tanh`` net with squared error.

``out = tanh(x W + b)``, loss ``L = sum_{n,k} w_n (out_nk - y_nk)^2 / (N K) + l2 * |W|^2``
(Keras' mean squared error with sample weights ``w`` and an L2 kernel regularizer). Parameters
are flattened as ``[W.ravel(), b]`` (the order of ``Dense.trainable_weights``). Everything is
float64 and written out by hand (no autodiff), so it is independent of the code under test.
``tiny_model`` builds that net in Keras, ``data`` a batch and ``random_point`` weights and a
direction away from the model's, for the closure and optimizer tests.
"""

import keras
import numpy as np
import tensorflow as tf

import keras_diffusion as kd

L2 = 0.05


def data(n=6, d=3, k=2, seed=0):
    """Inputs ``(n, d)``, targets ``(n, k)`` and sample weights ``(n,)``, float32."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, k)).astype("float32")
    w = rng.uniform(0.5, 2.0, size=(n,)).astype("float32")
    return x, y, w


def tiny_model(cls=kd.Sequential, l2=L2, seed=1):
    """``Dense(2, tanh)`` on 3 inputs with an L2 kernel regularizer: the net of ``terms``."""
    keras.utils.set_random_seed(seed)
    return cls(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                2, activation="tanh", kernel_regularizer=keras.regularizers.L2(l2)
            ),
        ]
    )


def flat(values):
    """A list of arrays/tensors as one flat numpy vector."""
    return np.concatenate([np.ravel(v) for v in values])


def random_point(seed=5):
    """``W``, ``b`` (numpy float32), the same as tensors, and a direction ``v`` (tensors)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(3, 2)).astype("float32")
    b = rng.normal(size=(2,)).astype("float32")
    v = [tf.constant(rng.normal(size=(3, 2)), tf.float32), tf.constant([0.3, -1.0])]
    return W, b, [tf.constant(W), tf.constant(b)], v


def forward(W, b, x):
    return np.tanh(x @ W + b)


def terms(W, b, x, y, w, l2):
    """Loss, gradient, Jacobian ``J`` [(N K), P], output Hessian ``H_L`` and full Hessian."""
    x, y, w = (np.asarray(a, np.float64) for a in (x, y, w))
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    n, d = x.shape
    k = W.shape[1]
    out = forward(W, b, x)
    p = W.size + b.size
    jac = np.zeros((n, k, p))
    hess_out = np.zeros((n, k, p, p))
    for j in range(k):
        dz = np.zeros((n, p))  # gradient of z_nj = x_n W[:, j] + b_j
        dz[:, np.arange(d) * k + j] = x
        dz[:, W.size + j] = 1.0
        s = 1.0 - out[:, j] ** 2
        jac[:, j] = s[:, None] * dz
        hess_out[:, j] = (-2.0 * out[:, j] * s)[:, None, None] * dz[:, :, None] * dz[:, None]
    coef = np.repeat(w / (n * k), k)  # per output entry
    resid = (out - y).reshape(-1)
    jac = jac.reshape(n * k, p)
    reg_hess = np.zeros((p, p))
    reg_hess[np.arange(W.size), np.arange(W.size)] = 2.0 * l2
    loss = np.sum(coef * resid**2) + l2 * np.sum(W**2)
    grad = jac.T @ (2.0 * coef * resid) + reg_hess @ np.concatenate([W.ravel(), b])
    h_l = np.diag(2.0 * coef)
    ggn = jac.T @ h_l @ jac + reg_hess
    hessian = ggn + np.einsum("m,mpq->pq", 2.0 * coef * resid, hess_out.reshape(n * k, p, p))
    return loss, grad, jac, h_l, ggn, hessian


class CountingIdentity(keras.layers.Layer):
    """Identity layer counting its calls: run eagerly, one count per forward pass; traced,
    one count per pass in the graph."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def call(self, x):
        self.calls += 1
        return x
