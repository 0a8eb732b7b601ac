"""Trains resume test cases in a fresh process; used by tests/test_resume.py.

    python tests/resume_worker.py CASE[,CASE...] BACKUP_ROOT OUT_DIR [KILL_AFTER]

runs each case (see ``CASES``), one after the other, with
``keras_diffusion.callbacks.BackupAndRestore`` (or Keras's, for ``keras_backup``) in
BACKUP_ROOT/CASE. With KILL_AFTER the process sends itself SIGKILL once KILL_AFTER batches
have been trained (after that step's callbacks, so a backup due at that step is written).
Otherwise it writes the final weights (``w0``, ``w1``, ...), the epoch logs of ``History``
(``history/<key>``), the ``(optimizer.iterations, sigma)`` seen before every step
(``sigma_trace``) and whether the backup directory is left (``backup_left``) to
OUT_DIR/CASE.npz. Every case starts from ``keras.backend.clear_session()`` and the same seed,
so a case gives the same numbers alone or after others.
"""

import os
import signal
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_diffusion as kd  # noqa: E402
from keras_diffusion.optimizers import (  # noqa: E402
    EntropySGD,
    GaussianContinuation,
    GaussNewton,
    HessianFree,
    SaddleFreeNewton,
)

BATCHES_PER_EPOCH = 6


class KillAfter(keras.callbacks.Callback):
    """SIGKILLs the process once ``count`` batches have been trained in this process."""

    def __init__(self, count):
        super().__init__()
        self.count = count
        self.trained = 0

    def on_train_batch_end(self, batch, logs=None):
        self.trained += self.model.steps_per_execution
        if self.trained >= self.count:
            os.kill(os.getpid(), signal.SIGKILL)


class SigmaTrace(keras.callbacks.Callback):
    """Records ``(optimizer.iterations, sigma)`` before every step (listed after the schedule)."""

    def __init__(self):
        super().__init__()
        self.trace = []

    def on_train_batch_begin(self, batch, logs=None):
        iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.trace.append((iterations, kd.get_sigma(self.model)))


def arrays(n=8 * BATCHES_PER_EPOCH, features=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, np.tanh(x @ rng.normal(size=(features, 1))).astype("float32")


def numpy_fit(shuffle):
    """``fit`` arguments: 3 epochs of 6 batches of numpy arrays."""
    x, y = arrays()
    return dict(x=x, y=y, batch_size=8, epochs=3, shuffle=shuffle)


def diffused_model(dropout=0.0, model_class=keras.Sequential):
    sigma = kd.Bandwidth(1.0)
    layers = [
        keras.Input((3,)),
        keras.layers.Dense(8),
        kd.layers.DiffusedActivation("tanh", bandwidth=sigma),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, seed=3))
    return model_class(layers + [keras.layers.Dense(1)])


def sgd_batch(backup_dir):
    """SGD with momentum, a batch-wise schedule, dropout, shuffled numpy input."""
    model = diffused_model(dropout=0.25)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse", metrics=["mae"])
    schedule = kd.callbacks.GeometricSigma(1.0, rate=0.8, cutoff=0.05, unit="batch")
    backup = kd.callbacks.BackupAndRestore(backup_dir, save_freq=4)
    return model, numpy_fit(shuffle=True), [schedule, backup]


def staged(backup_dir):
    """StagedSigma ended by plateaus, epoch backups, an infinite shuffled tf.data input."""
    model = diffused_model()
    model.compile(keras.optimizers.Adam(0.01), "mse")
    # min_delta=1e3: every epoch after the first of a stage is a plateau, so the stages
    # change after epochs 1 and 3, and the plateau counters (best, wait) carry the state.
    schedule = kd.callbacks.StagedSigma([1.0, 0.5, 0.0], monitor="loss", patience=1, min_delta=1e3)
    backup = kd.callbacks.BackupAndRestore(backup_dir)
    x, y = arrays()
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(48, seed=1).batch(8).repeat()
    fit = dict(x=data, epochs=5, steps_per_epoch=BATCHES_PER_EPOCH)
    # The backup first: its epoch backup must still hold the stage update of on_epoch_end.
    return model, fit, [backup, schedule]


