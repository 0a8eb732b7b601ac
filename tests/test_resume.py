"""Resume after SIGKILL: keras_diffusion.callbacks.BackupAndRestore and the schedules' position.

The subprocess tests run ``tests/resume_worker.py``: once uninterrupted, once killed with
SIGKILL mid-epoch (one process per case, in parallel), once restarted from the backup; the
restarted run must end with the uninterrupted run's weights, bit for bit. The in-process tests
interrupt ``fit`` with an exception (what a kill leaves behind is the backup directory).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_diffusion as kd
from keras_diffusion.callbacks import backup as backup_lib
from keras_diffusion.callbacks import state as state_lib

WORKER = pathlib.Path(__file__).resolve().parent / "resume_worker.py"
ROOT = WORKER.parents[1]
# case -> batches trained before the SIGKILL (6 batches per epoch).
# entropy_sgd: the backup after batch 10 is mid-inner-loop (10 = 2 * 4 + 2).
KILL_AFTER = {"sgd_batch": 9, "staged": 21, "gauss_newton": 10, "hessian_free": 11,
              "entropy_sgd": 11, "gaussian_continuation": 10, "saddle_free": 10,
              "keras_backup": 9}


def worker(cases, backup_root, out_dir, kill_after=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(WORKER), ",".join(cases), str(backup_root), str(out_dir)]
    if kill_after is not None:
        command.append(str(kill_after))
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def finish(process, returncode=0):
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == returncode, stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"reference"|"resumed": {case: npz}}, and the backup states left by the kills."""
    root = tmp_path_factory.mktemp("resume")
    for name in ("reference", "killed", "resumed"):
        (root / name).mkdir()
    reference = worker(KILL_AFTER, root / "reference_backup", root / "reference")
    killed = [worker([c], root / "backup", root / "killed", n) for c, n in KILL_AFTER.items()]
    for process in killed:
        finish(process, -signal.SIGKILL)
    left = {case: sorted(os.listdir(root / "backup" / case)) for case in KILL_AFTER}
    finish(reference)
    finish(worker(KILL_AFTER, root / "backup", root / "resumed"))
    results = {
        name: {case: dict(np.load(root / name / f"{case}.npz")) for case in KILL_AFTER}
        for name in ("reference", "resumed")
    }
    return results, left


@pytest.mark.parametrize(
    "case",
    ["sgd_batch", "staged", "gauss_newton", "hessian_free", "entropy_sgd",
     "gaussian_continuation", "saddle_free"],
)
def test_killed_run_resumes_bit_identical(runs, case):
    results, left = runs
    reference, resumed = results["reference"][case], results["resumed"][case]
    assert backup_lib.POINTER in left[case]
    weights = sorted(k for k in reference if k.startswith("w"))
    assert weights and weights == sorted(k for k in resumed if k.startswith("w"))
    for key in weights:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
    # The resumed run's epochs (from the interrupted one on) log exactly the same values,
    # the restored metrics included.
    for key in (k for k in reference if k.startswith("history/")):
        count = len(resumed[key])
        assert 0 < count < len(reference[key])
        np.testing.assert_array_equal(resumed[key], reference[key][-count:], err_msg=key)
    assert not resumed["backup_left"]


def test_staged_sigma_crosses_stage_boundary_after_resume(runs):
    results, _ = runs
    reference = results["reference"]["staged"]["history/sigma"]
    resumed = results["resumed"]["staged"]["history/sigma"]
    np.testing.assert_array_equal(reference, [1.0, 1.0, 0.5, 0.5, 0.0])
    np.testing.assert_array_equal(resumed, [0.5, 0.0])


def test_keras_backup_keeps_batch_schedule_position(runs):
    results, _ = runs
    reference = dict(map(tuple, results["reference"]["keras_backup"]["sigma_trace"]))
    resumed = results["resumed"]["keras_backup"]["sigma_trace"]
    # Keras's backup restores the end of epoch 0 (6 optimizer steps) and runs epoch 1 again.
    assert resumed[0, 0] == 6 and resumed[0, 1] < 1.0
    for iterations, sigma in resumed:
        assert sigma == reference[iterations]
    assert resumed[-1, 1] == 0.0


# In-process tests.


def small_model(sigma=1.0):
    keras.utils.set_random_seed(1)
    bandwidth = kd.Bandwidth(sigma)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(4),
            kd.layers.DiffusedActivation("tanh", bandwidth=bandwidth),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.5), "mse")
    return model


def data(n=24):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2)).astype("float32")
    return x, np.sin(x[:, :1])


