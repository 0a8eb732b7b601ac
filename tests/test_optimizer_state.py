"""Optimizer state in variables (saved and restored), the diagnostics channel to the fit logs,
and the one non-finite guard, for GaussNewton and AnnealedStep."""

import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from closure_reference import L2, data, terms, tiny_model

import keras_diffusion as kd
from keras_diffusion.curvature import solvers
from keras_diffusion.optimizers import AnnealedStep, DiagnosticsLogger, GaussNewton, guard

def _gauss_newton_model(damping=0.3):
    model = tiny_model()
    model.compile(
        optimizer=GaussNewton(damping=damping, cg_max_iterations=4, cg_tol=0.0),
        loss="mse",
        jit_compile=False,
    )
    return model


# --- State: a variable, saved and restored ----------------------------------------------


def test_damping_is_a_variable_and_config_keeps_the_initial_value():
    optimizer = GaussNewton(damping=0.3)
    model = tiny_model()
    optimizer.build(model.trainable_variables)
    assert isinstance(optimizer.damping, keras.Variable)
    assert float(optimizer.damping.value) == pytest.approx(0.3)
    assert any(v is optimizer.damping for v in optimizer.variables)
    optimizer.damping.assign(7.0)  # what an adaptive subclass does
    assert optimizer.get_config()["damping"] == pytest.approx(0.3)
    assert set(optimizer.diagnostics) == {
        "rejected_steps", "damping", "cg_iterations", "cg_stop_reason", "step_norm"
    }


def _adapted(model):
    """Trains one step, then sets state a constructor cannot reproduce."""
    x, y, _ = data()
    model.fit(x, y, batch_size=6, epochs=1, verbose=0)
    model.optimizer.damping.assign(0.0125)
    model.optimizer.rejected_steps.assign(3)
    return {v.path: np.asarray(v.value) for v in model.optimizer.variables}


def test_keras_file_restores_optimizer_state(tmp_path):
    model = _gauss_newton_model()
    saved = _adapted(model)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    restored = {v.path: np.asarray(v.value) for v in loaded.optimizer.variables}
    assert restored.keys() == saved.keys()
    for key, value in saved.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
    assert float(loaded.optimizer.damping.value) == np.float32(0.0125)
    assert loaded.optimizer.get_config()["damping"] == pytest.approx(0.3)


@pytest.mark.parametrize("how", ["checkpoint", "weights"])
def test_checkpoint_and_weights_files_restore_optimizer_state(tmp_path, how):
    model = _gauss_newton_model()
    saved = _adapted(model)
    fresh = _gauss_newton_model()
    fresh.optimizer.build(fresh.trainable_variables)
    if how == "checkpoint":
        prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
            os.path.join(tmp_path, "ckpt")
        )
        tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).read(prefix).assert_consumed()
    else:  # what keras.callbacks.BackupAndRestore writes and reads
        path = os.path.join(tmp_path, "model.weights.h5")
        model.save_weights(path)
        fresh.load_weights(path)
    restored = {v.path: np.asarray(v.value) for v in fresh.optimizer.variables}
    for key, value in saved.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
    assert int(fresh.optimizer.iterations) == 1


