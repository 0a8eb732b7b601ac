"""Sigma schedules (Mobahi 2016, Algorithm 1) acting on a model's shared Bandwidth."""

import glob
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_diffusion
from keras_diffusion import callbacks

TRACES = []


@keras.saving.register_keras_serializable(package="keras_diffusion_tests")
class SigmaScale(keras.layers.Layer):
    """``x * (1 + sigma)``; records every trace of ``call`` in ``TRACES``."""

    def __init__(self, bandwidth=None, **kwargs):
        super().__init__(**kwargs)
        self.bandwidth = keras_diffusion.bandwidth.resolve(bandwidth)

    def call(self, inputs):
        TRACES.append(None)
        return inputs * (1.0 + self.bandwidth.value)

    def get_config(self):
        return {**super().get_config(), "bandwidth": self.bandwidth}


class RecordSigma(keras.callbacks.Callback):
    """Reads sigma from the model inside every training batch (what the step really sees)."""

    def __init__(self):
        super().__init__()
        self.per_batch = []

    def on_train_batch_end(self, batch, logs=None):
        self.per_batch.append(keras_diffusion.get_sigma(self.model))


def scaled_model(sigma=1.0, shared=True):
    bandwidth = keras_diffusion.Bandwidth(sigma)
    inputs = keras.Input((2,))
    hidden = SigmaScale(bandwidth)(keras.layers.Dense(3)(inputs))
    outputs = SigmaScale(bandwidth if shared else keras_diffusion.Bandwidth(sigma))(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(outputs))
    model.compile("sgd", "mse")
    return model


def data(n=8):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 2)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def fit(model, schedule, epochs, batch_size=8, n=8, record=True):
    x, y = data(n)
    recorder = RecordSigma()
    history = model.fit(
        x, y, batch_size=batch_size, epochs=epochs, verbose=0,
        callbacks=[schedule, recorder] if record else [schedule],
    )
    return history, recorder.per_batch


@pytest.mark.parametrize(
    "schedule, expected",
    [
        (callbacks.GeometricSigma(2.0, rate=0.5), [2.0 * 0.5**k for k in range(5)]),
        (callbacks.GeometricSigma(2.0, rate=0.5, cutoff=0.3), [2.0, 1.0, 0.5, 0.0, 0.0]),
        (callbacks.PolynomialSigma(1.5, gamma=0.5), [1.5 / math.sqrt(1 + k) for k in range(5)]),
        (callbacks.LinearSigma(1.0, duration=3), [1.0, 2 / 3, 1 / 3, 0.0, 0.0]),
        (callbacks.StagedSigma([1.0, 0.4, 0.0], epochs_per_stage=2), [1.0, 1.0, 0.4, 0.4, 0.0]),
        (
            callbacks.StagedSigma([0.9, 0.2, 0.0], epochs_per_stage=[1, 3]),
            [0.9, 0.2, 0.2, 0.2, 0.0],
        ),
    ],
)
def test_epoch_schedules_set_and_log_sigma(schedule, expected):
    model = scaled_model(shared=False)
    history, seen = fit(model, schedule, epochs=5)
    np.testing.assert_allclose(seen, expected, rtol=1e-6)
    np.testing.assert_allclose(history.history["sigma"], expected, rtol=1e-6)
    for bandwidth in keras_diffusion.bandwidths(model):
        assert float(bandwidth.value) == pytest.approx(expected[-1])


