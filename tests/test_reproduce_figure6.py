"""scripts/reproduce_mobahi_figure6.py: the --quick CI run and the search it is built on."""

import json
import math

import numpy as np
import pytest

import script_runner
from scripts import reproduce_mobahi_figure6 as figure6


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
        assert len(entry["epochs"]) == quick["seeds"]
        assert all(e is None or 1 <= e <= quick["epochs"] for e in entry["epochs"])
        assert entry["failures"] == entry["epochs"].count(None)
        reached = [e for e in entry["epochs"] if e is not None]
        assert entry["mean"] == (pytest.approx(np.mean(reached)) if reached else None)
        # Training stops at the target: a seed that reached it ends at or below it.
        for epochs, final in zip(entry["epochs"], entry["final_errors"]):
            assert final > 0
            if epochs is not None:
                assert final <= quick["target_error"]
    for method_trials in results["search"]["50"].values():
        assert len(method_trials) == quick["search_trials"]
    sgd_lr = results["table"]["50/sgd"]["hyperparameters"]["learning_rate"]
    assert results["table"]["50/sgd"]["hyperparameters"]["method"] == "sgd"
    assert 0.01 <= sgd_lr <= 0.3
    table = (tmp_path / "table.md").read_text()
    assert table.count("| 50 | sgd |") == 1 and table.count("| 50 | diffusion |") == 1
    assert table in proc.stdout


def test_search_is_paired_and_within_ranges():
    trials = figure6.search_space(settings(), batch_size=10)
    assert len(trials) == 40
    for sgd, diffusion in trials:
        assert sgd.method == "sgd" and diffusion.method == "diffusion"
        assert sgd.learning_rate == diffusion.learning_rate  # same draw for both methods
        assert 0.01 <= sgd.learning_rate <= 0.3
        assert 0.1 <= diffusion.sigma0 <= 3.0 and 1e-5 <= diffusion.penalty <= 0.1
        assert diffusion.schedule == "linear"
        assert diffusion.sigma_epochs in {5, 10, 20, 40}
    rates = np.log10([sgd.learning_rate for sgd, _ in trials])
    assert rates.max() - rates.min() > 1.0  # spread over the log range
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
    assert scores[0] == (3, 0.01) and scores[1] == (2, 0.01) and scores[2] == (4, 0.03)
    assert sorted(range(4), key=lambda i: scores[i]) == [1, 0, 2, 3]
    assert scores[4] == (4, math.inf)  # diverged: never reaches the target, ranks last
    assert min(scores[3:], key=lambda s: s) == scores[3]
    # Several seeds: mean epochs (a miss counts cap + 1), and one divergence makes it inf.
    assert figure6.search_score([[0.01], [0.1, 0.01]], 0.02, cap=3) == (1.5, 0.01)
    two_seeds = figure6.search_score([[0.01], [0.5, 0.3, 0.2]], 0.02, cap=3)
    assert two_seeds == pytest.approx((2.5, 0.105))
    assert figure6.search_score([[0.01], [math.inf]], 0.02, cap=3)[1] == math.inf


def test_table_cells():
    assert figure6.epochs_cell({"mean": None, "sd": None}) == "never"
    assert figure6.epochs_cell({"mean": 20.0, "sd": None}) == "20.0"
    assert figure6.epochs_cell({"mean": 20.0, "sd": 2.5}) == "20.0 +- 2.5"
    assert figure6.ratio({"sgd": {"mean": 90.0}, "diffusion": {"mean": 20.0}}) == "4.50"
    assert figure6.ratio({"sgd": {"mean": None}, "diffusion": {"mean": 20.0}}) == "n/a"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(batch_sizes=()), r"batch_sizes.*got \(\)"),
        (dict(batch_sizes=(0,)), r"`batch_sizes entry` must be an integer >= 1, got 0"),
        (dict(seeds=0), "`seeds` must be an integer >= 1, got 0"),
        (dict(search_seeds=0), "`search_seeds` must be an integer >= 1, got 0"),
        (dict(validation_fraction=0.0), r"`validation_fraction` must be in \(0, 1\], got 0.0"),
        (dict(validation_fraction=1.0), r"`validation_fraction` must be in \(0, 1\), got 1.0"),
    ],
)
def test_bad_settings_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        settings(**overrides)