def test_adapted_damping_is_the_one_used():
    x, y, _ = data()
    model = tiny_model()
    W, b = (v.numpy().astype(np.float64) for v in model.trainable_weights)
    model.compile(optimizer=GaussNewton(damping=5.0, cg_max_iterations=8, cg_tol=0.0),
                  loss="mse", jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    model.optimizer.damping.assign(0.1)
    model.fit(x, y, batch_size=6, epochs=1, verbose=0)
    _, grad, _, _, ggn, _ = terms(W, b, x, y, np.ones(6), L2)
    step = -np.linalg.solve(ggn + 0.1 * np.eye(8), grad)
    got = np.concatenate([np.ravel(v) for v in model.get_weights()])
    np.testing.assert_allclose(got, np.concatenate([W.ravel(), b]) + step, rtol=1e-4, atol=1e-5)


# --- Diagnostics in History, CSVLogger -------------------------------------------------


def test_gauss_newton_diagnostics_reach_history_and_csv(tmp_path):
    x, y, _ = data()
    model = tiny_model()
    W, b = (v.numpy().astype(np.float64) for v in model.trainable_weights)
    model.compile(optimizer=GaussNewton(damping=0.2, cg_max_iterations=5, cg_tol=0.0),
                  loss="mse", jit_compile=False)
    path = os.path.join(tmp_path, "log.csv")
    history = model.fit(x, y, batch_size=6, epochs=1, verbose=0,
                        callbacks=[keras.callbacks.CSVLogger(path)]).history
    _, grad, _, _, ggn, _ = terms(W, b, x, y, np.ones(6), L2)
    # Five CG steps from zero on the dense system: the step the optimizer took.
    step = np.zeros(8)
    r = -grad - (ggn + 0.2 * np.eye(8)) @ step
    p = r.copy()
    for _ in range(5):
        ap = (ggn + 0.2 * np.eye(8)) @ p
        alpha = (r @ r) / (p @ ap)
        step, r_new = step + alpha * p, r - alpha * ap
        p, r = r_new + (r_new @ r_new) / (r @ r) * p, r_new
    assert history["cg_iterations"] == [5.0]
    assert history["cg_stop_reason"] == [float(solvers.MAX_ITERATIONS)]
    assert history["damping"] == [pytest.approx(0.2)]
    assert history["rejected_steps"] == [0.0]
    assert history["step_norm"][0] == pytest.approx(np.linalg.norm(step), rel=1e-4)
    with open(path) as f:
        row = next(csv.DictReader(f))
    for key in ("cg_iterations", "cg_stop_reason", "damping", "rejected_steps", "step_norm"):
        assert float(row[key]) == pytest.approx(history[key][0], rel=1e-6), key


class _SigmaOffset(keras.layers.Layer):
    def __init__(self, bandwidth, **kwargs):
        super().__init__(**kwargs)
        self.bandwidth = bandwidth

    def call(self, inputs):
        return inputs + self.bandwidth.value


@pytest.mark.parametrize("cls", [kd.Model, keras.Model])
def test_annealed_step_diagnostics_with_kd_model_or_logger(cls, tmp_path):
    x, y, _ = data(n=8)
    y[0, 0] = np.nan  # the first batch is rejected
    bandwidth = kd.Bandwidth(0.5)
    inputs = keras.Input((3,))
    model = cls(inputs, _SigmaOffset(bandwidth)(keras.layers.Dense(2)(inputs)))
    model.compile(AnnealedStep(0.2, bandwidth=bandwidth, sigma_floor=0.0), "mse")
    path = os.path.join(tmp_path, "log.csv")
    callbacks = [keras.callbacks.CSVLogger(path)]
    if cls is keras.Model:
        callbacks.insert(0, DiagnosticsLogger())
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                        callbacks=callbacks).history
    assert history["rejected_steps"] == [1.0, 2.0]  # cumulative: one per epoch
    assert history["step_length"] == [pytest.approx(0.1), pytest.approx(0.1)]
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["rejected_steps"]) for r in rows] == [1.0, 2.0]


def test_plain_model_without_logger_has_no_diagnostics_but_same_steps():
    x, y, _ = data(n=8)
    bandwidth = kd.Bandwidth(0.5)
    weights, logs = [], []
    for cls in (keras.Model, kd.Model):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((3,))
        model = cls(inputs, _SigmaOffset(bandwidth)(keras.layers.Dense(2)(inputs)))
        model.compile(AnnealedStep(0.2, bandwidth=bandwidth), "mse")
        logs.append(model.fit(x, y, batch_size=4, epochs=1, verbose=0).history)
        weights.append(model.get_weights())
    assert "rejected_steps" not in logs[0] and "rejected_steps" in logs[1]
    assert logs[0]["loss"] == logs[1]["loss"]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


# --- The guard -------------------------------------------------------------------------


def test_guard_rejects_on_every_replica_when_one_is_non_finite(mirrored_strategy):
    strategy = mirrored_strategy
    with strategy.scope():
        model = tiny_model()
        optimizer = GaussNewton()
        optimizer.build(model.trainable_variables)
    before = [np.asarray(v.value) for v in model.trainable_variables]

    def step(bad_replica):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        check = tf.where(tf.equal(replica, bad_replica), np.nan, 1.0)
        new = [v.value + 1.0 for v in model.trainable_variables]
        return guard.assign_if_finite(optimizer, model.trainable_variables, new, [check])

    accepted = strategy.run(tf.function(step), args=(1,))
    assert not any(bool(a) for a in strategy.experimental_local_results(accepted))
    for v, b in zip(model.trainable_variables, before):
        for copy in strategy.experimental_local_results(v.value):
            np.testing.assert_array_equal(copy, b)
    counts = strategy.experimental_local_results(optimizer.rejected_steps.value)
    assert [int(c) for c in counts] == [1, 1]
    accepted = strategy.run(tf.function(step), args=(-1,))  # finite everywhere
    assert all(bool(a) for a in strategy.experimental_local_results(accepted))
    for v, b in zip(model.trainable_variables, before):
        for copy in strategy.experimental_local_results(v.value):
            np.testing.assert_array_equal(copy, b + 1.0)
    counts = strategy.experimental_local_results(optimizer.rejected_steps.value)
    assert [int(c) for c in counts] == [1, 1]


