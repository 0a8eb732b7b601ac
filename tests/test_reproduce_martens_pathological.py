"""Tests for models/martens.py and scripts/reproduce_martens_pathological.py (short runs)."""

import dataclasses
import json

import keras
import numpy as np
import pytest

import script_runner
from keras_diffusion.datasets import pathological
from keras_diffusion.optimizers import HessianFree
from models import martens
from scripts import reproduce_martens_pathological as script

TINY = dict(
    tasks=("addition",), length=10, units=4, init="smart_tanh", seeds=1, budget_seconds=0.5,
    search_fraction=0.5, search_seed=7, hf_batch_size=20, curvature_fraction=0.5,
    cg_max_iterations=3, hf_dampings=(1.0,), hf_structural_dampings=(0.1,),
    sgd_batch_size=5, sgd_learning_rates=(0.05,), sgd_clipnorms=(1.0,),
    calibration_rounds=1, calibration_steps=2, checks=2, n_eval=50, n_test=100,
)


def test_method_configs_make_the_papers_optimizers():
    hf = martens.MethodConfig("hf", 100, damping=0.5, structural_damping=0.2,
                              curvature_fraction=0.25, cg_max_iterations=7).optimizer()
    assert isinstance(hf, HessianFree)
    assert hf.structural_layers == ["rnn"] and hf.structural_damping == 0.2
    assert hf.initial_damping == 0.5 and hf.cg_max_iterations == 7
    assert hf.curvature_fraction == 0.25
    sgd = martens.MethodConfig("sgd", 20, learning_rate=0.03, clipnorm=2.0).optimizer()
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.global_clipnorm == 2.0
    assert float(sgd.learning_rate) == pytest.approx(0.03)
    assert martens.MethodConfig("sgd", 20).knobs() == {"learning_rate": 0.01, "clipnorm": 1.0}


@pytest.mark.parametrize("bad,match", [
    (dict(method="adam"), "method"),
    (dict(batch_size=0), "batch_size"),
    (dict(damping=0.0), "damping"),
    (dict(curvature_fraction=1.5), "curvature_fraction"),
])
def test_method_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        martens.MethodConfig(**{"method": "hf", "batch_size": 10, **bad})


@pytest.mark.parametrize("bad,match", [
    (dict(tasks=("random_permutation",)), "tasks entry"),
    (dict(tasks=()), "at least one"),
    (dict(length=5), "too short"),
    (dict(hf_dampings=()), "hf_dampings"),
    (dict(sgd_clipnorms=(-1.0,)), "clipnorm"),
    (dict(search_fraction=0.0), "search_fraction"),
])
def test_settings_reject_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        script.Settings(**{**TINY, **bad})


def test_settings_grid_is_the_product_of_the_knobs():
    settings = script.Settings(**{**TINY, "hf_dampings": (1.0, 0.1),
                                  "sgd_learning_rates": (0.1, 0.01, 0.001)})
    assert [c.knobs() for c in settings.grid("hf")] == [
        {"damping": 1.0, "structural_damping": 0.1}, {"damping": 0.1, "structural_damping": 0.1}]
    assert len(settings.grid("sgd")) == 3
    assert all(c.batch_size == 5 for c in settings.grid("sgd"))


def test_trainer_resets_weights_and_optimizer_state_between_runs():
    settings = script.Settings(**TINY)
    task = pathological.PathologicalTask("addition", 10)
    trainer = script.Trainer(task, settings)
    config = settings.grid("hf")[0]
    model, _ = trainer.model(config, seed=3)
    trainer.train(model, config, 2, seed=0)
    assert int(model.optimizer.iterations) == 2
    assert float(model.optimizer.damping) != pytest.approx(1.0)
    other = dataclasses.replace(config, damping=0.25)
    again, _ = trainer.model(other, seed=3)
    assert again is model  # same compiled network: lambda lives in a variable
    assert int(again.optimizer.iterations) == 0
    assert float(again.optimizer.damping) == pytest.approx(0.25)
    for w in again.optimizer.warm_start:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), 0.0)
    fresh = martens.network(task, 4, seed=3)
    for a, b in zip(again.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    sgd, _ = trainer.model(dataclasses.replace(settings.grid("sgd")[0], clipnorm=5.0), seed=3)
    assert sgd is not model and sgd.optimizer.global_clipnorm == 5.0


def test_step_budgets_follow_the_interleaved_calibration():
    settings = script.Settings(**TINY)
    results = script.reproduce(settings)
    entry = results["tasks"]["addition"]
    for method in martens.METHODS:
        per_step = entry["seconds_per_step"][method]
        assert per_step > 0
        assert entry["steps"][method] == max(settings.checks,
                                             round(settings.budget_seconds / per_step))
        (run,) = entry["runs"][method]
        assert run["steps"] <= entry["steps"][method]
        assert all(0.0 <= e <= 1.0 for e in run["error_rates"])
        assert run["wall_clock"][-1] == pytest.approx(run["steps"] * per_step)
        assert len(entry["search"][method]["trials"]) == 1
    rows = script.table_rows(results)
    assert [r[1] for r in rows] == [martens.METHOD_NAMES[m] for m in martens.METHODS]


def test_quick_run_writes_table_json_and_plot(tmp_path):
    out = tmp_path / "martens"
    result = script_runner.run_script("reproduce_martens_pathological.py", "--quick",
                                      f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| addition | HF + structural damping |" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]["addition"]["runs"]) == {"hf", "sgd"}
    assert (out / "table.md").read_text().startswith("| task | method |")
    assert (out / "plot.png").stat().st_size > 0
