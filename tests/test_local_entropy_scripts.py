"""Smoke runs of the Table 1 reproduction and the local-entropy benchmark (in-process, small)."""

import math

from scripts import benchmark_local_entropy, reproduce_chaudhari_table1


def test_table1_quick_run_reports_every_method_beside_the_paper():
    config = dict(
        reproduce_chaudhari_table1.QUICK, methods=["entropy_sgd", "sgd"], search_seed=100,
        heat_gamma=1e-4,
    )
    results = reproduce_chaudhari_table1.run(config)
    assert list(results) == config["methods"]
    for r in results.values():
        assert len(r["curves"]) == 2 and all(len(c) == 2 for c in r["curves"])
        assert all(0.0 <= e <= 100.0 for c in r["curves"] for e in c)
        # One gradient evaluation per train step, for every method: effective epochs = epochs.
        assert r["gradient_evaluations"] == r["steps"] == 2 * math.ceil(1297 / 256)
        assert 1 <= r["best_epoch"] <= 2
    text = reproduce_chaudhari_table1.table(results, 2)
    assert len(text.splitlines()) == 2 + len(results)
    assert reproduce_chaudhari_table1.PAPER["entropy_sgd"] in text


def test_table1_learning_rate_search_picks_the_lowest_error():
    data = reproduce_chaudhari_table1.load_digits()
    config = dict(width=8, batch_size=256, epochs=1, search_seed=100,
                  learning_rates=[1e-4, 0.3], heat_gamma=1e-4)
    best, scores = reproduce_chaudhari_table1.search("sgd", data, config)
    assert set(scores) == {1e-4, 0.3} and scores[best] == min(scores.values())


def test_benchmark_quick_run_times_every_optimizer():
    seconds = benchmark_local_entropy.run(
        inputs=16, width=8, batch_size=8, steps=3, repeats=1, optimizers=("heat",)
    )
    assert set(seconds) == {"sgd", "heat", "forward"}
    assert all(math.isfinite(s) and s > 0 for s in seconds.values())
    text = benchmark_local_entropy.table(seconds)
    assert len(text.splitlines()) == 3 + 2 and "| heat |" in text