def gauss_newton(backup_dir):
    """The closure optimizer GaussNewton on a kd.Model, two steps per execution."""
    model = diffused_model(model_class=kd.Sequential)
    model.compile(GaussNewton(damping=1e-2, cg_max_iterations=4), "mse", steps_per_execution=2)
    schedule = kd.callbacks.LinearSigma(1.0, duration=12, unit="batch")
    backup = kd.callbacks.BackupAndRestore(backup_dir, save_freq=4)
    return model, numpy_fit(shuffle=True), [schedule, backup]


def hessian_free(backup_dir):
    """HessianFree (adapted damping, CG warm start, counters in its state) on a kd.Model."""
    model = diffused_model(model_class=kd.Sequential)
    model.compile(HessianFree(cg_max_iterations=4, line_search_max_steps=3), "mse")
    backup = kd.callbacks.BackupAndRestore(backup_dir, save_freq=4)
    return model, numpy_fit(shuffle=True), [backup]


def entropy_sgd(backup_dir):
    """Entropy-SGD's inner loop (L = 4) across train steps, dropout; backups mid-inner-loop."""
    model = diffused_model(dropout=0.25, model_class=kd.Sequential)
    optimizer = EntropySGD(0.05, num_inner_steps=4, extrinsic_noise=1e-4, gamma=0.5, seed=5)
    model.compile(optimizer, "mse")
    backup = kd.callbacks.BackupAndRestore(backup_dir, save_freq=5)
    return model, numpy_fit(shuffle=True), [backup]


def gaussian_continuation(backup_dir):
    """GaussianContinuation: the draws (keyed by the iterations), lambda and both optimizers'
    slots resume; a batch-wise sigma schedule drives the diffused layers meanwhile."""
    model = diffused_model(model_class=kd.Sequential)
    model.compile(GaussianContinuation(keras.optimizers.Adam(0.01), variance=1e-2,
                                       regularization=1e-3, warmup_steps=3, seed=5), "mse")
    schedule = kd.callbacks.LinearSigma(1.0, duration=12, unit="batch")
    backup = kd.callbacks.BackupAndRestore(backup_dir, save_freq=4)
    return model, numpy_fit(shuffle=True), [schedule, backup]


def saddle_free(backup_dir):
    """SaddleFreeNewton (Krylov, Levenberg-Marquardt damping state) with batch backups."""
    model = diffused_model(model_class=kd.Sequential)
    model.compile(SaddleFreeNewton(lanczos_num_steps=4, line_search_steps=3), "mse")
    backup = kd.callbacks.BackupAndRestore(backup_dir, save_freq=4)
    return model, numpy_fit(shuffle=True), [backup]


def keras_backup(backup_dir):
    """Keras's own BackupAndRestore (epoch backups) with a batch-wise schedule."""
    model = diffused_model()
    model.compile(keras.optimizers.SGD(0.05), "mse")
    schedule = kd.callbacks.LinearSigma(1.0, duration=15, unit="batch")
    backup = keras.callbacks.BackupAndRestore(backup_dir)
    return model, numpy_fit(shuffle=False), [schedule, backup]


CASES = {
    f.__name__: f
    for f in (sgd_batch, staged, gauss_newton, hessian_free, entropy_sgd,
              gaussian_continuation, saddle_free, keras_backup)
}


def run(case, backup_dir, out, kill_after=None):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model, fit, callbacks = CASES[case](backup_dir)
    trace = SigmaTrace()
    callbacks = callbacks + [trace]
    if kill_after is not None:
        callbacks.append(KillAfter(kill_after))
    history = model.fit(**fit, callbacks=callbacks, verbose=0)
    results = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    results.update({f"history/{k}": np.asarray(v) for k, v in history.history.items()})
    results["sigma_trace"] = np.asarray(trace.trace, dtype="float64").reshape(-1, 2)
    results["backup_left"] = np.asarray(os.path.exists(backup_dir))
    np.savez(out, **results)


def main(cases, backup_root, out_dir, kill_after=None):
    tf.config.experimental.enable_op_determinism()
    for case in cases.split(","):
        backup_dir = os.path.join(backup_root, case)
        run(case, backup_dir, os.path.join(out_dir, f"{case}.npz"), kill_after)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:]))
