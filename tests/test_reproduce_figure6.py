"""scripts/reproduce_mobahi_figure6.py: the --quick CI run and the search it is built on."""

import importlib
import json
import math

import numpy as np
import pytest
from absl import flags

import script_runner
from scripts import reproduce_mobahi_figure6 as figure6
from scripts import train


def settings(**overrides):
    values = dict(
        batch_sizes=(10, 50), seeds=3, epochs=200, search_trials=40, search_epochs=100,
        search_seed=7, validation_fraction=0.2, target_error=0.02, workers=1,
    )
    values.update(overrides)
    return figure6.Settings(**values)


def test_quick_run_writes_a_sane_table(tmp_path):
    proc = script_runner.run_script(
        "reproduce_mobahi_figure6.py", "--quick", f"--output_dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    quick = figure6.QUICK
    assert set(results["table"]) == {f"{b}/{m}" for b in quick["batch_sizes"]
                                     for m in ("sgd", "diffusion")}
    for entry in results["table"].values():
        assert len(entry["epochs"]) == len(entry["curves"]) == quick["seeds"]
        assert all(e is None or 1 <= e <= quick["epochs"] for e in entry["epochs"])
        assert entry["failures"] == entry["epochs"].count(None)
        reached = [e for e in entry["epochs"] if e is not None]
        everything = reached + [math.inf] * entry["failures"]
        median = np.median(everything)
        assert entry["median"] == (None if math.isinf(median) else pytest.approx(median))
        assert len(entry["seconds_to_target"]) == len(reached)
        assert all(0 < s < 60 for s in entry["seconds_to_target"])
        assert 0 < entry["median_epoch_seconds"] < 10
        # Training stops at the target: a seed that reached it ends at or below it.
        for epochs, final in zip(entry["epochs"], entry["final_errors"]):
            assert final > 0
            if epochs is not None:
                assert final <= quick["target_error"]
    for method_trials in results["search"]["50"].values():
        assert len(method_trials) == quick["search_trials"]
    sgd_lr = results["table"]["50/sgd"]["hyperparameters"]["learning_rate"]
    assert results["table"]["50/sgd"]["hyperparameters"]["method"] == "sgd"
    assert 0.01 <= sgd_lr <= 1.0
    table = (tmp_path / "table.md").read_text()
    assert table.count("| 50 | sgd |") == 1 and table.count("| 50 | diffusion |") == 1
    assert "0.05 on the mean of the two numbers (0.2 on the sum)" in table
    assert table in proc.stdout
    assert (tmp_path / "figure6.png").stat().st_size > 0


def test_importing_the_script_defines_no_flags():
    before = set(flags.FLAGS)
    importlib.reload(figure6)  # a flag defined at import would be defined twice: an error
    assert set(flags.FLAGS) == before


def test_search_is_paired_and_within_ranges():
    trials = figure6.search_space(settings(), batch_size=10)
    assert len(trials) == 40
    for sgd, diffusion in trials:
        assert sgd.method == "sgd" and diffusion.method == "diffusion"
        assert sgd.optimizer == "sgd"
        assert sgd.learning_rate == diffusion.learning_rate  # same draw for both methods
        assert 0.01 <= sgd.learning_rate <= 1.0
        assert 0.1 <= diffusion.sigma0 <= 10.0 and 1e-6 <= diffusion.penalty <= 0.1
        assert diffusion.schedule == "linear"
        assert diffusion.sigma_epochs in {5, 10, 20, 40}
        if diffusion.optimizer == "annealed":
            assert 0.003 <= diffusion.sigma_floor <= 0.3
    assert [d.optimizer for _, d in trials].count("annealed") == 20  # half the trials
    # Latin hypercube: one learning rate in each of 40 equal strata of the log range.
    strata = np.floor((np.log10([s.learning_rate for s, _ in trials]) + 2) / 2 * 40)
    assert sorted(strata) == list(range(40))
    rates = np.log10([sgd.learning_rate for sgd, _ in trials])
    assert rates.max() - rates.min() > 1.0  # spread over the log range
    assert rates.max() > np.log10(0.3)  # beyond the old cap
    again = figure6.search_space(settings(), batch_size=10)
    assert [t[1] for t in again] == [t[1] for t in trials]
    assert figure6.search_space(settings(), batch_size=50)[0] != trials[0]


def test_search_score_orders_trials():
    scores = [
        figure6.search_score([[0.1, 0.05, 0.01]], 0.02, cap=3),
        figure6.search_score([[0.1, 0.01]], 0.02, cap=3),
        figure6.search_score([[0.1, 0.06, 0.03]], 0.02, cap=3),
        figure6.search_score([[0.1, 0.09, 0.08]], 0.02, cap=3),
        figure6.search_score([[math.nan]], 0.02, cap=3),
    ]
    assert scores[0] == (3, 0, 0.01) and scores[1] == (2, 0, 0.01)
    assert scores[2] == (4, 1, 0.03)
    assert sorted(range(4), key=lambda i: scores[i]) == [1, 0, 2, 3]
    assert scores[4] == (4, 1, math.inf)  # diverged: never reaches the target, ranks last
    # Several seeds: the median epochs (a miss counts cap + 1), not a mean over successes.
    five = [[0.01], [0.1, 0.01], [0.1, 0.1, 0.01], [0.5] * 3, [math.nan]]
    assert figure6.search_score(five, 0.02, cap=3) == (3, 2, 0.01)
    assert figure6.search_score([[0.01], [0.1, 0.01]], 0.02, cap=3) == (1.5, 0, 0.01)


def test_summary_uses_medians_failures_and_wall_clock():
    outcomes = [
        {"errors": [0.5, 0.1, 0.01], "seconds": [1.0, 1.0, 2.0], "compile_seconds": 9.0},
        {"errors": [0.5, 0.01], "seconds": [1.0, 3.0]},
        {"errors": [0.5, 0.4, 0.3, 0.3], "seconds": [1.0, 1.0, 1.0, 1.0]},
        {"errors": [0.01], "seconds": [0.5]},
    ]
    entry = figure6.summarize(outcomes, 0.02)
    assert entry["epochs"] == [3, 2, None, 1] and entry["failures"] == 1
    # Steady epoch time per run (median over epochs >= 2): 1.5, 3, 1, 0.5 (one epoch).
    # Medians over all 4 seeds, the failed one as never: (2 + 3) / 2, (4.5 + 6) / 2.
    assert entry["median"] == 2.5 and entry["seconds_to_target"] == [4.5, 6.0, 0.5]
    assert entry["measured_seconds_to_target"] == [4.0, 4.0, 0.5]
    assert entry["median_seconds"] == 5.25
    assert entry["median_epoch_seconds"] == 1.25
    assert entry["compile_seconds"] == [9.0]
    assert figure6.summarize(outcomes[2:3], 0.02)["median"] is None
    assert figure6.summarize(outcomes[1:3], 0.02)["median"] is None  # half failed: never


def test_epochs_to_thresholds():
    curves = [[0.5, 0.1, 0.01], [0.5, 0.05], [0.5, 0.5, 0.5]]
    assert figure6.epochs_to_thresholds(curves, [0.6, 0.1, 0.05]) == [1, 2, 3]
    assert math.isnan(figure6.epochs_to_thresholds(curves, [0.01])[0])  # 2 of 3 never


def test_shared_compiled_model_trains_each_seed_as_a_fresh_one():
    def job(*seeds):
        runs = tuple(train.RunConfig(epochs=2, batch_size=100, seed=s, verbose=0) for s in seeds)
        spec = train.MethodSpec("diffusion", learning_rate=0.2, optimizer="annealed",
                                sigma0=1.0, sigma_epochs=2, penalty=1e-3)
        return figure6.Job(runs, spec, "test", "erf", "lecun_normal")

    shared = figure6.train_runs(job(0, 1))
    alone = figure6.train_runs(job(1))
    assert shared[1]["errors"] == alone[0]["errors"]
    assert shared[0]["errors"] != shared[1]["errors"]
    assert shared[0]["compile_seconds"] > 0 and "compile_seconds" not in shared[1]


def test_table_cells():
    assert figure6.cell(None) == "never"
    assert figure6.cell(20.0) == "20.0"
    assert figure6.cell(0.0123, ".3f") == "0.012"
    assert figure6.ratio({"sgd": {"median": 90.0}, "diffusion": {"median": 20.0}}) == "4.50"
    assert figure6.ratio({"sgd": {"median": None}, "diffusion": {"median": 20.0}}) == "n/a"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(batch_sizes=()), r"batch_sizes.*got \(\)"),
        (dict(batch_sizes=(0,)), r"`batch_sizes entry` must be an integer >= 1, got 0"),
        (dict(seeds=0), "`seeds` must be an integer >= 1, got 0"),
        (dict(search_seeds=0), "`search_seeds` must be an integer >= 1, got 0"),
        (dict(validation_fraction=0.0), r"`validation_fraction` must be in \(0, 1\], got 0.0"),
        (dict(validation_fraction=1.0), r"`validation_fraction` must be in \(0, 1\), got 1.0"),
        (dict(output="tanh"), r"`output` must be one of \('erf', 'linear'\), got 'tanh'"),
        (dict(compare_initializer="ones"), r"`compare_initializer` must be one of .*'ones'"),
    ],
)
def test_bad_settings_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        settings(**overrides)