def test_guard_checks_every_value_and_check():
    variables = [keras.Variable(np.zeros(2, "float32")), keras.Variable(np.zeros(3, "float32"))]
    optimizer = AnnealedStep(0.1, bandwidth=1.0)
    optimizer.build(variables)
    for values, checks, accepted in [
        ([np.ones(2), [1.0, np.inf, 1.0]], [], False),
        ([np.ones(2), np.ones(3)], [tf.constant(np.nan)], False),
        ([np.ones(2), np.ones(3)], [tf.constant(2.0)], True),
    ]:
        values = [tf.constant(v, "float32") for v in values]
        assert bool(optimizer.assign_if_finite(variables, values, checks)) is accepted
    np.testing.assert_array_equal(variables[1].numpy(), np.ones(3))
    assert int(optimizer.rejected_steps.value) == 2
    with pytest.raises(ValueError, match="one value per variable"):
        optimizer.assign_if_finite(variables, [tf.ones(2)])


# --- A subclass's own state: the pattern the next optimizers follow -------------------


@keras.saving.register_keras_serializable(package="keras_diffusion_tests")
class _Momentum(kd.optimizers.ClosureOptimizer):
    """Closure heavy-ball: velocity and a step counter in state variables."""

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.velocity = self.add_state_like(var_list, "velocity")
        self.gradient_evaluations = self.add_diagnostic("gradient_evaluations", 0, "int64")

    def step(self, closure):
        loss, grads = closure.value_and_gradient()
        self.gradient_evaluations.assign_add(1)
        velocity = [0.5 * v.value + g for v, g in zip(self.velocity, grads)]
        for v, new in zip(self.velocity, velocity):
            v.assign(new)
        lr = tf.cast(self.learning_rate, loss.dtype)
        new = [p - lr * v for p, v in zip(closure.params, velocity)]
        self.assign_if_finite(closure.variables, new, checks=[loss])
        return loss


@pytest.mark.parametrize("distributed", [False, True])
def test_subclass_state_like_weights_is_written_and_saved(distributed, mirrored_strategy,
                                                          tmp_path):
    x, y, w = data()
    strategy = mirrored_strategy if distributed else tf.distribute.get_strategy()
    with strategy.scope():
        model = tiny_model()
        model.compile(optimizer=_Momentum(0.1, name="momentum"), loss="mse", jit_compile=False)
    W, b = (v.numpy().astype(np.float64) for v in model.trainable_weights)
    history = model.fit(x, y, sample_weight=w, batch_size=6, epochs=1, verbose=0).history
    _, grad, _, _, _, _ = terms(W, b, x, y, w, L2)
    velocity = np.concatenate([np.ravel(v.value) for v in model.optimizer.velocity])
    np.testing.assert_allclose(velocity, grad, rtol=1e-4, atol=1e-6)  # 0.5 * 0 + g
    assert history["gradient_evaluations"] == [1.0]
    path = os.path.join(tmp_path, "momentum.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(loaded.optimizer.velocity, model.optimizer.velocity):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    assert int(loaded.optimizer.gradient_evaluations.value) == 1


def test_backup_and_restore_restores_optimizer_state(tmp_path):
    x, y, _ = data()
    backup = str(tmp_path / "backup")

    class Adapt(keras.callbacks.Callback):  # stands in for an adaptive damping rule
        def on_epoch_end(self, epoch, logs=None):
            self.model.optimizer.damping.assign(0.0125)

    model = _gauss_newton_model()
    model.fit(x, y, batch_size=6, epochs=1, verbose=0,
              callbacks=[Adapt(), keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)])
    resumed = _gauss_newton_model()
    history = resumed.fit(x, y, batch_size=6, epochs=1, verbose=0,
                          callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert history.history == {}  # the backup's epoch is done: nothing re-runs
    assert float(resumed.optimizer.damping.value) == np.float32(0.0125)
    assert int(resumed.optimizer.iterations) == 1
    for a, b in zip(resumed.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
