"""scripts/train.py: the sec. 7 comparison end to end with tiny flags, and its pieces."""

import json

import keras
import numpy as np
import pytest

import script_runner
import keras_diffusion
from models import builders
from scripts import train


def run_script(*args):
    return script_runner.run_script("train.py", *args)


def test_main_job_writes_summary_curves_and_plot(tmp_path):
    proc = run_script(
        f"--output_dir={tmp_path}", "--epochs=2", "--batch_size=100", "--target_error=0.16",
        "--learning_rate=0.05", "--sgd_learning_rate=0.05",
        "--schedule=staged", "--sigma_stages=0.8,0", "--sigma_epochs=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "10/10" in proc.stdout  # Keras progress bar: 10 steps of 100 of 1000 sequences
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    results = summary["results"]
    assert set(results) == {"diffusion", "sgd"}
    for method, result in results.items():
        errors = result["test_errors"]
        assert len(errors) == 2
        # Test MSE of a barely trained net: near the variance of the target (1/6).
        assert all(0.0 < e < 1.0 for e in errors)
        assert result["final_test_error"] == errors[-1]
        reached = result["epochs_to_target"]
        assert reached == train.epochs_to_reach(errors, 0.16)
    assert results["diffusion"]["hyperparameters"]["sigma_stages"] == [0.8, 0.0]
    text = (tmp_path / "summary.txt").read_text()
    assert "| diffusion |" in text and "| sgd |" in text
    curves = (tmp_path / "test_error.csv").read_text().splitlines()
    assert curves[0] == "epoch,diffusion,sgd" and len(curves) == 3
    with open(tmp_path / "test_error.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_flag_is_reported():
    proc = run_script("--sigma_stages=1,2,0", "--epochs=1", "--output_dir=/tmp/unused")
    assert proc.returncode != 0
    assert "strictly decreasing" in proc.stderr


def test_epochs_to_reach():
    assert train.epochs_to_reach([0.3, 0.1, 0.02, 0.01], 0.02) == 3
    assert train.epochs_to_reach([0.3, 0.1], 0.02) is None
    assert train.epochs_to_reach(np.array([0.01]), 0.02) == 1


def test_error_curve_matches_builders_test_error_at_sigma_zero():
    run = train.RunConfig(epochs=1, batch_size=500, verbose=0)
    spec = train.MethodSpec("diffusion", sigma0=0.7, penalty=0.1)
    model = train.build_model(run, spec, length=10)
    x, y = run.make_task().arrays("test")
    curve = train.ErrorCurve(x, y)
    curve.set_model(model)
    error = curve.error()
    assert error == pytest.approx(builders.adding_test_error(model, x, y), rel=1e-5)
    assert keras_diffusion.get_sigma(model) == pytest.approx(0.7)  # restored
    keras_diffusion.set_sigma(model, 0.0)
    prediction = model.predict(x, verbose=0)
    assert error == pytest.approx(float(np.mean((prediction - y) ** 2)), rel=1e-5)


def test_annealed_run_moves_the_error_every_epoch():
    run = train.RunConfig(epochs=2, batch_size=500, verbose=0)
    spec = train.MethodSpec("diffusion", learning_rate=0.5, optimizer="annealed",
                            schedule="geometric", sigma0=0.5, sigma_rate=0.5)
    keras.utils.set_random_seed(run.seed)  # as train_method does: the same initial weights
    model = train.build_model(run, spec, length=10)
    assert type(model.optimizer).__name__ == "AnnealedStep"
    curve = train.ErrorCurve(*run.make_task().arrays("test"))
    curve.set_model(model)
    initial = curve.error()
    errors = train.train_method(run, spec)
    assert errors.shape == (2,) and np.isfinite(errors).all()
    # Every annealed step has length learning_rate * sigma > 0: each epoch changes the error.
    assert errors[0] != pytest.approx(initial, rel=1e-6)
    assert errors[1] != pytest.approx(errors[0], rel=1e-6)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: train.MethodSpec(method="adam"), "'adam'"),
        (lambda: train.MethodSpec(learning_rate=-1.0), "-1.0"),
        (lambda: train.MethodSpec(sigma0=float("nan")), "nan"),
        (lambda: train.MethodSpec(sigma_rate=0.0), r"`sigma_rate` must be in \(0, 1\], got 0.0"),
        (lambda: train.MethodSpec(schedule="staged", sigma_stages=(1.0, 0.5)), "end at 0"),
        (lambda: train.RunConfig(batch_size=0), "`batch_size` must be an integer >= 1, got 0"),
        (lambda: train.RunConfig(task="copy"), "'copy'"),
    ],
)
def test_bad_configs_name_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()
