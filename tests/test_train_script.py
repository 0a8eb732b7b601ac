"""scripts/train.py: the sec. 7 comparison end to end with tiny flags, each optimizer family,
the TensorBoard logs read back, resume after a kill, and the flag checks."""

import glob
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import script_runner
import keras_diffusion
from models import builders, optimizers
from scripts import train

TINY_ADDING = dict(num_train=200, num_test=50, epochs=2, batch_size=50, verbose=0)


def run_script(*args):
    return script_runner.run_script("train.py", *args)


def scalars(log_dir):
    """``{tag: [values by step]}`` of every TensorBoard event file under ``log_dir``."""
    values = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"),
                                 recursive=True)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                          else value.simple_value)
                values.setdefault(value.tag, []).append(number)
    return values


def test_main_job_writes_summary_curves_plot_logs_and_models(tmp_path):
    out = tmp_path / "out"
    proc = run_script(
        f"--output_dir={out}", f"--data_dir={tmp_path / 'tfds'}", "--epochs=2",
        "--batch_size=100", "--target_error=0.16", "--learning_rate=0.05",
        "--schedule=staged", "--sigma_stages=0.8,0", "--sigma_epochs=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "10/10" in proc.stdout  # Keras progress bar: 10 steps of 100 of 1000 sequences
    with open(out / "summary.json") as f:
        summary = json.load(f)
    results = summary["results"]
    assert set(results) == {"diffusion", "sgd"}
    for method, result in results.items():
        errors = result["test_errors"]
        assert len(errors) == 2
        # Test MSE of a barely trained net: near the variance of the target (1/6).
        assert all(0.0 < e < 1.0 for e in errors)
        assert result["final_test_error"] == errors[-1]
        assert result["epochs_to_target"] == train.epochs_to_reach(errors, 0.16)
        logged = scalars(out / method / "logs")
        assert logged["epoch_test_error"] == pytest.approx(errors, rel=1e-6)
        assert len(logged["epoch_loss"]) == 2
        history = (out / method / "history.csv").read_text().splitlines()
        assert "test_error" in history[0] and len(history) == 3
        model = keras.models.load_model(out / method / "model.keras")
        assert model.output_shape == (None, 1)
        assert not (out / method / "backup").exists()  # removed once training completes
    assert results["diffusion"]["hyperparameters"]["sigma_stages"] == [0.8, 0.0]
    assert scalars(out / "diffusion" / "logs")["epoch_sigma"] == pytest.approx([0.8, 0.0])
    text = (out / "summary.txt").read_text()
    assert "| diffusion |" in text and "| sgd |" in text
    curves = (out / "test_error.csv").read_text().splitlines()
    assert curves[0] == "epoch,diffusion,sgd" and len(curves) == 3
    with open(out / "test_error.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_optimizer_comparison_on_digits_one_table_one_plot(tmp_path):
    """Keras SGD against GaussNewton (a closure optimizer: the model becomes a
    keras_diffusion.Model) on the sklearn digits, with the rejected-steps diagnostic."""
    run = train.RunConfig(task="digits", model="mlp", hidden=(32,), activation="relu",
                          epochs=2, batch_size=256, target_error=0.5, verbose=0,
                          curvature_every=2, data_dir=str(tmp_path / "tfds"))
    specs = [train.MethodSpec("sgd", learning_rate=None, optimizer=name, damping=0.1,
                              cg_max_iterations=10) for name in ("sgd", "gauss_newton")]
    assert train.run_names(specs) == ["sgd", "gauss_newton"]
    results = train.train_and_evaluate(run, specs, str(tmp_path / "out"))
    for name, result in results.items():
        assert len(result["test_errors"]) == 2
        assert all(0.0 <= e <= 1.0 for e in result["test_errors"])  # error rates
    # Twelve Gauss-Newton steps (batch 256 of 1,438 digits) beat chance (0.9) by far, and
    # the 12 SGD steps of the same run.
    final = {name: result["final_test_error"] for name, result in results.items()}
    assert final["gauss_newton"] < 0.2 and final["gauss_newton"] < final["sgd"]
    logged = scalars(tmp_path / "out" / "gauss_newton" / "logs")
    assert logged["epoch_rejected_steps"] == [0.0, 0.0]
    assert len(logged["epoch_accuracy"]) == 2
    assert len(logged["epoch_curvature/hessian_max"]) == 1  # every 2nd epoch
    assert logged["epoch_curvature/hessian_max"][0] >= logged["epoch_curvature/hessian_min"][0]
    model = keras.models.load_model(tmp_path / "out" / "gauss_newton" / "model.keras")
    assert isinstance(model, keras_diffusion.Model)
    assert (tmp_path / "out" / "summary.txt").read_text().count("| gauss_newton |") == 1
    assert (tmp_path / "out" / "test_error.csv").read_text().startswith("epoch,sgd,gauss_newton")


class Kill(keras.callbacks.Callback):
    """Stands in for a kill: raises at the end of epoch ``epoch`` (after its backup)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_after_a_kill_repeats_the_uninterrupted_run(tmp_path):
    run = train.RunConfig(data_dir=str(tmp_path / "tfds"), **{**TINY_ADDING, "epochs": 3})
    spec = train.MethodSpec("diffusion", learning_rate=0.1, schedule="linear", sigma0=0.5,
                            sigma_epochs=2)
    straight = train.train_method(run, spec, run_dir=str(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        train.train_method(run, spec, run_dir=str(tmp_path / "killed"), callbacks=[Kill(1)])
    assert train._resume_epoch(str(tmp_path / "killed" / "backup")) == 2
    resumed = train.train_method(run, spec, run_dir=str(tmp_path / "killed"), resume=True)
    assert resumed.shape == (3,)
    np.testing.assert_allclose(resumed, straight, rtol=1e-5)


def test_mirrored_run_equals_the_single_device_run(tmp_path, mirrored_strategy):
    """2 replicas of 25 sequences each step: the same global batches and updates as one
    device (the replica gradients are summed), so the same error curve."""
    run = train.RunConfig(data_dir=str(tmp_path), **TINY_ADDING)
    spec = train.MethodSpec("sgd", learning_rate=0.1)
    single = train.train_method(run, spec)
    mirrored = train.train_method(run, spec, strategy=mirrored_strategy)
    np.testing.assert_allclose(mirrored, single, rtol=1e-4)


def test_bad_flag_is_reported():
    proc = run_script("--sigma_stages=1,2,0", "--epochs=1", "--output_dir=/tmp/unused")
    assert proc.returncode != 0
    assert "strictly decreasing" in proc.stderr


def test_unknown_optimizer_flag_names_flag_value_and_choices():
    proc = run_script("--optimizers=sgd,bogus", "--output_dir=/tmp/unused")
    assert proc.returncode != 0
    assert "`--optimizers entry` must be one of (" in proc.stderr
    assert "'gauss_newton'" in proc.stderr and "got 'bogus'" in proc.stderr
    assert "Epoch" not in proc.stdout  # rejected before any training


def test_epochs_to_reach():
    assert train.epochs_to_reach([0.3, 0.1, 0.02, 0.01], 0.02) == 3
    assert train.epochs_to_reach([0.3, 0.1], 0.02) is None
    assert train.epochs_to_reach(np.array([0.01]), 0.02) == 1


def test_error_curve_matches_builders_test_error_at_sigma_zero(tmp_path):
    run = train.RunConfig(data_dir=str(tmp_path), **TINY_ADDING)
    spec = train.MethodSpec("diffusion", sigma0=0.7, penalty=0.1)
    task = run.make_task()
    model = train.build_model(run, spec, task)
    ((x, y),) = task.arrays["test"]
    curve = train.ErrorCurve(task.arrays["test"], task.error)
    curve.set_model(model)
    error = curve.error()
    assert error == pytest.approx(builders.adding_test_error(model, x, y), rel=1e-5)
    assert keras_diffusion.get_sigma(model) == pytest.approx(0.7)  # restored
    keras_diffusion.set_sigma(model, 0.0)
    prediction = model.predict(x, verbose=0)
    assert error == pytest.approx(float(np.mean((prediction - y) ** 2)), rel=1e-5)


def test_annealed_run_moves_the_error_every_epoch(tmp_path):
    run = train.RunConfig(data_dir=str(tmp_path), **TINY_ADDING)
    spec = train.MethodSpec("diffusion", learning_rate=0.5, optimizer="annealed",
                            schedule="geometric", sigma0=0.5, sigma_rate=0.5)
    task = run.make_task()
    keras.utils.set_random_seed(run.seed)  # as train_method does: the same initial weights
    model = train.build_model(run, spec, task)
    assert type(model.optimizer).__name__ == "AnnealedStep"
    curve = train.ErrorCurve(task.arrays["test"], task.error)
    curve.set_model(model)
    initial = curve.error()
    errors = train.train_method(run, spec)
    assert errors.shape == (2,) and np.isfinite(errors).all()
    # Every annealed step has length learning_rate * sigma > 0: each epoch changes the error.
    assert errors[0] != pytest.approx(initial, rel=1e-6)
    assert errors[1] != pytest.approx(errors[0], rel=1e-6)


def test_classification_error_is_the_sequence_error_rate():
    task = train.tasks.Task(config=None, kind="classification", train=None, num_train=1,
                            arrays={}, input_shape=(5, 4), num_outputs=3, target_steps=2)
    scores = np.zeros((3, 2, 3))
    scores[:, :, 1] = 1.0  # predicts class 1 at both steps
    y = np.array([[1, 1], [1, 0], [2, 2]])
    assert task.error(scores, y) == pytest.approx(2 / 3)  # any wrong step: sequence wrong


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: train.MethodSpec(method="adam"), "'adam'"),
        (lambda: train.MethodSpec(optimizer="hessian"), "`optimizer` must be one of"),
        (lambda: train.MethodSpec(learning_rate=-1.0), "-1.0"),
        (lambda: train.MethodSpec(sigma0=float("nan")), "nan"),
        (lambda: train.MethodSpec(sigma_rate=0.0), r"`sigma_rate` must be in \(0, 1\], got 0.0"),
        (lambda: train.MethodSpec(schedule="staged", sigma_stages=(1.0, 0.5)), "end at 0"),
        (lambda: train.RunConfig(batch_size=0), "`batch_size` must be an integer >= 1, got 0"),
        (lambda: train.RunConfig(task="copy"), "'copy'"),
        (lambda: train.RunConfig(strategy="gpu"), "`strategy` must be one of"),
        (lambda: train.RunConfig(model="cnn"), "`model` must be one of"),
        (lambda: train.RunConfig(num_train=0), "`num_train` must be an integer >= 1"),
        (lambda: train.RunConfig(task="long_adding", length=50),
         "`length` must be an integer >= 200"),
        (lambda: train.check_run(train.RunConfig(model="rnn"), train.MethodSpec()),
         "needs a model with a bandwidth"),
        (lambda: train.check_run(train.RunConfig(task="memorization_5bit", length=5),
                                 train.MethodSpec()), "5 target steps: use --model=rnn"),
        (lambda: train.check_run(train.RunConfig(task="digits"), train.MethodSpec()),
         "use --model=mlp"),
    ],
)
def test_bad_configs_name_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


CONFIGS = os.path.join(script_runner.ROOT, "scripts", "configs")
REPRODUCTIONS = {"figure6.cfg": "reproduce_mobahi_figure6",
                 "figure5_11.cfg": "reproduce_pascanu_figure5_11",
                 "table6_3.cfg": "reproduce_pascanu_table6_3",
                 "martens_curves.cfg": "reproduce_martens_curves",
                 "martens_pathological.cfg": "reproduce_martens_pathological",
                 "hf_adding.cfg": "reproduce_hf_adding"}
# Parses every train.py flag file and validates the runs it describes (no training).
_CHECK_CONFIGS = """
import glob, os, sys
sys.path.insert(0, {root!r})
from absl import flags
from scripts import train
train.define_flags()
for path in sorted(glob.glob(os.path.join({configs!r}, "*.cfg"))):
    if os.path.basename(path) in {reproductions!r}:
        continue
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train.py", "--flagfile=" + path])
    run, specs = train.configs_from_flags()
    print(os.path.basename(path), run.task, run.model, train.run_names(specs))
"""


def test_every_flag_file_names_known_flags_and_valid_runs():
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK_CONFIGS.format(
            root=script_runner.ROOT, configs=CONFIGS, reproductions=sorted(REPRODUCTIONS))],
        cwd=script_runner.ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "mobahi_sec7.cfg adding diffused_rnn ['diffusion', 'sgd']" in lines
    assert "curves_gauss_newton.cfg curves mlp ['sgd', 'gauss_newton']" in lines
    assert "mobahi_annealed.cfg adding diffused_rnn ['sgd', 'annealed']" in lines
    assert len(lines) == 8
    # The reproduction scripts' flag files: every flag is one their script defines.
    for config, script in REPRODUCTIONS.items():
        with open(os.path.join(script_runner.ROOT, "scripts", f"{script}.py")) as f:
            defined = set(re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', f.read()))
        with open(os.path.join(CONFIGS, config)) as f:
            used = {line[2:].split("=")[0] for line in f if line.startswith("--")}
        assert used and used <= defined, used - defined


@pytest.mark.parametrize(
    "name", sorted(set(optimizers.OPTIMIZERS) - set(optimizers.KERAS))
)
def test_every_package_optimizer_trains_from_the_registry(name):
    """Each package optimizer that train.py offers builds from the registry and trains a
    diffused network (the models train.py builds for closure optimizers are kd.Models)."""
    keras.utils.set_random_seed(0)
    model = keras_diffusion.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(6),
        keras_diffusion.layers.DiffusedActivation("tanh", bandwidth=0.3),
        keras.layers.Dense(1),
    ])
    optimizer = optimizers.make(name, optimizers.Hyperparameters(cg_max_iterations=3), model)
    model.compile(optimizer, "mse")
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = np.tanh(x[:, :1])
    before = model.evaluate(x, y, verbose=0)
    # 24 steps: the local-entropy optimizers (L = 20) move the weights at their outer step.
    history = model.fit(x, y, batch_size=8, epochs=6, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.evaluate(x, y, verbose=0) < before
