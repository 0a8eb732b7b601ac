"""Dense numpy reference for the closure tests: a one-layer ``tanh`` net with squared error.

``out = tanh(x W + b)``, loss ``L = sum_{n,k} w_n (out_nk - y_nk)^2 / (N K) + l2 * |W|^2``
(Keras' mean squared error with sample weights ``w`` and an L2 kernel regularizer). Parameters
are flattened as ``[W.ravel(), b]`` (the order of ``Dense.trainable_weights``). Everything is
float64 and written out by hand (no autodiff), so it is independent of the code under test.
"""

import numpy as np


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
