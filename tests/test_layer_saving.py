"""A Bandwidth shared by every kind of layer stays one object through every Keras round trip.

Round trips: a ``.keras`` file, ``model.to_json()`` + ``keras.models.model_from_json``,
``keras.Model.from_config(model.get_config())`` and ``keras.models.clone_model``. After each the restored model holds one
Bandwidth, and assigning it moves every diffused layer (checked on the predictions against
the original model at the same sigma). Also: ``NormPreservingModel`` saves and loads with its
weight schedule, and the layer-level defects of issue 7.
"""

import json

import keras
import numpy as np
import pytest

import keras_diffusion as kd
from keras_diffusion import compat, regularizers
from keras_diffusion.layers import (
    DeepOutput,
    DeepTransitionRNN,
    DeepTransitionRNNCell,
    DiffusedActivation,
    DiffusedOutput,
    DiffusedRNN,
    DiffusedRNNCell,
)

B, T, F, H = 2, 3, 2, 3
X = np.random.default_rng(0).normal(size=(B, T, F)).astype("float32")


def every_layer_model(sigma, other=None):
    """Every layer of the package holding ``sigma``; ``other`` (a second Bandwidth) in one."""
    inputs = keras.Input((T, F))
    x = keras.layers.RNN(DiffusedRNNCell(H, bandwidth=sigma), return_sequences=True)(inputs)
    moments = DiffusedRNN(
        DiffusedRNNCell(H, "tanh", bandwidth=sigma, penalty=0.1), return_sequences=True
    )(x)
    x = DiffusedOutput(H, "erf", bandwidth=sigma, penalty=0.1)(moments)
    x = DeepTransitionRNN(
        DeepTransitionRNNCell(H, [4], activation="erf", bandwidth=sigma), return_sequences=True
    )(x)
    x = keras.layers.RNN(DeepTransitionRNNCell(H, bandwidth=sigma), return_sequences=True)(x)
    x = DeepOutput([4], bandwidth=sigma)(x)
    x = DiffusedActivation("erf", bandwidth=sigma)(x)
    if other is not None:
        x = DiffusedActivation("relu", bandwidth=other)(x)
    return keras.Model(inputs, x)


def holders(model):
    """The Bandwidth of every layer and cell that holds one."""
    return [
        layer.bandwidth
        for layer in compat.flatten_layers(model)
        if not isinstance(layer, kd.Bandwidth) and getattr(layer, "bandwidth", None) is not None
    ]


def restored_by(route, model, tmp_path):
    if route == "keras_file":
        model.save(tmp_path / "model.keras")
        return keras.models.load_model(tmp_path / "model.keras")
    if route == "json":
        restored = keras.models.model_from_json(model.to_json())
    elif route == "clone_model":
        restored = keras.models.clone_model(model)
    else:
        restored = keras.Model.from_config(model.get_config())
    restored.set_weights(model.get_weights())
    return restored


@pytest.mark.parametrize("route", ["keras_file", "json", "from_config", "clone_model"])
def test_one_shared_bandwidth_survives_every_round_trip(route, tmp_path):
    sigma = kd.Bandwidth(0.6)
    model = every_layer_model(sigma)
    assert len(holders(model)) == 8 and len(kd.bandwidths(model)) == 1
    json.dumps(model.get_config())  # JSON all the way down
    kd.set_sigma(model, 0.4)
    restored = restored_by(route, model, tmp_path)

    shared = holders(restored)
    assert len(shared) == 8 and all(b is shared[0] for b in shared)
    assert kd.bandwidths(restored) == [shared[0]] and shared[0] is not sigma
    assert kd.get_sigma(restored) == pytest.approx(0.4)
    np.testing.assert_allclose(restored(X), model(X), rtol=1e-5, atol=1e-6)
    # assigning the one restored bandwidth moves every layer, as in the original model
    shared[0].assign(0.0)
    sigma.assign(0.0)
    np.testing.assert_allclose(restored(X), model(X), rtol=1e-5, atol=1e-6)
    assert kd.get_sigma(model) == 0.0
    shared[0].assign(0.9)
    assert kd.get_sigma(model) == 0.0  # the original is not linked to the restored model


@pytest.mark.parametrize("route", ["keras_file", "json", "from_config"])
def test_distinct_bandwidths_stay_distinct_and_restorations_are_independent(route, tmp_path):
    sigma, other = kd.Bandwidth(0.5), kd.Bandwidth(0.2)
    model = every_layer_model(sigma, other)
    first, second = restored_by(route, model, tmp_path), restored_by(route, model, tmp_path)
    def sigmas(restored):
        return sorted(float(b.variable.numpy()) for b in kd.bandwidths(restored))

    for restored in (first, second):
        assert sigmas(restored) == pytest.approx([0.2, 0.5])
        assert len([w for w in restored.weights if w.name == "sigma"]) == 2
    kd.set_sigma(first, 0.0)
    assert sigmas(first) == [0.0, 0.0] and sigmas(second) == pytest.approx([0.2, 0.5])


def test_layer_from_config_twice_gives_independent_copies():
    layer = DiffusedActivation("erf", bandwidth=kd.Bandwidth(0.3))
    config = json.loads(json.dumps(layer.get_config()))
    copies = [DiffusedActivation.from_config(config) for _ in range(2)]
    assert copies[0].bandwidth is not copies[1].bandwidth
    assert layer.bandwidth not in (copies[0].bandwidth, copies[1].bandwidth)
    assert all(c.get_config() == layer.get_config() for c in copies)


