"""The diffused RNN of Mobahi 2016 and its approximate diffused cost (sec. 4.3, App. A).

References are independent of the library: a hand-written numpy RNN, keras.layers.SimpleRNN,
numpy transcriptions of the sec. 4.3 formula with closed-form (Table 1) or quadrature moments,
and Monte Carlo estimates of the Gaussian-smoothed penalty cost (tolerances from the Monte
Carlo standard error).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

import keras_diffusion as kd
from keras_diffusion.layers import DiffusedOutput, DiffusedRNN, DiffusedRNNCell
from keras_diffusion.layers.smoothing import smoothing_penalty
from keras_diffusion.losses import SequenceSquaredError
from models.builders import adding_test_error, build_adding_rnn

X, H, Y, T, S = 2, 3, 2, 4, 3


# ----------------------------------------------------------------------------- references
def plain(name, x):
    return {"linear": x, "erf": special.erf(x), "sign": np.sign(x), "relu": np.maximum(x, 0.0)}[name]


def smoothed(name, x, sigma):
    """Exact (mean, second moment) of h(x + sigma z) from closed forms (Table 1)."""
    if sigma == 0:
        return plain(name, x), plain(name, x) ** 2
    if name == "linear":
        return x, x**2 + sigma**2
    if name == "sign":
        return special.erf(x / (np.sqrt(2) * sigma)), np.ones_like(x)
    if name == "relu":
        u = x / sigma
        cdf, pdf = stats.norm.cdf(u), stats.norm.pdf(u)
        return x * cdf + sigma * pdf, (x**2 + sigma**2) * cdf + x * sigma * pdf
    if name in ("erf", "tanh"):  # the library's fast moments (checked against quadrature
        # in test_activations.py), so the recurrence and its gradient are what is tested here
        mean, second = kd.activations.diffused_moments(name, np.asarray(x, "float64"), sigma)
        return mean.numpy(), second.numpy()
    raise ValueError(name)


def random_weights(rng, scale=0.8):
    return dict(
        U=rng.normal(size=(X, H)) * scale,
        V=rng.normal(size=(H, H)) * scale,
        a=rng.normal(size=H) * scale,
        m0=rng.normal(size=H) * scale,
        W=rng.normal(size=(H, Y)) * scale,
        b=rng.normal(size=Y) * scale,
    )


def numpy_forward(w, x, mean_fn):
    """eq. (6) in Keras layout: returns m_0..m_T (S, T+1, H) and n_1..n_T (S, T, Y)."""
    ms = [np.broadcast_to(w["m0"], (x.shape[0], H))]
    for t in range(x.shape[1]):
        ms.append(x[:, t] @ w["U"] + w["a"] + mean_fn(ms[-1]) @ w["V"])
    ms = np.stack(ms, axis=1)
    return ms, mean_fn(ms[:, 1:]) @ w["W"] + w["b"]


def numpy_cost(w, x, y, hidden, output, sigma, lam, every_step):
    """The sec. 4.3 cost transcribed term by term, averaged over sequences."""
    mean_h = lambda v: smoothed(hidden, v, sigma)[0]  # noqa: E731
    ms, ns = numpy_forward(w, x, mean_h)
    Wp, Vp = w["W"].T, w["V"].T  # the paper's W (Y x H) and V (H x H)
    out_steps = range(1, T + 1) if every_step else [T]
    total = 0.0
    for s in range(x.shape[0]):
        for t in out_steps:
            target = y[s, t - 1] if every_step else y[s]
            mu_n, sq_n = smoothed(output, ns[s, t - 1], sigma)
            mu, sq = smoothed(hidden, ms[s, t], sigma)
            total += np.sum((mu_n - target) ** 2) + np.sum(np.sqrt(sq_n) ** 2) - np.sum(mu_n**2)
            total += lam * (
                np.sum((Wp @ np.diag(np.sqrt(sq))) ** 2)
                - np.sum((Wp @ np.diag(mu)) ** 2)
                + sigma**2 * Y * np.sum(mu**2)
            )
        for t in range(0, T):
            mu, sq = smoothed(hidden, ms[s, t], sigma)
            total += lam * (
                np.sum((Vp @ np.diag(np.sqrt(sq))) ** 2)
                - np.sum((Vp @ np.diag(mu)) ** 2)
                + sigma**2 * H * np.sum(mu**2)
            )
    return total / x.shape[0]


def build(w, hidden, output, sigma, lam, every_step, jit_compile=False):
    bandwidth = kd.Bandwidth(sigma)
    inputs = keras.Input((T, X))
    cell = DiffusedRNNCell(H, hidden, bandwidth=bandwidth, penalty=lam)
    moments = DiffusedRNN(cell, return_sequences=every_step)(inputs)
    layer = DiffusedOutput(Y, output, bandwidth=bandwidth, penalty=lam)
    model = keras.Model(inputs, layer(moments))
    for variable, value in [
        (cell.kernel, w["U"]),
        (cell.recurrent_kernel, w["V"]),
        (cell.bias, w["a"]),
        (cell.initial_state, w["m0"]),
        (layer.kernel, w["W"]),
        (layer.bias, w["b"]),
    ]:
        variable.assign(value.astype("float32"))
    model.compile(keras.optimizers.SGD(0.05), loss=SequenceSquaredError(), jit_compile=jit_compile)
    return model


def data(rng, every_step):
    x = rng.normal(size=(S, T, X))
    y = rng.normal(size=(S, T, Y) if every_step else (S, Y))
    return x, y


def keras_cost(model, x, y):
    return model.evaluate(x.astype("float32"), y.astype("float32"), batch_size=len(x), verbose=0)


# ------------------------------------------------------------------------ sigma = 0 is plain
@pytest.mark.parametrize("every_step", [True, False])
def test_sigma_zero_cost_is_the_plain_rnn_squared_error(every_step):
    rng = np.random.default_rng(1)
    w, (x, y) = random_weights(rng), data(rng, every_step)
    model = build(w, "erf", "erf", sigma=0.0, lam=0.7, every_step=every_step)
    _, ns = numpy_forward(w, x, special.erf)
    prediction = special.erf(ns) if every_step else special.erf(ns[:, -1])
    expected = np.mean(np.sum((prediction - y).reshape(S, -1) ** 2, axis=1))
    np.testing.assert_allclose(keras_cost(model, x, y), expected, rtol=1e-5)

    # The same network as keras SimpleRNN on h_t = h(m_t) with h_0 = h(m_0).
    inputs = keras.Input((T, X))
    rnn = keras.layers.SimpleRNN(H, activation=tf.math.erf, return_sequences=every_step)
    dense = keras.layers.Dense(Y, activation=tf.math.erf)
    h0 = np.broadcast_to(special.erf(w["m0"]), (S, H)).astype("float32")
    reference = dense(rnn(inputs, initial_state=keras.ops.convert_to_tensor(h0)))
    rnn.set_weights([w["U"], w["V"], w["a"]])
    dense.set_weights([w["W"], w["b"]])
    simple = keras.Model(inputs, reference)
    simple.compile(loss=SequenceSquaredError())
    np.testing.assert_allclose(model.predict(x, verbose=0), simple.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras_cost(model, x, y), keras_cost(simple, x, y), rtol=1e-5)

    # Gradients at sigma = 0 are finite: one training step leaves finite weights.
    loss = model.train_on_batch(x.astype("float32"), y.astype("float32"))
    assert np.isfinite(loss) and all(np.all(np.isfinite(v)) for v in model.get_weights())


# ---------------------------------------------------------------- sigma > 0: the formula
@pytest.mark.parametrize("every_step", [True, False])
@pytest.mark.parametrize("hidden,output", [("linear", "linear"), ("sign", "linear"), ("relu", "sign")])
def test_cost_matches_a_numpy_transcription_of_section_4_3(hidden, output, every_step):
    rng = np.random.default_rng(2)
    w, (x, y) = random_weights(rng), data(rng, every_step)
    sigma, lam = 0.6, 0.3
    model = build(w, hidden, output, sigma, lam, every_step)
    expected = numpy_cost(w, x, y, hidden, output, sigma, lam, every_step)
    np.testing.assert_allclose(keras_cost(model, x, y), expected, rtol=2e-5)


@pytest.mark.parametrize("hidden", ["erf", "tanh"])
def test_compiled_recurrence_cost_and_gradient_match_the_numpy_cost(hidden):
    """erf/tanh run the XLA-compiled recurrence with a hand-written backward pass: its cost
    must match the transcription and its gradient central differences of that transcription."""
    rng = np.random.default_rng(11)
    w, (x, y) = random_weights(rng, scale=0.6), data(rng, True)
    sigma, lam = 0.6, 0.3
    model = build(w, hidden, "linear", sigma, lam, every_step=True)
    expected = numpy_cost(w, x, y, hidden, "linear", sigma, lam, True)
    np.testing.assert_allclose(keras_cost(model, x, y), expected, rtol=2e-5)

    names = ["U", "V", "a", "m0", "W", "b"]
    xs, ys = tf.constant(x, "float32"), tf.constant(y, "float32")
    with tf.GradientTape() as tape:
        cost = SequenceSquaredError()(ys, model(xs, training=True)) + tf.add_n(model.losses)
    variables = [model.layers[1].cell.kernel, model.layers[1].cell.recurrent_kernel,
                 model.layers[1].cell.bias, model.layers[1].cell.initial_state,
                 model.layers[2].kernel, model.layers[2].bias]
    grads = tape.gradient(cost, variables)
    eps = 1e-6
    for name, grad in zip(names, grads):
        numeric = np.zeros_like(w[name])
        for index in np.ndindex(w[name].shape):
            plus, minus = dict(w), dict(w)
            plus[name], minus[name] = w[name].copy(), w[name].copy()
            plus[name][index] += eps
            minus[name][index] -= eps
            numeric[index] = (
                numpy_cost(plus, x, y, hidden, "linear", sigma, lam, True)
                - numpy_cost(minus, x, y, hidden, "linear", sigma, lam, True)
            ) / (2 * eps)
        np.testing.assert_allclose(grad.numpy(), numeric, rtol=2e-3, atol=2e-4, err_msg=name)


# -------------------------------------------------------------- footnotes 6 and 7 (App. A)
def test_footnote_6_smoothing_a_linear_map():
    """E_{A'~N(A, s^2)} ||A' v + c||^2 = ||A v + c||^2 + s^2 rows ||v||^2 (footnote 6, summed)."""
    rng = np.random.default_rng(3)
    A, v, c, sigma, n = rng.normal(size=(Y, H)), rng.normal(size=H), rng.normal(size=Y), 0.7, 400_000
    samples = np.sum(((A + sigma * rng.normal(size=(n, Y, H))) @ v + c) ** 2, axis=1)
    tolerance = 5 * samples.std() / np.sqrt(n)
    v32 = v[None].astype("float32")
    extra = float(smoothing_penalty(v32, v32**2, A.T.astype("float32"), sigma)[0])
    assert abs(samples.mean() - (np.sum((A @ v + c) ** 2) + extra)) < tolerance
    np.testing.assert_allclose(extra, sigma**2 * Y * np.sum(v**2), rtol=1e-5)
    # the scalar identity itself: E (x^T y)^2 = (x0^T y)^2 + s^2 ||y||^2
    x0, yv = rng.normal(size=H), rng.normal(size=H)
    scalar = ((x0 + sigma * rng.normal(size=(n, H))) @ yv) ** 2
    assert abs(scalar.mean() - ((x0 @ yv) ** 2 + sigma**2 * yv @ yv)) < 5 * scalar.std() / np.sqrt(n)


def test_footnote_7_smoothing_through_the_activation():
    """E_z ||A h(x + s z) + b||^2 = ||A h~ + b||^2 + ||A diag(sqrt h~2)||_F^2 - ||A diag(h~)||_F^2."""
    rng = np.random.default_rng(4)
    A, x, b, sigma, n = rng.normal(size=(Y, H)), rng.normal(size=H), rng.normal(size=Y), 0.8, 400_000
    h = lambda v: special.erf(1.5 * v)  # noqa: E731
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)  # quadrature moments, independent
    mean = np.sum(weights[:, None] * h(x + sigma * nodes[:, None]), axis=0) / np.sqrt(2 * np.pi)
    second = np.sum(weights[:, None] * h(x + sigma * nodes[:, None]) ** 2, axis=0) / np.sqrt(2 * np.pi)
    samples = np.sum((h(x + sigma * rng.normal(size=(n, H))) @ A.T + b) ** 2, axis=1)
    diag_terms = np.sum((A @ np.diag(np.sqrt(second))) ** 2) - np.sum((A @ np.diag(mean)) ** 2)
    assert abs(samples.mean() - (np.sum((A @ mean + b) ** 2) + diag_terms)) < 5 * samples.std() / np.sqrt(n)
    library = smoothing_penalty(
        mean[None].astype("float32"), second[None].astype("float32"), A.T.astype("float32"), 0.0
    )
    np.testing.assert_allclose(float(library[0]), diag_terms, rtol=1e-4)


# -------------------------------------------------- sigma > 0: Monte Carlo of the smoothing
def smoothed_penalty_cost(w, x, y, hidden, output, sigma, lam, every_step, n, rng):
    """Samples of the penalty-form cost of sec. 4.1 at all variables + sigma * noise.

    Variables: a, b, m0, U, V, W and the auxiliary m_t, n_t, centred at their sec. 4.3 values
    (eq. (6)); returns one cost (averaged over sequences) per Monte Carlo sample.
    """
    ms, ns = numpy_forward(w, x, lambda v: smoothed(hidden, v, sigma)[0])
    noisy = lambda v: v + sigma * rng.normal(size=(n,) + np.shape(v))  # noqa: E731
    U, V, a, W, b = noisy(w["U"]), noisy(w["V"]), noisy(w["a"]), noisy(w["W"]), noisy(w["b"])
    m = noisy(ms)  # (n, S, T+1, H), m_0 = the weight m0 + noise
    nn = noisy(ns)  # (n, S, T, Y)
    hm = plain(hidden, m)
    cost = np.zeros(n)
    for t in range(1, T + 1):
        recurrence = (
            np.einsum("nsx,nxh->nsh", np.broadcast_to(x[:, t - 1], (n, S, X)), U)
            + np.einsum("nsh,nhk->nsk", hm[:, :, t - 1], V)
            + a[:, None]
            - m[:, :, t]
        )
        cost += lam * np.sum(recurrence**2, axis=(1, 2))
        if every_step or t == T:
            target = y[:, t - 1] if every_step else y
            cost += np.sum((plain(output, nn[:, :, t - 1]) - target) ** 2, axis=(1, 2))
            readout = np.einsum("nsh,nhy->nsy", hm[:, :, t], W) + b[:, None] - nn[:, :, t - 1]
            cost += lam * np.sum(readout**2, axis=(1, 2))
    return cost / S, ms


@pytest.mark.parametrize("every_step", [True, False])
@pytest.mark.parametrize("hidden,output", [("linear", "linear"), ("sign", "sign")])
def test_cost_is_the_gaussian_smoothed_penalty_cost_up_to_dropped_terms(hidden, output, every_step):
    """E[f(w + sigma z)] = sec. 4.3 cost + the terms App. A drops, for exact moments.

    The dropped terms: lam sigma^2 [ Y (2 + sum_j var h(m_t)_j) per output step
    + H (2 + ||x_t||^2 + sum_j var h(m_{t-1})_j) per step ]; the variance sums are where the
    paper writes sigma^2 Y ||h~(m_t)||^2 for the exact sigma^2 Y sum_j h~2(m_t)_j (constant
    only for a linear h).
    """
    rng = np.random.default_rng(5)
    w, (x, y) = random_weights(rng, scale=0.5), data(rng, every_step)
    sigma, lam, n = 0.5, 0.4, 100_000
    samples, ms = smoothed_penalty_cost(w, x, y, hidden, output, sigma, lam, every_step, n, rng)
    mean, second = smoothed(hidden, ms, sigma)
    variance_sums = np.sum(second - mean**2, axis=2)  # (S, T+1)
    out_steps = list(range(1, T + 1)) if every_step else [T]
    dropped = lam * sigma**2 * (
        Y * sum(2 + variance_sums[:, t] for t in out_steps)
        + H * sum(2 + np.sum(x[:, t - 1] ** 2, axis=1) + variance_sums[:, t - 1] for t in range(1, T + 1))
    )
    model = build(w, hidden, output, sigma, lam, every_step)
    predicted = keras_cost(model, x, y) + np.mean(dropped)
    assert abs(samples.mean() - predicted) < 5 * samples.std() / np.sqrt(n)


# ------------------------------------------------------------------------- Keras plumbing
def test_cell_in_keras_rnn_matches_the_hoisted_layer_and_starts_from_m0():
    rng = np.random.default_rng(6)
    bandwidth = kd.Bandwidth(0.4)
    cell = DiffusedRNNCell(H, "erf", bandwidth=bandwidth, initial_state_initializer="random_normal")
    x = rng.normal(size=(S, T, X)).astype("float32")
    layer = DiffusedRNN(cell, return_sequences=True, return_state=True)
    (mean, second), last = layer(x)
    sequence = keras.layers.RNN(cell, return_sequences=True)(x)
    np.testing.assert_allclose(sequence[:, -1], last, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cell.get_initial_state(S)[0], np.tile(cell.initial_state.numpy(), (S, 1)))
    w = {"U": cell.kernel.numpy(), "V": cell.recurrent_kernel.numpy(), "a": cell.bias.numpy(), "m0": cell.initial_state.numpy()}
    erf_mean = lambda v: special.erf(v / np.sqrt(1 + 2 * 0.4**2))  # noqa: E731  Table 1, a = 1
    ms = [np.tile(w["m0"], (S, 1))]
    for t in range(T):
        ms.append(x[:, t] @ w["U"] + w["a"] + erf_mean(ms[-1]) @ w["V"])
    np.testing.assert_allclose(sequence, np.stack(ms[1:], axis=1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mean, erf_mean(np.stack(ms[1:], axis=1)), rtol=1e-4, atol=1e-5)
    assert np.all(second.numpy() - mean.numpy() ** 2 >= -1e-6)


def test_jit_compiled_training_step_matches_eager_graph():
    rng = np.random.default_rng(7)
    w, (x, y) = random_weights(rng), data(rng, False)
    results = []
    for jit in (False, True):
        model = build(w, "erf", "linear", sigma=0.5, lam=0.2, every_step=False, jit_compile=jit)
        loss = model.train_on_batch(x.astype("float32"), y.astype("float32"))
        results.append((loss, model.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for eager, jitted in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(eager, jitted, rtol=1e-4, atol=1e-6)
    assert not np.allclose(results[0][1][0], w["U"])


def test_save_and_load_keeps_sigma_predictions_and_one_shared_bandwidth(tmp_path):
    model = build_adding_rnn("diffusion", units=4, sigma=1.0, penalty=0.1, seed=3)
    kd.set_sigma(model, 0.35)
    x = np.random.default_rng(8).uniform(size=(5, 6, 2)).astype("float32")
    path = tmp_path / "adding.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert kd.get_sigma(loaded) == pytest.approx(0.35)
    assert len(kd.bandwidths(loaded)) == 1
    assert loaded.get_layer("rnn").cell.bandwidth is loaded.get_layer("output").bandwidth
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    kd.set_sigma(loaded, 0.0)
    assert not np.allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_compiled_recurrences_are_cached_per_activation_in_bounded_caches():
    from keras_diffusion.layers import scaled_recurrence

    x = np.random.default_rng(10).normal(size=(S, T, X)).astype("float32")
    for name in ("erf", "tanh", "sigmoid", "erf"):  # a second erf layer reuses the first's
        DiffusedRNN(DiffusedRNNCell(H, name, bandwidth=0.5, penalty=0.1))(x)
    for cached in (scaled_recurrence.scaled_recurrence, scaled_recurrence.scaled_sums):
        info = cached.cache_info()
        assert info.maxsize == scaled_recurrence.CACHE_SIZE
        assert info.currsize <= 3 and info.hits >= 1


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: DiffusedRNNCell(0), "units` must be an integer >= 1, got 0"),
        (lambda: DiffusedRNNCell(-2), "got -2"),
        (lambda: DiffusedOutput(0), "got 0"),
        (lambda: DiffusedRNNCell(3, "softsign"), "'softsign'.*'erf'"),
        (lambda: DiffusedOutput(1, "softsign"), "known activations"),
        (lambda: DiffusedRNNCell(3, penalty=-0.5), "penalty.*-0.5"),
        (lambda: DiffusedRNNCell(3, slope=float("inf")), "slope.*inf"),
        (lambda: DiffusedOutput(1, method="exact"), "method.*'exact'"),
        (lambda: DiffusedRNN(keras.layers.SimpleRNNCell(3)), "needs a DiffusedRNNCell"),
        (lambda: build_adding_rnn("adam"), "'diffusion', 'sgd'"),
    ],
)
def test_bad_arguments_name_the_value(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# ---------------------------------------------------------------------------- builders
def test_adding_builders_share_initial_weights_and_sgd_is_the_plain_rnn():
    diffusion = build_adding_rnn("diffusion", sigma=0.8, penalty=0.1, seed=11)
    sgd = build_adding_rnn("sgd", seed=11)
    assert kd.get_sigma(diffusion) == pytest.approx(0.8) and kd.get_sigma(sgd) == 0.0
    for a, b in zip(diffusion.get_weights(), sgd.get_weights()):
        if a.shape != ():  # every weight but sigma
            np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(9)
    x = np.stack([rng.uniform(size=(20, 10)), np.zeros((20, 10))], axis=-1).astype("float32")
    x[:, 2, 1] = x[:, 7, 1] = 1.0
    y = (x[:, 2, 0] + x[:, 7, 0])[:, None]
    # the test error is the sigma = 0 squared error, and the model's sigma is restored
    error = adding_test_error(diffusion, x, y)
    assert kd.get_sigma(diffusion) == pytest.approx(0.8)
    np.testing.assert_allclose(error, np.mean((sgd.predict(x, verbose=0) - y) ** 2), rtol=1e-5)
    sgd.compile(keras.optimizers.SGD(0.01), loss=SequenceSquaredError())
    np.testing.assert_allclose(sgd.evaluate(x, y, batch_size=20, verbose=0), error, rtol=1e-5)


@pytest.mark.parametrize("compiled", [False, True])
def test_forward_mode_products_through_the_compiled_recurrence_are_exact(compiled):
    """Forward-mode (ForwardAccumulator) products bypass the compiled recurrence, whose
    hand-written gradient cannot carry tangents: eagerly they equal the double-backward
    products; in a graph the plain loop refuses forward mode (TF's while loop), so "auto"
    falls back to double-backward instead of returning a wrong product."""
    from keras_diffusion.curvature import products

    cell = DiffusedRNNCell(4, activation="erf", bandwidth=0.5, penalty=1e-3)
    layer = DiffusedRNN(cell, return_sequences=True)
    x = np.random.default_rng(0).uniform(size=(3, 5, 2)).astype("float32")
    layer(x)
    params = [tf.identity(v.value) for v in layer.trainable_variables]
    vectors = [tf.random.stateless_normal(p.shape, (i, 1)) for i, p in enumerate(params)]

    def loss(ps):
        with keras.StatelessScope(state_mapping=list(zip(layer.trainable_variables, ps))):
            return tf.reduce_sum(tf.nest.flatten(layer(x))[0] ** 2)

    def products_of(mode):
        return products.hvp(loss, params, vectors, mode=mode)

    run = tf.function(products_of) if compiled else products_of
    forward, backward = run("auto" if compiled else "forward"), run("double_backward")
    for a, b in zip(forward, backward):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)
