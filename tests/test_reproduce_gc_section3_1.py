"""scripts/reproduce_gc_section3_1.py: the --quick CI run writes a consistent table and curves."""

import json

import numpy as np
import pytest

import script_runner
from scripts import reproduce_gc_section3_1 as section3_1


def test_quick_run_writes_table_curves_and_figure(tmp_path):
    proc = script_runner.run_script(
        "reproduce_gc_section3_1.py", "--quick", f"--output_dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    quick = section3_1.QUICK
    assert set(results["runs"]) == set(section3_1.METHODS)
    for method, runs in results["runs"].items():
        assert len(runs) == quick["seeds"]
        final = [run["val_accuracy"][-1] for run in runs]
        assert all(len(run["val_accuracy"]) == quick["epochs"] for run in runs)
        assert all(0.0 <= a <= 1.0 for a in final)
        summary = results["summary"][method]
        assert summary["mean"] == pytest.approx(np.mean(final))
        assert summary["std"] == pytest.approx(np.std(final))
    # Continuation logs its learned variance: positive, started from exp(log_variance).
    for run in results["runs"]["continuation"]:
        assert all(v > 0 for v in run["variance"])
    assert "variance" not in results["runs"]["adam"][0]
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {m} |" in table for m in section3_1.METHODS)
    assert (tmp_path / "curves.png").stat().st_size > 1000
