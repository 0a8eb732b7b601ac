"""Per-step sigma schedules (unit="batch") under ``compile(steps_per_execution=S)``.

Every train step must train at ``sigma_at(k)`` of its own step ``k``, whatever ``S``: the
schedule is evaluated in the graph of the train step (``Bandwidth.drive``), not by a callback
that runs once per execution of ``S`` steps. A tape layer records the sigma each training
forward pass really sees, counting the steps itself (independently of the optimizer).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_diffusion as kd
from keras_diffusion import callbacks

STEPS = 18  # 2 epochs of 9 batches: not a multiple of 4 or 7 (partial executions)


class SigmaTape(keras.layers.Layer):
    """Identity that writes the bandwidth's value into ``tape[step]`` at each training call."""

    def __init__(self, bandwidth, steps, **kwargs):
        super().__init__(**kwargs)
        self.bandwidth = bandwidth
        self.steps = steps

    def build(self, input_shape):
        self.tape = self.add_weight(shape=(self.steps,), initializer="zeros", trainable=False)
        self.count = self.add_weight(shape=(), initializer="zeros", dtype="int32",
                                     trainable=False)

    def call(self, inputs, training=False):
        if training:
            sigma = tf.cast(self.bandwidth.value, "float32")
            index = tf.reshape(tf.convert_to_tensor(self.count), (1, 1))
            self.tape.assign(tf.tensor_scatter_nd_update(self.tape, index, [sigma]))
            self.count.assign_add(1)
        return inputs


def arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(36, 3)).astype("float32")
    return x, np.sin(x.sum(axis=1, keepdims=True)).astype("float32")


def train(schedule, steps_per_execution, jit_compile=False, tape_steps=STEPS):
    keras.utils.set_random_seed(0)
    sigma = kd.Bandwidth(1.0)
    layers = [
        keras.Input((3,)),
        keras.layers.Dense(6),
        kd.layers.DiffusedActivation("tanh", bandwidth=sigma),
    ]
    model = keras.Sequential(layers + [SigmaTape(sigma, tape_steps), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
    x, y = arrays()
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                        callbacks=[schedule])
    return model, history


def expected(schedule, steps=STEPS):
    return np.array([schedule.sigma_at(k) for k in range(steps)], "float32")


def tape_of(model):
    return next(layer for layer in model.layers if isinstance(layer, SigmaTape)).tape.numpy()


SCHEDULES = [
    lambda: callbacks.GeometricSigma(1.0, rate=0.8, cutoff=0.05, unit="batch"),
    lambda: callbacks.PolynomialSigma(2.0, gamma=0.7, cutoff=0.3, unit="batch"),
    lambda: callbacks.LinearSigma(1.0, duration=11, unit="batch"),
]


@pytest.mark.parametrize("make", SCHEDULES)
def test_every_step_trains_at_its_own_sigma(make):
    weights = {}
    for steps_per_execution in (1, 4, 7):
        schedule = make()
        model, history = train(schedule, steps_per_execution)
        np.testing.assert_allclose(tape_of(model), expected(schedule), rtol=1e-6, atol=0)
        # Epoch logs: the sigma of each epoch's last step; afterwards the model holds it.
        np.testing.assert_allclose(history.history["sigma"], expected(schedule)[[8, 17]],
                                   rtol=1e-6)
        assert kd.get_sigma(model) == pytest.approx(expected(schedule)[-1])
        weights[steps_per_execution] = model.get_weights()
    for steps_per_execution in (4, 7):
        for a, b in zip(weights[1], weights[steps_per_execution]):
            np.testing.assert_array_equal(a, b)


def test_sigma_of_the_bug_report():
    # Issue 12: after 40 steps at 4 steps per execution sigma was 0.975 where the linear
    # schedule gives 0.025.
    schedule = callbacks.LinearSigma(1.0, duration=40, unit="batch")
    assert schedule.sigma_at(39) == pytest.approx(0.025)
    keras.utils.set_random_seed(0)
    sigma = kd.Bandwidth(1.0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2),
                              kd.layers.DiffusedActivation("tanh", bandwidth=sigma),
                              SigmaTape(sigma, 40), keras.layers.Dense(1)])
    model.compile("sgd", "mse", steps_per_execution=4)
    x = np.zeros((160, 3), "float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0, callbacks=[schedule])
    assert tape_of(model)[39] == pytest.approx(0.025)
    assert kd.get_sigma(model) == pytest.approx(0.025)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_jit_compile_and_mixed_precision(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        runs = [train(SCHEDULES[0](), s, jit_compile=True)[0] for s in (1, 7)]
    finally:
        keras.config.set_dtype_policy(previous)
    reference = expected(SCHEDULES[0]())
    for model in runs:
        if policy == "float32":
            np.testing.assert_allclose(tape_of(model), reference, rtol=1e-6)
        else:  # the layers cast sigma to float16
            np.testing.assert_allclose(tape_of(model), reference, rtol=1e-3)
    for a, b in zip(runs[0].get_weights(), runs[1].get_weights()):
        np.testing.assert_array_equal(a, b)


def test_annealed_step_reads_the_step_sigma():
    # AnnealedStep's step length is proportional to the bandwidth's sigma (Mobahi 2016,
    # sec. 5.2): it must read the same per-step sigma inside an execution.
    def run(steps_per_execution):
        keras.utils.set_random_seed(0)
        sigma = kd.Bandwidth(1.0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(6),
                                  kd.layers.DiffusedActivation("tanh", bandwidth=sigma),
                                  keras.layers.Dense(1)])
        model.compile(kd.optimizers.AnnealedStep(0.1, bandwidth=sigma), "mse",
                      steps_per_execution=steps_per_execution)
        x, y = arrays()
        schedule = callbacks.LinearSigma(1.0, duration=11, unit="batch")
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[schedule])
        return model.get_weights()

    one, many = run(1), run(5)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)


def test_mirrored_strategy(mirrored_strategy):
    def run(strategy, steps_per_execution):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            sigma = kd.Bandwidth(1.0)
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(6),
                                      kd.layers.DiffusedActivation("tanh", bandwidth=sigma),
                                      keras.layers.Dense(1)])
            model.compile(keras.optimizers.SGD(0.1), "mse",
                          steps_per_execution=steps_per_execution)
        x, y = arrays()
        schedule = callbacks.GeometricSigma(1.0, rate=0.8, unit="batch")
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                            callbacks=[schedule])
        return model.get_weights(), history.history["sigma"]

    single, sigmas = run(tf.distribute.get_strategy(), 1)
    mirrored, mirrored_sigmas = run(mirrored_strategy, 1)
    np.testing.assert_allclose(mirrored_sigmas, sigmas, rtol=1e-6)
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_later_fit_without_the_schedule_holds_sigma():
    schedule = SCHEDULES[2]()
    model, _ = train(schedule, 4, tape_steps=STEPS + 9)
    held = kd.get_sigma(model)
    kd.set_sigma(model, 0.5)  # the driven train function must not override it afterwards
    x, y = arrays()
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(tape_of(model)[STEPS:], 0.5)
    assert kd.get_sigma(model) == 0.5 and held == pytest.approx(expected(schedule)[-1])


def test_learned_bandwidth_refuses_a_schedule():
    sigma = kd.Bandwidth(0.3, learned=True)
    with pytest.raises(ValueError, match="is learned"):
        sigma.drive(lambda held: held)
