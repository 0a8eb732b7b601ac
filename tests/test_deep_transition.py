"""DeepTransitionRNNCell / DeepTransitionRNN / DeepOutput: equations against numpy, the
SimpleRNN identity case, masking, dropout, serialization, jit, mixed precision, stacking."""

import keras
import numpy as np
import pytest

import keras_diffusion as kd
from keras_diffusion.initializers import SparseRecurrent
from keras_diffusion.layers.deep_output import DeepOutput
from keras_diffusion.layers.deep_transition import DeepTransitionRNN, DeepTransitionRNNCell

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 7, 4)).astype("float32")


def _numpy_deep_transition(cell, x):
    """h[t] = tanh(W_L relu(W_1 h + U x + b_1) + b + S h), written out in numpy."""
    w = {v.path.split("/")[-1]: np.asarray(v) for v in cell.weights}
    h, outputs = np.zeros((x.shape[0], cell.units)), []
    for t in range(x.shape[1]):
        z = np.maximum(x[:, t] @ w["kernel"] + h @ w["recurrent_kernel"] + w["bias"], 0)
        pre = z @ w["transition_kernel_2"] + w["transition_bias_2"]
        if cell.shortcut:
            pre = pre + h @ w["shortcut_kernel"]
        h = np.tanh(pre)
        outputs.append(h)
    return np.stack(outputs, 1)


def _randomize(layer, scale=0.5):
    for v in layer.weights:
        v.assign(RNG.normal(scale=scale, size=v.shape))


