"""Trains the multi-worker test cases in one process; used by tests/test_multi_worker.py.

    python tests/multi_worker_worker.py CASE[,CASE...] OUT_DIR [BACKUP_ROOT [CASE:N]]

With ``TF_CONFIG`` set (the test starts two such processes on loopback, task 0 and 1) the
cases run under ``tf.distribute.MultiWorkerMirroredStrategy``, one CPU replica per worker;
without it, on one device. Every case trains on the same global batches from the same
initial weights (``keras.utils.set_random_seed`` before the model is built, so every process
builds the same weights), then writes the final weights (``w0``, ``w1``, ...), every
optimizer variable (``opt/<path>``, its state included) and the epoch logs
(``history/<key>``) to OUT_DIR/<CASE>-<task>.npz (task ``single`` on one device). One pair of
worker processes runs every case in sequence: a strategy is created once per process (two
strategies in one process reuse collective keys).

``nan_on_one_replica`` is no training case: it hands the non-finite guard of the package
(``keras_diffusion.optimizers.guard``) an update that is finite on task 0 and NaN on task 1,
then one finite everywhere; it records the weights and ``rejected_steps`` after each.

Faults: with BACKUP_ROOT every case trains with ``kd.callbacks.BackupAndRestore(
BACKUP_ROOT/<CASE>, save_freq=2)`` and a case whose results exist is skipped (it completed
before a kill); with ``CASE:N`` task 1 SIGKILLs itself after N trained batches of CASE (task
0 then waits at its next all-reduce until the test kills it). Running the same command
again without ``CASE:N`` resumes from the chief's backup.
"""

import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_diffusion as kd  # noqa: E402
from keras_diffusion.optimizers import (  # noqa: E402
    HEAT,
    HJ,
    AnnealedStep,
    EntropySGD,
    GaussianContinuation,
    GaussNewton,
    HessianFree,
    SaddleFreeNewton,
    guard,
)
from resume_worker import KillAfter  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 3
EPOCHS = 2


def arrays(features=3, steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(GLOBAL_BATCH * steps, features)).astype("float32")
    return x, np.tanh(x @ rng.normal(size=(features, 1))).astype("float32")


def sequences(steps=STEPS, length=5, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(GLOBAL_BATCH * steps, length, 2)).astype("float32")
    return x, np.tanh(x.sum(axis=(1, 2)))[:, None].astype("float32")


def dataset(x, y):
    """The global batches in order; each worker takes its share of every batch (DATA)."""
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)


def diffused_mlp(model_class=kd.Sequential):
    sigma = kd.Bandwidth(0.5)
    return model_class([
        keras.Input((3,)),
        keras.layers.Dense(4),
        kd.layers.DiffusedActivation("tanh", bandwidth=sigma),
        keras.layers.Dense(1),
    ])


# The cases: dicts of the model, optimizer, callbacks, data (x, y) and loss ("mse" if absent).


def sgd_schedule():
    """Keras SGD with momentum on the diffused MLP, sigma lowered every batch."""
    schedule = kd.callbacks.GeometricSigma(0.5, rate=0.7, unit="batch")
    return dict(
        model=diffused_mlp(keras.Sequential),
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        callbacks=[schedule],
        data=arrays(),
    )


def annealed():
    model = diffused_mlp(keras.Sequential)
    return dict(
        model=model,
        optimizer=AnnealedStep(0.2, bandwidth=kd.bandwidth.bandwidths(model)[0]),
        data=arrays(),
    )


def gauss_newton():
    return dict(
        model=diffused_mlp(),
        optimizer=GaussNewton(damping=0.5, cg_max_iterations=12, cg_tol=1e-4),
        data=arrays(),
    )


def hessian_free():
    optimizer = HessianFree(damping=0.5, cg_max_iterations=5, line_search_max_steps=3)
    return dict(model=diffused_mlp(), optimizer=optimizer, data=arrays())


def saddle_free():
    return dict(
        model=diffused_mlp(),
        optimizer=SaddleFreeNewton(lanczos_num_steps=4, line_search_steps=3),
        data=arrays(),
    )


def gaussian_continuation():
    optimizer = GaussianContinuation(keras.optimizers.Adam(0.01), variance=1e-2,
                                     regularization=1e-3, warmup_steps=2, seed=5)
    return dict(model=diffused_mlp(), optimizer=optimizer, data=arrays())


def entropy_sgd():
    optimizer = EntropySGD(0.3, num_inner_steps=3, extrinsic_noise=1e-2, gamma=0.5, seed=1)
    return dict(model=diffused_mlp(), optimizer=optimizer, data=arrays())


