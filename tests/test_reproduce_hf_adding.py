"""Tests for scripts/reproduce_hf_adding.py: the search, the scoring and a quick run."""

import json
import math

import numpy as np
import pytest

import script_runner
from scripts import reproduce_hf_adding as script

SETTINGS = dict(seeds=2, epochs=5, hf_epochs=3, search_trials=4, search_epochs=20,
                hf_search_epochs=4, search_seed=3, batch_size=50, target_error=0.02,
                calibration_rounds=1)


def test_search_gives_every_method_the_same_number_of_trials():
    settings = script.Settings(**SETTINGS)
    trials = script.search_space(settings)
    assert {m: len(t) for m, t in trials.items()} == {m: 4 for m in script.METHODS}
    for sgd, diffusion, hf in zip(trials["sgd"], trials["diffusion"], trials["hf"]):
        assert sgd.method == "sgd" and sgd.optimizer == "sgd"
        assert diffusion.method == "diffusion" and diffusion.schedule == "linear"
        assert sgd.learning_rate == diffusion.learning_rate  # paired draws
        assert 0.01 <= sgd.learning_rate <= 0.3
        assert 0.1 <= diffusion.sigma0 <= 3 and 1e-5 <= diffusion.penalty <= 1e-2
        assert diffusion.sigma_epochs in {max(1, int(f * 20)) for f in script.SCHEDULE_FRACTIONS}
        assert hf.method == "sgd" and hf.optimizer == "hessian_free"  # the plain network
        assert 0.1 <= hf.learning_rate <= 1.0 and hf.cg_max_iterations in script.CG_CAPS
    again = script.search_space(settings)
    assert again == trials  # seeded
    assert script.search_space(script.Settings(**{**SETTINGS, "search_seed": 4})) != trials


def test_score_counts_a_miss_as_the_cap_plus_one():
    assert script.score(np.array([0.5, 0.01, 0.001]), 0.02, 10) == (2, 0.001)
    assert script.score(np.array([0.5, 0.1]), 0.02, 10) == (11, 0.1)
    assert script.score(np.array([0.5, np.nan]), 0.02, 10) == (11, math.inf)


def test_settings_caps_and_run_configs():
    settings = script.Settings(**SETTINGS)
    assert settings.cap("hf") == 3 and settings.cap("hf", search=True) == 4
    assert settings.cap("sgd") == 5 and settings.cap("diffusion", search=True) == 20
    search = settings.run("sgd", 3, search=True)
    assert search.validation_fraction == 0.2 and search.epochs == 20 and search.stop_at_target
    final = settings.run("hf", 0)
    assert final.validation_fraction == 0.0 and final.epochs == 3 and final.seed == 0


@pytest.mark.parametrize("name", ["seeds", "hf_epochs", "search_trials", "calibration_rounds"])
def test_settings_reject_nonpositive_counts(name):
    with pytest.raises(ValueError, match=name):
        script.Settings(**{**SETTINGS, name: 0})


def test_quick_run_writes_table_json_and_plot(tmp_path):
    out = tmp_path / "adding"
    result = script_runner.run_script("reproduce_hf_adding.py", "--quick", f"--output_dir={out}",
                                      timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == list(script.METHODS)
    for method in script.METHODS:
        assert results["seconds_per_epoch"][method] > 0
        (run,) = results["runs"][method]["runs"]
        errors = run["test_errors"]
        assert 1 <= len(errors) <= (1 if method == "hf" else 2)
        if run["epochs_to_target"] is not None:
            assert run["seconds_to_target"] == pytest.approx(
                run["epochs_to_target"] * results["seconds_per_epoch"][method])
    table = (out / "table.md").read_text()
    assert all(f"| {m} |" in table for m in script.METHODS)
    assert (out / "plot.png").stat().st_size > 0