@pytest.mark.parametrize("shortcut", [False, True])
def test_dt_and_dts_match_numpy_equations(shortcut):
    cell = DeepTransitionRNNCell(5, [6], shortcut=shortcut, transition_activation="relu")
    layer = DeepTransitionRNN(cell, return_sequences=True)
    layer(X)
    _randomize(layer)
    np.testing.assert_allclose(layer(X), _numpy_deep_transition(cell, X), rtol=1e-5, atol=1e-5)
    # the hoisted layer and the plain keras RNN over the same cell agree
    np.testing.assert_allclose(layer(X), keras.layers.RNN(cell, return_sequences=True)(X),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("options", [dict(go_backwards=True), dict(unroll=True),
                                     dict(return_sequences=False, return_state=True)])
def test_rnn_options_agree_with_keras_rnn(options):
    cell = DeepTransitionRNNCell(5, [6], shortcut=True)
    options = {"return_sequences": True, **options}
    mask = np.ones((3, 7), bool)
    mask[0, 4:] = False
    hoisted = DeepTransitionRNN(cell, **options)(X, mask=mask)
    reference = keras.layers.RNN(cell, **options)(X, mask=mask)
    for a, b in zip(*(r if isinstance(r, (list, tuple)) else [r] for r in (hoisted, reference))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_identity_intermediate_layer_gives_simple_rnn():
    simple = keras.layers.SimpleRNN(5, return_sequences=True)
    simple(X)
    _randomize(simple)
    kernel, recurrent, bias = (np.asarray(v) for v in simple.weights)
    cell = DeepTransitionRNNCell(5, [5], shortcut=True, transition_activation="linear")
    layer = DeepTransitionRNN(cell, return_sequences=True)
    layer(X)
    cell.kernel.assign(kernel)
    cell.recurrent_kernel.assign(recurrent)
    cell.bias.assign(np.zeros(5))
    cell.transition_kernels[0].assign(np.eye(5))
    cell.transition_biases[0].assign(bias)
    cell.shortcut_kernel.assign(np.zeros((5, 5)))
    np.testing.assert_allclose(layer(X), simple(X), rtol=1e-5, atol=1e-6)


def test_return_state_and_masked_steps_carry_state():
    cell = DeepTransitionRNNCell(4, [3], shortcut=True)
    layer = DeepTransitionRNN(cell, return_sequences=True, return_state=True)
    mask = np.ones((3, 7), bool)
    mask[0, 3:] = False
    mask[1, 2] = False
    seq, state = layer(X, mask=mask)
    seq, state = np.asarray(seq), np.asarray(state)
    full, _ = layer(X[:1, :3])
    np.testing.assert_allclose(state[0], np.asarray(full)[0, -1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seq[1, 2], seq[1, 1], rtol=0, atol=0)  # masked step carries h
    _, unmasked_state = layer(X)
    np.testing.assert_allclose(state[2], np.asarray(unmasked_state)[2], rtol=1e-6)


def test_dropout_masks_are_per_sequence_and_off_at_inference():
    cell = DeepTransitionRNNCell(5, [6], transition_activation="relu", dropout=0.5,
                                 recurrent_dropout=0.5, seed=1)
    layer = DeepTransitionRNN(cell, return_sequences=True)
    layer(X)  # builds the weights
    _randomize(layer)
    inference = np.asarray(layer(X))
    np.testing.assert_allclose(inference, _numpy_deep_transition(cell, X), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(layer(X, training=True)), inference)
    # with given masks (the RNN caches one mask per sequence), training applies the input
    # mask to every step's x and the recurrent mask to every step's h[t-1]
    x_mask = RNG.integers(0, 2, size=(3, 4)).astype("float32") * 2
    h_mask = RNG.integers(0, 2, size=(3, 5)).astype("float32") * 2
    cell._dropout_mask, cell._recurrent_dropout_mask = x_mask, h_mask
    trained = np.asarray(layer(X, training=True))
    w = {v.path.split("/")[-1]: np.asarray(v) for v in cell.weights}
    h, expected = np.zeros((3, 5)), []
    for t in range(X.shape[1]):
        hd = h * h_mask
        z = np.maximum((X[:, t] * x_mask) @ w["kernel"] + hd @ w["recurrent_kernel"] + w["bias"], 0)
        h = np.tanh(z @ w["transition_kernel_2"] + w["transition_bias_2"])
        expected.append(h)
    np.testing.assert_allclose(trained, np.stack(expected, 1), rtol=1e-5, atol=1e-5)


def test_save_load_round_trip_keeps_shared_bandwidth(tmp_path):
    sigma = kd.Bandwidth(0.6)
    inputs = keras.Input((7, 4))
    h = DeepTransitionRNN(
        DeepTransitionRNNCell(5, [6], shortcut=True, activation="tanh",
                              transition_activation="erf", bandwidth=sigma),
        return_sequences=True,
    )(inputs)
    out = keras.layers.Dense(2)(DeepOutput([4], activation="relu", bandwidth=sigma)(h))
    model = keras.Model(inputs, out)
    assert len(kd.bandwidths(model)) == 1
    kd.set_sigma(model, 0.3)
    path = tmp_path / "dt.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert len(kd.bandwidths(loaded)) == 1
    assert kd.get_sigma(loaded) == pytest.approx(0.3)
    np.testing.assert_allclose(loaded(X), model(X), rtol=1e-6, atol=1e-6)


def test_diffused_cell_at_sigma_zero_is_the_plain_cell():
    sigma = kd.Bandwidth(0.0)
    plain = DeepTransitionRNN(DeepTransitionRNNCell(5, [6], shortcut=True,
                                                    transition_activation="relu"),
                              return_sequences=True)
    diffused = DeepTransitionRNN(DeepTransitionRNNCell(5, [6], shortcut=True,
                                                       transition_activation="relu",
                                                       bandwidth=sigma),
                                 return_sequences=True)
    plain(X), diffused(X)
    for a, b in zip(plain.weights, diffused.weights):
        b.assign(a)
    np.testing.assert_allclose(diffused(X), plain(X), rtol=1e-5, atol=1e-6)
    sigma.assign(0.7)
    assert not np.allclose(diffused(X), plain(X), atol=1e-3)
    # at sigma > 0 every activation is the diffused mean at the shared sigma
    w = {v.path.split("/")[-1]: np.asarray(v) for v in diffused.cell.weights}
    mean = kd.activations.diffused_mean
    h, expected = np.zeros((3, 5), "float32"), []
    for t in range(X.shape[1]):
        z = mean("relu", X[:, t] @ w["kernel"] + h @ w["recurrent_kernel"] + w["bias"], 0.7)
        pre = np.asarray(z) @ w["transition_kernel_2"] + w["transition_bias_2"]
        h = np.asarray(mean("tanh", pre + h @ w["shortcut_kernel"], 0.7))
        expected.append(h)
    np.testing.assert_allclose(diffused(X), np.stack(expected, 1), rtol=1e-4, atol=1e-5)


def test_plain_round_trip_and_jit_compile(tmp_path):
    sparse = SparseRecurrent(3, singular_value=1.0, seed=0)
    model = keras.Sequential([
        keras.Input((7, 4)),
        DeepTransitionRNN(DeepTransitionRNNCell(5, [6, 4], shortcut=True,
                                                recurrent_initializer=sparse),
                          return_sequences=True),
        DeepOutput([3]),
        keras.layers.Dense(1),
    ])
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(X), model(X), rtol=1e-6, atol=1e-6)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    y = np.zeros((3, 7, 1), "float32")
    before = model.evaluate(X, y, verbose=0)
    model.fit(X, y, epochs=3, verbose=0)
    assert model.evaluate(X, y, verbose=0) < before


def test_stacked_cells_in_keras_rnn():
    cells = [DeepTransitionRNNCell(5, [6], shortcut=True), DeepTransitionRNNCell(4)]
    layer = keras.layers.RNN(cells, return_sequences=True)
    y = np.asarray(layer(X))
    assert y.shape == (3, 7, 4)
    first = keras.layers.RNN(cells[0], return_sequences=True)(X)
    second = keras.layers.RNN(cells[1], return_sequences=True)(first)
    np.testing.assert_allclose(y, second, rtol=1e-5, atol=1e-6)


def test_stacked_with_diffused_cells_round_trip(tmp_path):
    sigma = kd.Bandwidth(0.5)
    cells = [DeepTransitionRNNCell(5, [6], bandwidth=sigma, activation="erf"),
             DeepTransitionRNNCell(4, bandwidth=sigma, activation="tanh")]
    model = keras.Sequential([keras.Input((7, 4)), keras.layers.RNN(cells),
                              DeepOutput([3], bandwidth=sigma)])
    assert model(X).shape == (3, 3)
    assert len(kd.bandwidths(model)) == 1
    model.save(tmp_path / "stacked.keras")
    loaded = keras.models.load_model(tmp_path / "stacked.keras")
    assert len(kd.bandwidths(loaded)) == 1
    np.testing.assert_allclose(loaded(X), model(X), rtol=1e-6, atol=1e-6)


def test_mixed_precision():
    def build():
        layer = DeepTransitionRNN(DeepTransitionRNNCell(5, [6], shortcut=True),
                                  return_sequences=True)
        head = DeepOutput([3])
        head(layer(X))
        return layer, head

    reference_layer, reference_head = build()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer, head = build()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for a, b in zip(reference_layer.weights + reference_head.weights,
                    layer.weights + head.weights):
        b.assign(a)
    out = head(layer(X))
    assert layer.compute_dtype == "float16" and out.dtype == "float16"
    assert all(w.dtype == "float32" for w in layer.weights + head.weights)
    # the float16 computation agrees with the float32 one to float16 accuracy
    expected = np.asarray(reference_head(reference_layer(X)))
    np.testing.assert_allclose(np.asarray(out, "float32"), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(units=0), r"`units` must be an integer >= 1, got 0"),
        (dict(units=4, transition_units=[8, -1]), r"got -1.*bad entry in \[8, -1\].*width >= 1"),
        (dict(units=4, shortcut=True), "shortcut=True needs a deep transition"),
        (dict(units=4, activation="nope"), "Unknown activation 'nope'.*bandwidth="),
        (dict(units=4, dropout=1.5), r"dropout` must be in \[0, 1\], got 1.5"),
        (dict(units=4, recurrent_dropout=1.0), r"recurrent_dropout` must be < 1.*got 1.0"),
        (dict(units=4, activation="softplus", bandwidth=0.5),
         "Unknown diffused activation 'softplus'.*drop bandwidth="),
    ],
)
def test_bad_configurations_name_value_and_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepTransitionRNNCell(**kwargs)


def test_bad_deep_output_and_wrapper_arguments():
    with pytest.raises(ValueError, match=r"units` must be an integer >= 1, got 0.*bad entry in \[4, 0\]"):
        DeepOutput([4, 0])
    with pytest.raises(TypeError, match="needs one DeepTransitionRNNCell"):
        DeepTransitionRNN(keras.layers.SimpleRNNCell(3))