def hj():
    return dict(model=diffused_mlp(), optimizer=HJ(0.2, num_inner_steps=3), data=arrays())


def heat():
    return dict(
        model=diffused_mlp(),
        optimizer=HEAT(0.2, num_inner_steps=3, gamma=0.05, seed=1),
        data=arrays(),
    )


def diffused_rnn():
    """The diffused RNN (Mobahi 2016 sec. 4.3) trained by SGD, sigma scheduled."""
    sigma = kd.Bandwidth(0.5)
    model = kd.Sequential([
        keras.Input((5, 2)),
        kd.layers.DiffusedRNN(kd.layers.DiffusedRNNCell(4, bandwidth=sigma, penalty=0.1)),
        kd.layers.DiffusedOutput(1, "linear", bandwidth=sigma, penalty=0.1),
    ])
    schedule = kd.callbacks.LinearSigma(0.5, duration=3, unit="batch")
    optimizer = keras.optimizers.SGD(0.1, momentum=0.5)
    return dict(model=model, optimizer=optimizer, callbacks=[schedule], data=sequences(),
                loss=kd.losses.SequenceSquaredError())


def deep_transition():
    """A deep-transition RNN (Pascanu 2014 ch. 5) trained by Adam (the curvature optimizers
    run on the MLP cases: their traced RNN step costs a minute here)."""
    model = kd.Sequential([
        keras.Input((5, 2)),
        kd.layers.DeepTransitionRNN(kd.layers.DeepTransitionRNNCell(4, transition_units=(4,))),
        keras.layers.Dense(1),
    ])
    return dict(model=model, optimizer=keras.optimizers.Adam(0.01), data=sequences())


CASES = {
    f.__name__: f
    for f in (sgd_schedule, annealed, gauss_newton, hessian_free, saddle_free,
              gaussian_continuation, entropy_sgd, hj, heat, diffused_rnn, deep_transition)
}


def train(strategy, case, callbacks=()):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        spec = CASES[case]()
        model = spec["model"]
        model.compile(optimizer=spec["optimizer"], loss=spec.get("loss", "mse"), jit_compile=False)
    callbacks = spec.get("callbacks", []) + list(callbacks)
    history = model.fit(dataset(*spec["data"]), epochs=EPOCHS, callbacks=callbacks, verbose=0)
    results = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    for i, variable in enumerate(model.optimizer.variables):
        results[f"opt{i}/{variable.path.split('/')[-1]}"] = np.asarray(variable)
    results.update({f"history/{k}": np.asarray(v) for k, v in history.history.items()})
    return results


def nan_on_one_replica(strategy):
    """The guard's verdict across workers: NaN on the last replica only, then finite."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = diffused_mlp()
        optimizer = GaussNewton()
        optimizer.build(model.trainable_variables)
    last = strategy.num_replicas_in_sync - 1

    @tf.function
    def step(bad_replica):
        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            check = tf.where(tf.equal(replica, bad_replica), np.nan, 1.0)
            new = [v.value + 1.0 for v in model.trainable_variables]
            return guard.assign_if_finite(optimizer, model.trainable_variables, new, [check])

        return strategy.run(replica_fn)

    results = {}
    for name, bad in (("nan", last), ("finite", -1)):
        accepted = strategy.experimental_local_results(step(tf.constant(bad)))
        results[f"{name}/accepted"] = np.asarray([bool(a) for a in accepted])
        results[f"{name}/rejected_steps"] = np.asarray(optimizer.rejected_steps)
        for i, w in enumerate(model.trainable_variables):
            results[f"{name}/w{i}"] = np.asarray(w)
    return results


def main(cases, out_dir, backup_root=None, kill=None):
    tf.config.experimental.enable_op_determinism()
    config = json.loads(os.environ.get("TF_CONFIG", "null"))
    if config:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        task = str(config["task"]["index"])
    else:
        strategy = tf.distribute.get_strategy()
        task = "single"
    kill_case, kill_after = kill.split(":") if kill else (None, 0)
    for case in cases.split(","):
        out = os.path.join(out_dir, f"{case}-{task}.npz")
        if backup_root and os.path.exists(out):
            continue  # completed before a kill in a later case
        start = time.time()
        if case == "nan_on_one_replica":
            results = nan_on_one_replica(strategy)
        else:
            callbacks = []
            if backup_root:
                backup_dir = os.path.join(backup_root, case)
                callbacks.append(kd.callbacks.BackupAndRestore(backup_dir, save_freq=2))
            if case == kill_case and task == "1":
                callbacks.append(KillAfter(int(kill_after)))
            results = train(strategy, case, callbacks)
        np.savez(out, **results)
        print(f"done {case} {time.time() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