def test_bandwidth_config_carries_the_shared_object_id():
    sigma = kd.Bandwidth(0.3)
    config = kd.bandwidth.serialize(sigma)
    assert config["shared_object_id"] == sigma.sharing_key
    assert config["config"]["sigma"] == 0.3
    restored = kd.bandwidth.resolve(config)  # no owner: a new bandwidth from the config
    assert isinstance(restored, kd.Bandwidth) and restored is not sigma
    with pytest.raises(TypeError, match="does not describe a Bandwidth"):
        kd.bandwidth.resolve(keras.saving.serialize_keras_object(keras.layers.Dense(1)))
    assert kd.bandwidth.serialize(None) is None


def test_keras_rnn_of_one_cell_sharing_sigma_with_another_layer_loads(tmp_path):
    """The defect: 'Layer bandwidth_N expected 1 variables, but received 0' on loading."""
    for cell in (DiffusedRNNCell, DeepTransitionRNNCell):
        sigma = kd.Bandwidth(0.5)
        inputs = keras.Input((T, F))
        hidden = keras.layers.RNN(cell(H, bandwidth=sigma))(inputs)
        model = keras.Model(inputs, DiffusedActivation("erf", bandwidth=sigma)(hidden))
        kd.set_sigma(model, 0.25)
        model.save(tmp_path / "rnn.keras")
        loaded = keras.models.load_model(tmp_path / "rnn.keras")
        assert loaded.layers[1].cell.bandwidth is loaded.layers[2].bandwidth
        assert kd.get_sigma(loaded) == pytest.approx(0.25)
        np.testing.assert_allclose(loaded(X), model(X), rtol=1e-6)


def test_deep_transition_rnn_from_its_own_config():
    layer = DeepTransitionRNN(
        DeepTransitionRNNCell(H, [4], shortcut=True, bandwidth=0.5), return_sequences=True
    )
    layer(X)
    copy = DeepTransitionRNN.from_config(layer.get_config())
    copy(X)
    copy.set_weights(layer.get_weights())
    np.testing.assert_allclose(copy(X), layer(X), rtol=1e-6)
    assert copy.return_sequences and copy.cell.transition_units == (4,)


def test_deep_transition_rnn_mixed_precision_around_a_float32_cell():
    """As keras.layers.RNN: the cell computes in float32, the outputs are float16."""
    cell = DeepTransitionRNNCell(H, [4], shortcut=True)
    layer = DeepTransitionRNN(cell, return_sequences=True, dtype="mixed_float16")
    reference = keras.layers.RNN(cell, return_sequences=True, dtype="mixed_float16")
    out = layer(X)
    assert out.dtype == "float16" and cell.compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in layer.weights)
    np.testing.assert_allclose(np.asarray(out, "float32"), np.asarray(reference(X), "float32"),
                               rtol=1e-3, atol=1e-3)


def test_diffused_rnn_mixed_precision_around_a_float32_cell():
    cell = DiffusedRNNCell(H, "erf", bandwidth=0.5)
    mixed = DiffusedRNN(cell, return_sequences=True, dtype="mixed_float16")
    plain = DiffusedRNN(cell, return_sequences=True)
    (mean, second), (mean32, second32) = mixed(X), plain(X)
    assert mean.dtype == second.dtype == "float16"
    np.testing.assert_allclose(np.asarray(mean, "float32"), mean32, rtol=2e-3, atol=2e-3)


def test_a_subclass_build_of_diffused_activation_runs():
    class Scaled(DiffusedActivation):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, inputs):
            return super().call(inputs) * self.scale

    layer = Scaled("erf", bandwidth=0.0)
    assert not layer.built
    out = layer(np.ones((1, 3), "float32"))
    assert layer.built and layer.scale.shape == (3,)
    np.testing.assert_allclose(out, np.full((1, 3), 0.8427008), rtol=1e-6)


def test_norm_preserving_model_saves_and_loads_with_its_schedule(tmp_path):
    rnn = DeepTransitionRNN(DeepTransitionRNNCell(H), return_sequences=True, name="recurrent")
    inputs = keras.Input((T, F))
    base = keras.Model(inputs, keras.layers.Dense(1)(rnn(inputs)))
    weight = regularizers.OmegaWeight(0.5, decay_steps=3, start=1)
    model = regularizers.NormPreservingModel(base, rnn, weight=weight)
    model.compile(keras.optimizers.SGD(0.05), loss="mse")
    y = np.random.default_rng(1).normal(size=(B, T, 1)).astype("float32")
    model.fit(X, y, epochs=2, verbose=0)
    model.save(tmp_path / "omega.keras")
    loaded = keras.models.load_model(tmp_path / "omega.keras")

    assert isinstance(loaded, regularizers.NormPreservingModel)
    assert loaded.layer is loaded.model.get_layer("recurrent")
    assert loaded.weight.get_config() == weight.get_config()
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0), rtol=1e-6)
    # the restored schedule and step count give the same next step
    model.train_on_batch(X, y)
    loaded.train_on_batch(X, y)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