class Interrupt(keras.callbacks.Callback):
    """Raises after ``batches`` trained batches (what a kill would do, minus the process)."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.batches:
            raise RuntimeError("interrupted")


def interrupted_then_resumed(callbacks, batches, epochs=4, make=small_model, **fit):
    """Fits a fresh model until ``Interrupt(batches)``, then a second fresh one to the end."""
    x, y = data()
    fit = {"batch_size": 4, "shuffle": False, "verbose": 0, **fit}
    with pytest.raises(RuntimeError, match="interrupted"):
        make().fit(x, y, epochs=epochs, callbacks=callbacks() + [Interrupt(batches)], **fit)
    model = make()
    history = model.fit(x, y, epochs=epochs, callbacks=callbacks(), **fit)
    return model, history


def test_in_process_resume_equals_uninterrupted_and_survives_partial_save(tmp_path):
    x, y = data()
    reference = small_model()
    reference.fit(x, y, batch_size=4, epochs=4, shuffle=False, verbose=0)

    def callbacks():
        return [kd.callbacks.BackupAndRestore(tmp_path / "b", save_freq=5)]

    with pytest.raises(RuntimeError, match="interrupted"):
        small_model().fit(
            x, y, batch_size=4, epochs=4, shuffle=False, verbose=0,
            callbacks=callbacks() + [Interrupt(13)],
        )
    pointer = json.loads((tmp_path / "b" / backup_lib.POINTER).read_text())
    assert pointer["serial"] == 2  # backups after batches 5 and 10
    state = json.loads((tmp_path / "b" / pointer["directory"] / "state.json").read_text())
    assert (state["epoch"], state["batch"]) == (1, 4)
    # A kill in the middle of the next save leaves a partial directory and a temporary
    # pointer; neither is read.
    partial = tmp_path / "b" / f"backup-{pointer['serial'] + 1:09d}"
    partial.mkdir()
    (partial / "variables.index").write_bytes(b"garbage")
    (tmp_path / "b" / f"{backup_lib.POINTER}.tmp").write_text("{")
    model = small_model()
    history = model.fit(x, y, batch_size=4, epochs=4, shuffle=False, verbose=0, callbacks=callbacks())
    assert len(history.history["loss"]) == 3
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert not (tmp_path / "b").exists()
    assert not isinstance(model.train_function, backup_lib._TrainFunction)


def test_keras_backup_resumes_staged_sigma_stage(tmp_path):
    def fixed():
        return [
            kd.callbacks.StagedSigma([1.0, 0.5, 0.2, 0.0], epochs_per_stage=[1, 2, 1]),
            keras.callbacks.BackupAndRestore(tmp_path / "fixed"),
        ]

    model, history = interrupted_then_resumed(fixed, batches=13, epochs=6)
    # Interrupted in epoch 2 (stage 1, its second epoch); resumes there, not at sigma_0.
    assert history.history["sigma"] == [0.5, 0.2, 0.0, 0.0]

    def plateau():
        return [
            kd.callbacks.StagedSigma([1.0, 0.5, 0.0], monitor="loss", patience=1, min_delta=1e3),
            keras.callbacks.BackupAndRestore(tmp_path / "plateau"),
        ]

    # Stage 1 from epoch 2 on; interrupted in epoch 3, resumed at the restored sigma's stage.
    model, history = interrupted_then_resumed(plateau, batches=20, epochs=5)
    assert history.history["sigma"][0] == 0.5
    assert kd.get_sigma(model) == history.history["sigma"][-1]


def test_stateful_callbacks_are_those_of_the_same_fit():
    model = small_model()
    x, y = data()
    old = kd.callbacks.StagedSigma([1.0, 0.0], epochs_per_stage=1)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[old])
    first = kd.callbacks.StagedSigma([1.0, 0.0], epochs_per_stage=1)
    second = kd.callbacks.StagedSigma([2.0, 0.0], epochs_per_stage=1)
    decaying = kd.callbacks.LinearSigma(1.0, duration=2)  # no state: not listed
    found = {}

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            found.update(state_lib.fit_callbacks(self.model, self.params))

    model.fit(x, y, epochs=1, verbose=0, callbacks=[first, decaying, second, Probe()])
    assert found == {"0:StagedSigma": first, "1:StagedSigma": second}


def test_staged_sigma_state_round_trips_through_json():
    def staged():
        return kd.callbacks.StagedSigma([1.0, 0.5, 0.0], monitor="loss", patience=2, min_delta=1e3)

    schedule = staged()
    schedule.stage, schedule._epochs_in_stage, schedule._best, schedule._wait = 1, 3, 0.25, 1
    state = json.loads(json.dumps(schedule.get_state()))
    restored = staged()
    restored.set_state(state)
    model = small_model()
    x, y = data()
    model.fit(x, y, epochs=4, initial_epoch=3, verbose=0, callbacks=[restored])
    # The restored counters (wait 1 of patience 2): one more epoch without an improvement
    # (by min_delta) ends stage 1.
    assert restored.stage == 2 and kd.get_sigma(model) == 0.5
    assert schedule.get_state() == {"stage": 1, "epochs_in_stage": 3, "best": 0.25, "wait": 1}
    fresh = kd.callbacks.StagedSigma([1.0, 0.0], monitor="loss")
    assert fresh.get_state()["best"] is None  # inf is not JSON


def test_batch_schedule_counts_optimizer_steps_under_steps_per_execution():
    model = small_model()
    model.compile(keras.optimizers.SGD(0.1), "mse", steps_per_execution=2)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(kd.get_sigma(self.model))

    x, y = data(16)
    schedule = kd.callbacks.LinearSigma(1.0, duration=8, unit="batch")
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[schedule, Record()])
    # Callbacks run once per execution of 2 steps; after the schedule's on_train_batch_begin
    # the model reads sigma_at(iterations), the sigma of the execution's first step (each
    # step inside trains at its own sigma_at(k): test_schedules_steps_per_execution.py).
    np.testing.assert_allclose(seen, [1.0, 0.75, 0.5, 0.25], rtol=1e-6)
    # A second fit continues from optimizer.iterations (8 steps: sigma_at(8) = 0).
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[schedule, Record()])
    assert seen[-2:] == [0.0, 0.0]


def test_train_function_left_by_a_failed_fit_steps_aside(tmp_path):
    model = small_model()
    x, y = data()
    backup = kd.callbacks.BackupAndRestore(tmp_path / "b", save_freq=2)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[backup, Interrupt(3)])
    assert isinstance(model.train_function, backup_lib._TrainFunction)
    before = int(model.optimizer.iterations.numpy())
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == before + 6  # nothing skipped
    assert not isinstance(model.train_function, backup_lib._TrainFunction)


def test_backup_of_another_model_is_refused(tmp_path):
    x, y = data()

    def callbacks():
        return [kd.callbacks.BackupAndRestore(tmp_path / "b", save_freq=2)]

    with pytest.raises(RuntimeError, match="interrupted"):
        small_model().fit(x, y, batch_size=4, verbose=0, callbacks=callbacks() + [Interrupt(3)])
    other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    other.compile("sgd", "mse")
    with pytest.raises(ValueError, match="delete .* to start afresh"):
        other.fit(x, y, batch_size=4, verbose=0, callbacks=callbacks())


def test_backup_and_restore_config_and_arguments(tmp_path):
    backup = kd.callbacks.BackupAndRestore(tmp_path, save_freq=3, delete_checkpoint=False)
    config = backup.get_config()
    assert json.loads(json.dumps(config)) == config
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backup))
    assert type(again) is kd.callbacks.BackupAndRestore and again.get_config() == config
    with pytest.raises(ValueError, match="`save_freq` must be an integer >= 1, got 0"):
        kd.callbacks.BackupAndRestore(tmp_path, save_freq=0)
    with pytest.raises(ValueError, match="'batch'"):
        kd.callbacks.BackupAndRestore(tmp_path, save_freq="batch")
    with pytest.raises(ValueError, match="backup_dir"):
        kd.callbacks.BackupAndRestore("")


def test_resume_under_mirrored_strategy(tmp_path, mirrored_strategy):
    def make():
        with mirrored_strategy.scope():
            model = small_model()
            model.compile(keras.optimizers.SGD(0.1, momentum=0.5), "mse", metrics=["mae"])
        return model

    x, y = data()
    reference = make()
    expected = reference.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0).history

    def callbacks():
        return [kd.callbacks.BackupAndRestore(tmp_path / "b", save_freq=4)]

    model, history = interrupted_then_resumed(callbacks, batches=10, epochs=3, make=make)
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)
    # Resumed at epoch 1 after its 2nd batch, with the metrics of those batches restored: a
    # checkpoint restores a per-replica (SyncOnRead) sum as equal shares, so the epoch's
    # metrics agree to rounding (the weights above bit for bit).
    for key in ("loss", "mae"):
        np.testing.assert_allclose(history.history[key], expected[key][1:], rtol=1e-6)