def test_batch_unit_counts_steps_across_epochs():
    model = scaled_model()
    schedule = callbacks.LinearSigma(1.0, duration=4, unit="batch")
    history, seen = fit(model, schedule, epochs=3, batch_size=4, n=8)
    np.testing.assert_allclose(seen, [1.0, 0.75, 0.5, 0.25, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(history.history["sigma"], [0.75, 0.25, 0.0], rtol=1e-6)


def test_explicit_bandwidth_leaves_others_alone():
    model = scaled_model(sigma=1.0, shared=False)
    first, second = keras_diffusion.bandwidths(model)
    fit(model, callbacks.GeometricSigma(0.8, rate=0.5, bandwidth=first), epochs=2, record=False)
    assert float(first.value) == pytest.approx(0.4)
    assert float(second.value) == pytest.approx(1.0)


def test_plateau_ends_stages():
    model = scaled_model()
    schedule = callbacks.StagedSigma([1.0, 0.5, 0.0], monitor="fake", patience=2, min_delta=0.1)
    # fake metric per epoch: improves, then stalls for 2 epochs -> stage 1; stalls 2 -> stage 2.
    fake = iter([5.0, 4.0, 3.95, 3.99, 2.0, 2.0, 2.0, 1.0])

    class Fake(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["fake"] = next(fake)

    x, y = data()
    recorder = RecordSigma()
    model.fit(x, y, batch_size=8, epochs=8, verbose=0, callbacks=[Fake(), schedule, recorder])
    # epochs 0-3 at 1.0 (no improvement > 0.1 at epochs 2, 3), stage 2 after 2 stalls at 5, 6.
    np.testing.assert_allclose(recorder.per_batch, [1.0] * 4 + [0.5] * 3 + [0.0])
    assert schedule.stage == 2


def test_plateau_with_missing_metric_names_it():
    model = scaled_model()
    schedule = callbacks.StagedSigma([1.0, 0.0], monitor="val_loss", patience=1)
    with pytest.raises(KeyError, match="val_loss"):
        fit(model, schedule, epochs=2)


def test_assigning_sigma_does_not_retrace():
    model = scaled_model()
    TRACES.clear()
    fit(model, callbacks.GeometricSigma(1.0, rate=0.5), epochs=1)
    traces_after_one_epoch = len(TRACES)
    assert traces_after_one_epoch > 0
    fit(model, callbacks.StagedSigma([1.0, 0.6, 0.3, 0.0], epochs_per_stage=1), epochs=6)
    assert keras_diffusion.get_sigma(model) == 0.0
    assert len(TRACES) == traces_after_one_epoch


def test_sigma_reaches_tensorboard_event_files(tmp_path):
    model = scaled_model()
    schedule = callbacks.LinearSigma(0.6, duration=2, log_dir=tmp_path)
    fit(model, schedule, epochs=3)
    logged = {}
    for path in glob.glob(str(tmp_path / "train" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "epoch_sigma":
                    logged[event.step] = float(tf.make_ndarray(value.tensor))
    assert logged == pytest.approx({0: 0.6, 1: 0.3, 2: 0.0})


@pytest.mark.parametrize(
    "schedule",
    [
        callbacks.StagedSigma([1.0, 0.5, 0.0], monitor="loss", patience=3, min_delta=0.01),
        callbacks.StagedSigma([2.0, 0.0], epochs_per_stage=[4], log_key="bw"),
        callbacks.GeometricSigma(1.0, rate=0.9, cutoff=0.05, unit="batch"),
        callbacks.PolynomialSigma(1.0, gamma=2.0, verbose=1),
        callbacks.LinearSigma(0.5, duration=7, log_dir="/tmp/logs"),
    ],
)
def test_config_round_trip(schedule):
    config = schedule.get_config()
    restored = type(schedule).from_config(config)
    assert restored.get_config() == config
    serialized = keras.saving.serialize_keras_object(schedule)
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is type(schedule) and again.get_config() == config
    if not isinstance(schedule, callbacks.StagedSigma):
        assert [again.sigma_at(k) for k in range(10)] == [schedule.sigma_at(k) for k in range(10)]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: callbacks.StagedSigma([1.0, 0.5], epochs_per_stage=1), "end at 0"),
        (lambda: callbacks.StagedSigma([1.0, 1.0, 0.0], epochs_per_stage=1), "strictly decreasing"),
        (lambda: callbacks.StagedSigma([0.5, 1.0, 0.0], epochs_per_stage=1), "strictly decreasing"),
        (lambda: callbacks.StagedSigma([1.0, -0.5, 0.0], epochs_per_stage=1), "-0.5"),
        (lambda: callbacks.StagedSigma([float("nan"), 0.0], epochs_per_stage=1), "nan"),
        (lambda: callbacks.StagedSigma([], epochs_per_stage=1), "empty"),
        (lambda: callbacks.StagedSigma([1.0, 0.0]), "stopping rule"),
        (lambda: callbacks.StagedSigma([1.0, 0.5, 0.0], epochs_per_stage=[1]), "2 stages"),
        (lambda: callbacks.StagedSigma([1.0, 0.0], epochs_per_stage=0), "`epochs_per_stage` must be an integer >= 1, got 0"),
        (lambda: callbacks.StagedSigma([1.0, 0.0], monitor="loss", min_delta=-1.0), "min_delta.*got -1.0"),
        (lambda: callbacks.GeometricSigma(-1.0, rate=0.5), "-1.0"),
        (lambda: callbacks.GeometricSigma(float("inf"), rate=0.5), "inf"),
        (lambda: callbacks.GeometricSigma(1.0, rate=1.5), "1.5"),
        (lambda: callbacks.PolynomialSigma(1.0, gamma=float("nan")), "nan"),
        (lambda: callbacks.LinearSigma(1.0, duration=0), "`duration` must be an integer >= 1, got 0"),
        (lambda: callbacks.LinearSigma(1.0, duration=3, unit="step"), "'step'"),
    ],
)
def test_bad_schedules_name_the_value(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_model_without_bandwidth_is_an_error():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="no diffused layers"):
        fit(model, callbacks.LinearSigma(1.0, duration=2), epochs=1)


def test_staged_sigma_starting_later_derives_its_stage():
    # Without monitor the stage is a function of the epoch: epochs 0 | 1 2 | 3 | 4 ...
    model = scaled_model()
    schedule = callbacks.StagedSigma([1.0, 0.5, 0.2, 0.0], epochs_per_stage=[1, 2, 1])
    x, y = data()
    history = model.fit(x, y, epochs=5, initial_epoch=2, verbose=0, callbacks=[schedule])
    np.testing.assert_allclose(history.history["sigma"], [0.5, 0.2, 0.0], rtol=1e-6)
    # With monitor: the stage of the sigma the model holds (e.g. restored by a backup).
    for held, first in ((0.5, 0.5), (0.7, 1.0)):
        keras_diffusion.set_sigma(model, held)
        schedule = callbacks.StagedSigma([1.0, 0.5, 0.0], monitor="loss", patience=3)
        history = model.fit(x, y, epochs=3, initial_epoch=2, verbose=0, callbacks=[schedule])
        assert history.history["sigma"] == pytest.approx([first])
