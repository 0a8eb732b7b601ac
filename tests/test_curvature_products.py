"""Curvature products against explicit Jacobians/Hessians of tiny float64 models."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from dense_blocks import dense_hessian

from keras_diffusion import curvature
from keras_diffusion.curvature import forward

F64 = "float64"


def _model(name, dtype=F64):
    layers = keras.layers
    input_dtype = "float32" if dtype.startswith("mixed") else dtype
    if name == "mlp":
        return keras.Sequential(
            [
                keras.Input((3,), dtype=input_dtype),
                layers.Dense(4, activation="tanh", dtype=dtype),
                layers.Dense(3, dtype=dtype),
            ]
        )
    if name == "cnn":
        return keras.Sequential(
            [
                keras.Input((5, 5, 1), dtype=input_dtype),
                layers.Conv2D(2, 3, activation="tanh", dtype=dtype),
                layers.Flatten(dtype=dtype),
                layers.Dense(3, dtype=dtype),
            ]
        )
    if name in ("rnn_unrolled", "rnn_loop"):
        return keras.Sequential(
            [
                keras.Input((4, 2), dtype=input_dtype),
                layers.SimpleRNN(3, unroll=name == "rnn_unrolled", dtype=dtype),
                layers.Dense(3, dtype=dtype),
            ]
        )
    if name == "linear":
        return keras.Sequential(
            [keras.Input((3,), dtype=input_dtype), layers.Dense(2, dtype=dtype)]
        )
    raise ValueError(name)


_INPUT_SHAPES = {
    "mlp": (3,),
    "cnn": (5, 5, 1),
    "rnn_unrolled": (4, 2),
    "rnn_loop": (4, 2),
    "linear": (3,),
}
MODELS = ("mlp", "cnn", "rnn_unrolled", "rnn_loop")


class Problem:
    """A model evaluated at given weights, plus flat-vector helpers for dense references."""

    def __init__(self, name, batch=3, seed=0, dtype=F64):
        keras.utils.set_random_seed(seed)
        self.model = _model(name, dtype)
        rng = np.random.default_rng(seed)
        self.x = tf.constant(rng.normal(size=(batch,) + _INPUT_SHAPES[name]), dtype)
        self.params = [v.value for v in self.model.trainable_variables]
        self.non_trainable = [v.value for v in self.model.non_trainable_variables]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.num = sum(self.sizes)
        self.rng = rng

    def outputs_fn(self, params):
        return self.model.stateless_call(params, self.non_trainable, self.x)[0]

    def flat(self, tensors):
        return np.concatenate([np.reshape(np.asarray(t, np.float64), [-1]) for t in tensors])

    def unflat(self, theta):
        parts = tf.split(theta, self.sizes)
        return [tf.reshape(t, s) for t, s in zip(parts, self.shapes)]

    def random_vectors(self):
        return [
            tf.constant(self.rng.normal(size=s), p.dtype)
            for s, p in zip(self.shapes, self.params)
        ]

    def jacobian(self, fn=None):
        """Dense ``d fn(params) / d theta`` of shape ``(outputs, P)``."""
        fn = fn or self.outputs_fn
        theta = tf.constant(self.flat(self.params))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(theta)
            out = tf.reshape(fn(self.unflat(theta)), [-1])
        return tape.jacobian(out, theta, experimental_use_pfor=False).numpy()

    def hessian(self, loss_fn):
        """Dense Hessian of the scalar ``loss_fn(params)`` by nested tapes."""
        theta = tf.constant(self.flat(self.params))
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(theta)
            with tf.GradientTape() as inner:
                inner.watch(theta)
                loss = loss_fn(self.unflat(theta))
            grad = inner.gradient(loss, theta)
        return outer.jacobian(grad, theta, experimental_use_pfor=False).numpy()

    def dense(self, product):
        """Dense matrix of a linear ``product(vectors) -> list`` over the standard basis."""
        fn = tf.function(product)
        eye = np.eye(self.num)
        return np.stack([self.flat(fn(self.unflat(tf.constant(e)))) for e in eye], axis=1)


def _close(a, b, rtol=1e-9, atol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _sparse_problem(name, batch=3):
    prob = Problem(name, batch)
    labels = tf.constant(prob.rng.integers(0, 3, size=batch))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)
    return prob, labels, loss


# ---------------------------------------------------------------- jvp / vjp


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("mode", ["forward", "double_backward", "auto"])
def test_jvp_and_vjp_match_explicit_jacobian(name, mode):
    prob = Problem(name)
    jac = prob.jacobian()
    v = prob.random_vectors()
    out, jv = curvature.jvp(prob.outputs_fn, prob.params, v, mode=mode)
    _close(out, prob.outputs_fn(prob.params))
    _close(np.reshape(jv, [-1]), jac @ prob.flat(v))
    u = tf.constant(prob.rng.normal(size=out.shape))
    _close(prob.flat(curvature.vjp(prob.outputs_fn, prob.params, u)), jac.T @ np.reshape(u, [-1]))


def test_jvp_of_nested_outputs():
    prob = Problem("mlp")
    fn = lambda p: {"a": prob.outputs_fn(p), "b": [tf.reduce_sum(p[0] ** 2)]}  # noqa: E731
    v = prob.random_vectors()
    out, jv = curvature.jvp(fn, prob.params, v, mode="double_backward")
    _, jv_fwd = curvature.jvp(fn, prob.params, v, mode="forward")
    assert set(jv) == {"a", "b"}
    _close(np.reshape(jv["a"], [-1]), prob.jacobian() @ prob.flat(v))
    _close(jv["b"][0], 2 * np.sum(prob.params[0] * v[0]))
    tf.nest.map_structure(_close, jv, jv_fwd)


# ---------------------------------------------------------------- hvp


@pytest.mark.parametrize("name", MODELS)
def test_hvp_matches_explicit_hessian(name):
    prob, labels, loss = _sparse_problem(name)
    loss_fn = lambda p: loss(labels, prob.outputs_fn(p))  # noqa: E731
    hess = prob.hessian(loss_fn)
    v = prob.random_vectors()
    for mode in ("forward", "double_backward", "auto"):
        _close(prob.flat(curvature.hvp(loss_fn, prob.params, v, mode=mode)), hess @ prob.flat(v))


# ---------------------------------------------------------------- ggn


@pytest.mark.parametrize("name", MODELS)
def test_ggn_matches_explicit_jt_hl_j(name):
    prob, labels, loss = _sparse_problem(name)
    outputs = prob.outputs_fn(prob.params)
    jac = prob.jacobian()
    h_l = dense_hessian(lambda o: loss(labels, o), outputs)
    ggn = jac.T @ h_l @ jac
    v = prob.random_vectors()
    expected = ggn @ prob.flat(v)
    analytic = curvature.from_keras_loss(loss, y_true=labels)
    generic = curvature.ggn_vp(prob.outputs_fn, lambda o: loss(labels, o), prob.params, v)
    _close(prob.flat(generic), expected)
    for mode in ("forward", "double_backward"):
        got = curvature.ggn_vp(prob.outputs_fn, None, prob.params, v, mode, analytic)
        _close(prob.flat(got), expected)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_ggn_is_symmetric_psd_but_hessian_is_not(name):
    prob, labels, loss = _sparse_problem(name, batch=4)
    h = curvature.from_keras_loss(loss, y_true=labels)
    ggn = prob.dense(
        lambda v: curvature.ggn_vp(prob.outputs_fn, None, prob.params, v, loss_hessian=h)
    )
    _close(ggn, ggn.T, atol=1e-12)
    eig = np.linalg.eigvalsh(ggn)
    assert eig.min() >= -1e-10 * eig.max()
    hess = prob.hessian(lambda p: loss(labels, prob.outputs_fn(p)))
    assert np.linalg.eigvalsh(hess).min() < -1e-6  # the test problem has negative curvature


def test_ggn_equals_hessian_for_linear_model_with_mse():
    prob = Problem("linear", batch=5)
    y = tf.constant(prob.rng.normal(size=(5, 2)))
    loss = keras.losses.MeanSquaredError(dtype=F64)
    hess = prob.hessian(lambda p: loss(y, prob.outputs_fn(p)))
    ggn = prob.dense(
        lambda v: curvature.ggn_vp(
            prob.outputs_fn, None, prob.params, v, loss_hessian=curvature.from_keras_loss(loss)
        )
    )
    _close(ggn, hess)


def test_ggn_multi_output_with_nested_loss_hessians():
    prob = Problem("mlp")
    y = tf.constant(prob.rng.normal(size=(3, 3)))
    labels = tf.constant([0, 2, 1])
    mse = keras.losses.MeanSquaredError(dtype=F64)
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)

    def outputs_fn(p):
        out = prob.outputs_fn(p)
        return {"reg": out, "cls": 2.0 * tf.tanh(out)}

    def loss_fn(o):
        return mse(y, o["reg"]) + 0.5 * sce(labels, o["cls"])

    hessians = {
        "reg": curvature.from_keras_loss(mse),
        "cls": curvature.from_keras_loss(sce, labels, loss_weight=0.5),
    }
    v = prob.random_vectors()
    generic = curvature.ggn_vp(outputs_fn, loss_fn, prob.params, v)
    analytic = curvature.ggn_vp(outputs_fn, None, prob.params, v, loss_hessian=hessians)
    jac = np.concatenate(
        [prob.jacobian(lambda p: outputs_fn(p)[k]) for k in ("cls", "reg")]
    )  # tf.nest flattens dicts in sorted key order
    out = outputs_fn(prob.params)
    flat_out = tf.concat([tf.reshape(out["cls"], [-1]), tf.reshape(out["reg"], [-1])], 0)

    def flat_loss(f):
        return loss_fn({"cls": tf.reshape(f[:9], (3, 3)), "reg": tf.reshape(f[9:], (3, 3))})

    expected = jac.T @ dense_hessian(flat_loss, flat_out) @ jac @ prob.flat(v)
    _close(prob.flat(generic), expected)
    _close(prob.flat(analytic), expected)


# ---------------------------------------------------------------- Fisher


def _score_fisher(prob, distribution):
    """Reference Fisher ``(1/N) sum_i E_t[s s^T]`` by exact enumeration of the targets."""
    out = prob.outputs_fn(prob.params).numpy()
    batch, width = out.shape
    jac = prob.jacobian().reshape(batch, width, prob.num)
    fisher = np.zeros((prob.num, prob.num))
    for i in range(batch):
        r = out[i]
        if distribution == "categorical":
            p = np.exp(r - r.max()) / np.exp(r - r.max()).sum()
            for k in range(width):  # score of log p_k: (e_k - p)^T J
                s = (np.eye(width)[k] - p) @ jac[i]
                fisher += p[k] * np.outer(s, s)
        else:  # independent Bernoulli outputs, t in {0, 1}
            s_prob = 1.0 / (1.0 + np.exp(-r))
            for d in range(width):
                for t, pt in ((1.0, s_prob[d]), (0.0, 1.0 - s_prob[d])):
                    s = (t - s_prob[d]) * jac[i, d]
                    fisher += pt * np.outer(s, s)
    return fisher / batch


@pytest.mark.parametrize("distribution", ["categorical", "bernoulli"])
def test_fisher_matches_expected_score_outer_products(distribution):
    prob = Problem("mlp")
    v = prob.random_vectors()
    got = curvature.fisher_vp(prob.outputs_fn, prob.params, v, distribution=distribution)
    _close(prob.flat(got), _score_fisher(prob, distribution) @ prob.flat(v))


def test_gaussian_fisher_is_scaled_jtj():
    prob = Problem("mlp", batch=4)
    v = prob.random_vectors()
    jac = prob.jacobian()
    got = curvature.fisher_vp(prob.outputs_fn, prob.params, v, "gaussian", variance=0.5)
    _close(prob.flat(got), jac.T @ jac @ prob.flat(v) / (4 * 0.5))


@pytest.mark.parametrize(
    "distribution,loss,scale",
    [
        # Keras MSE averages over the D=3 outputs: H_L = 2/(N D) I = Fisher(variance=D/2).
        ("gaussian", keras.losses.MeanSquaredError(dtype=F64), None),
        # Keras BCE averages over the D=3 outputs: GGN = Fisher / D.
        ("bernoulli", keras.losses.BinaryCrossentropy(from_logits=True, dtype=F64), 1 / 3),
        ("categorical", keras.losses.CategoricalCrossentropy(from_logits=True, dtype=F64), 1.0),
    ],
)
def test_fisher_equals_ggn_for_matching_pairs(distribution, loss, scale):
    prob = Problem("rnn_loop")
    y = prob.rng.uniform(size=(3, 3))
    y = tf.constant(y / y.sum(-1, keepdims=True) if distribution == "categorical" else y)
    v = prob.random_vectors()
    ggn = curvature.ggn_vp(prob.outputs_fn, lambda o: loss(y, o), prob.params, v)
    if distribution == "gaussian":
        fisher = curvature.fisher_vp(prob.outputs_fn, prob.params, v, distribution, variance=1.5)
        scale = 1.0
    else:
        fisher = curvature.fisher_vp(prob.outputs_fn, prob.params, v, distribution)
    _close(prob.flat(ggn), scale * prob.flat(fisher))


# ---------------------------------------------------------------- empirical Fisher


@pytest.mark.parametrize("name", ["mlp", "rnn_loop"])
def test_empirical_fisher_matches_per_example_gradients(name):
    prob, labels, _ = _sparse_problem(name, batch=4)
    per_example = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None, dtype=F64
    )
    loss_fn = lambda p: per_example(labels, prob.outputs_fn(p))  # noqa: E731
    grads = []
    for i in range(4):
        with tf.GradientTape() as tape:
            tape.watch(prob.params)
            loss_i = loss_fn(prob.params)[i]
        grads.append(prob.flat(tape.gradient(loss_i, prob.params)))
    grads = np.stack(grads)
    v = prob.random_vectors()
    expected = grads.T @ (grads @ prob.flat(v)) / 4
    for mode in ("forward", "double_backward"):
        _close(prob.flat(curvature.empirical_fisher_vp(loss_fn, prob.params, v, mode)), expected)


# ---------------------------------------------------------------- modes, graphs, XLA


def test_auto_mode_falls_back_per_call_and_product_mode_remembers():
    prob, labels, loss = _sparse_problem("rnn_loop")
    h = curvature.from_keras_loss(loss, y_true=labels)
    v = prob.random_vectors()
    expected = curvature.ggn_vp(prob.outputs_fn, None, prob.params, v, "double_backward", h)

    def product(mode):
        return tf.function(
            lambda p, w: curvature.ggn_vp(prob.outputs_fn, None, p, w, mode, h)
        )(prob.params, v)

    with pytest.raises((ValueError, TypeError)):  # ForwardAccumulator fails on while loops
        product("forward")
    # "auto" falls back for that call only: nothing is remembered, each call falls back.
    _close(prob.flat(product("auto")), prob.flat(expected))
    _close(prob.flat(product("auto")), prob.flat(expected))
    with pytest.raises((ValueError, TypeError)):
        product("forward")
    # A ProductMode remembers the fallback for its own lifetime.
    choice = forward.ProductMode()
    assert choice.mode == "auto"
    _close(prob.flat(product(choice)), prob.flat(expected))
    assert choice.mode == "double_backward"
    _close(prob.flat(product(choice)), prob.flat(expected))
    assert forward.ProductMode().mode == "auto"  # a fresh one starts over

    unrolled = Problem("rnn_unrolled")
    kept = forward.ProductMode()
    tf.function(lambda p, w: curvature.jvp(unrolled.outputs_fn, p, w, mode=kept))(
        unrolled.params, unrolled.random_vectors()
    )
    assert kept.mode == "auto"  # forward mode worked: nothing to remember
    fixed = forward.ProductMode("forward")
    with pytest.raises((ValueError, TypeError)):
        product(fixed)
    assert fixed.mode == "forward"  # only "auto" falls back


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("jit_compile", [False, True])
def test_products_in_tf_function_and_xla(name, jit_compile):
    prob, labels, loss = _sparse_problem(name)
    h = curvature.from_keras_loss(loss, y_true=labels)
    loss_fn = lambda p: loss(labels, prob.outputs_fn(p))  # noqa: E731
    v = prob.random_vectors()

    def all_products(p, w):
        return (
            curvature.jvp(prob.outputs_fn, p, w)[1],
            curvature.hvp(loss_fn, p, w),
            curvature.ggn_vp(prob.outputs_fn, None, p, w, loss_hessian=h),
            curvature.fisher_vp(prob.outputs_fn, p, w, "categorical"),
        )

    eager = all_products(prob.params, v)
    graph = tf.function(all_products, jit_compile=jit_compile)(prob.params, v)
    tf.nest.map_structure(lambda a, b: _close(a, b, rtol=1e-8, atol=1e-9), eager, graph)


# ---------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_products_are_float32(policy):
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    labels = tf.constant([0, 1, 2, 1])
    ref = _model("mlp", "float32")
    mixed = _model("mlp", policy)
    mixed.set_weights(ref.get_weights())
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    h = curvature.from_keras_loss(loss, y_true=labels)
    params = [w.value for w in ref.trainable_variables]
    v = [tf.constant(np.random.default_rng(1).normal(size=p.shape), tf.float32) for p in params]

    def ggn(model):
        fn = lambda p: model.stateless_call(p, [], x)[0]  # noqa: E731
        return curvature.ggn_vp(fn, None, params, v, loss_hessian=h)

    expected = np.concatenate([np.ravel(t) for t in ggn(ref)])
    out, jv = curvature.jvp(lambda p: mixed.stateless_call(p, [], x)[0], params, v)
    assert out.dtype == jv.dtype == tf.float32
    half = ggn(mixed)
    assert all(t.dtype == tf.float32 for t in half)
    scale = np.abs(expected).max()
    tol = 5e-3 if policy == "mixed_float16" else 3e-2
    np.testing.assert_allclose(
        np.concatenate([np.ravel(t) for t in half]), expected, atol=tol * scale
    )
    with curvature.float32_policy(mixed):
        full = ggn(mixed)
    assert mixed.layers[0].compute_dtype == ("float16" if policy == "mixed_float16" else "bfloat16")
    np.testing.assert_allclose(
        np.concatenate([np.ravel(t) for t in full]), expected, rtol=1e-5, atol=1e-6 * scale
    )


# ---------------------------------------------------------------- errors


def test_clear_errors():
    prob, labels, loss = _sparse_problem("mlp")
    v = prob.random_vectors()
    with pytest.raises(ValueError, match="received 3 vectors for 4 params"):
        curvature.hvp(lambda p: tf.reduce_sum(p[0]), prob.params, v[:3])
    with pytest.raises(ValueError, match=r"tangents\[1\] has shape \(3,\)"):
        curvature.jvp(prob.outputs_fn, prob.params, [v[0], v[3], v[2], v[3]])
    with pytest.raises(ValueError, match="scalar loss"):
        curvature.hvp(lambda p: p[0] ** 2, prob.params, v)
    with pytest.raises(ValueError, match="scalar loss"):
        curvature.ggn_vp(prob.outputs_fn, lambda o: o, prob.params, v)
    with pytest.raises(ValueError, match="`mode` must be one of .*'reverse'. Use \"auto\""):
        curvature.jvp(prob.outputs_fn, prob.params, v, mode="reverse")
    with pytest.raises(ValueError, match="`mode` must be one of .*'reverse'"):
        forward.ProductMode("reverse")
    with pytest.raises(TypeError, match="from_keras_loss"):
        curvature.ggn_vp(prob.outputs_fn, None, prob.params, v, loss_hessian=loss)
    with pytest.raises(ValueError, match="loss_fn or loss_hessian"):
        curvature.ggn_vp(prob.outputs_fn, None, prob.params, v)
    with pytest.raises(ValueError, match="structure of fn"):
        curvature.vjp(prob.outputs_fn, prob.params, [tf.ones((3, 3))] * 2)
