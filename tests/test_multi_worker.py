"""MultiWorkerMirroredStrategy: 2 worker processes on loopback equal 1 device, and resume
after a worker is SIGKILLed (tests/multi_worker_worker.py runs the cases).

Every test starts ONE pair of worker processes (``TF_CONFIG`` set here, free ports) that runs
all its cases in sequence, next to one single-device process running the same cases; a
strategy per process, so the collective keys of one run never meet another's.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from scripts.benchmark_communication import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multi_worker_worker.py")
TIMEOUT = 600

# The cheap cases (the non-slow suite): a Keras optimizer with a sigma schedule, the
# cross-worker CG of Gauss-Newton (early stopping, one all-reduce per iteration), the guard.
FAST_CASES = ("sgd_schedule", "gauss_newton", "nan_on_one_replica")
ALL_CASES = (
    "sgd_schedule", "annealed", "gauss_newton", "hessian_free", "saddle_free",
    "gaussian_continuation", "entropy_sgd", "hj", "heat", "diffused_rnn", "deep_transition",
    "nan_on_one_replica",
)


def _env(tf_config=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _start(args, tf_config=None):
    return subprocess.Popen(
        [sys.executable, WORKER, *args], env=_env(tf_config), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def start_workers(*args):
    """Two worker processes of one cluster on loopback, running ``multi_worker_worker.py``."""
    workers = [f"localhost:{port}" for port in free_ports(2)]
    return [
        _start(args, {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        for i in range(2)
    ]


def finish(process, expect=0):
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    assert process.returncode == expect, output[-4000:]
    return output


def load(out, case, task):
    with np.load(out / f"{case}-{task}.npz") as data:
        return dict(data)


def assert_workers_equal_single(out, case, rtol=1e-4, atol=1e-5):
    """Both workers hold the same numbers, bit for bit, and those of one device."""
    first, second, single = (load(out, case, task) for task in ("0", "1", "single"))
    assert sorted(first) == sorted(second) == sorted(single), case
    for key, value in single.items():
        np.testing.assert_array_equal(first[key], second[key], err_msg=f"{case} {key}")
        np.testing.assert_allclose(first[key], value, rtol=rtol, atol=atol,
                                   err_msg=f"{case} {key}")


def run_cases(out, cases):
    cases = ",".join(cases)
    processes = start_workers(cases, str(out)) + [_start([cases, str(out)])]
    for process in processes:
        finish(process)


def check_cases(out, cases):
    for case in cases:
        assert_workers_equal_single(out, case)
    if "nan_on_one_replica" in cases:
        guard = load(out, "nan_on_one_replica", "0")
        # NaN on task 1 only: rejected on task 0 too, weights kept; then a finite step lands.
        assert not guard["nan/accepted"].any() and guard["finite/accepted"].all()
        assert int(guard["nan/rejected_steps"]) == int(guard["finite/rejected_steps"]) == 1
        weights = [key[len("nan/"):] for key in guard if key.startswith("nan/w")]
        assert len(weights) == 4  # the trainable weights
        for key in weights:
            np.testing.assert_allclose(guard[f"finite/{key}"], guard[f"nan/{key}"] + 1.0)


def test_two_workers_equal_one_device(tmp_path):
    run_cases(tmp_path, FAST_CASES)
    check_cases(tmp_path, FAST_CASES)


@pytest.mark.slow
def test_two_workers_equal_one_device_for_every_optimizer_and_layer(tmp_path):
    run_cases(tmp_path, ALL_CASES)
    check_cases(tmp_path, ALL_CASES)


def run_with_kills(tmp_path, cases, kills):
    """Trains ``cases`` on two workers with backups; for each ``CASE:N`` of ``kills`` task 1
    SIGKILLs itself after N batches of CASE, the test kills task 0 (left waiting at an
    all-reduce) and starts both again, which resume from the chief's backup."""
    out, backup = tmp_path / "workers", tmp_path / "backup"
    out.mkdir()
    cases = ",".join(cases)
    for kill in list(kills) + [None]:
        first, second = start_workers(cases, str(out), str(backup), *([kill] if kill else []))
        if kill is None:
            finish(first), finish(second)
            continue
        finish(second, expect=-signal.SIGKILL)
        case = kill.split(":")[0]
        assert (backup / case / "checkpoint.json").exists()  # the chief's backup
        assert not list(backup.glob(f"{case}/workertemp_*"))  # task 1 kept none
        first.kill()
        first.communicate()
    assert not any(backup.iterdir())  # every backup deleted when its fit completed
    return out


def check_resumed(tmp_path, out, cases):
    single = tmp_path / "single"
    single.mkdir()
    finish(_start([",".join(cases), str(single)]))
    for case in cases:
        resumed = [load(out, case, task) for task in ("0", "1")]
        reference = load(single, case, "single")
        for key, value in reference.items():
            if key.startswith("history/"):
                continue  # a resumed fit's History starts at the resumed epoch
            np.testing.assert_array_equal(resumed[0][key], resumed[1][key], err_msg=key)
            np.testing.assert_allclose(resumed[0][key], value, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{case} {key}")


def test_worker_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    """SGD with a batch-wise sigma schedule: 3 batches per epoch, backups every 2, task 1
    killed after batch 5 (mid-epoch 2); the restarted pair skips batch 4 and ends with the
    weights, optimizer state and sigma of an uninterrupted run."""
    out = run_with_kills(tmp_path, ["sgd_schedule"], ["sgd_schedule:5"])
    check_resumed(tmp_path, out, ["sgd_schedule"])


@pytest.mark.slow
def test_hessian_free_and_entropy_sgd_resume_after_a_worker_is_killed(tmp_path):
    cases = ["hessian_free", "entropy_sgd"]
    out = run_with_kills(tmp_path, cases, [f"{case}:5" for case in cases])
    check_resumed(tmp_path, out, cases)


def test_the_keras_fix_is_installed_once_and_leaves_one_worker_alone(mirrored_strategy):
    """``compat.fix_multi_worker_fit`` (run by ``import keras_diffusion``) replaces Keras's
    log averaging only for several workers: under MirroredStrategy Keras's code runs."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    from keras_diffusion import compat

    installed = trainer.reduce_per_replica
    compat.fix_multi_worker_fit()
    assert trainer.reduce_per_replica is installed and installed._keras_diffusion_fix
    values = mirrored_strategy.run(
        lambda: tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, "float32"))
    assert float(installed({"loss": values}, mirrored_strategy, "auto")["loss"]) == 0.5
