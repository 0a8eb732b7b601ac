"""The full reproductions, as the README runs them (``pytest -m slow``; about 30 minutes on
2 CPU cores). CI runs their ``--quick`` versions instead (test_reproduce_*.py)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, timeout=3600):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_mobahi_figure6(tmp_path):
    _run("reproduce_mobahi_figure6.py", "--flagfile=scripts/configs/figure6.cfg",
         f"--output_dir={tmp_path}")
    results = json.loads((tmp_path / "results.json").read_text())
    for table in (results["table"], results["compare_initializer"]):
        assert set(table) == {"10/sgd", "10/diffusion", "50/sgd", "50/diffusion"}
        for entry in table.values():
            assert len(entry["epochs"]) == 10
    for entry in results["table"].values():
        assert entry["failures"] < 10  # every method reaches test error 0.02 at least once


def test_pascanu_figure5_11(tmp_path):
    stdout = _run("reproduce_pascanu_figure5_11.py", "--flagfile=scripts/configs/figure5_11.cfg",
                  f"--output_dir={tmp_path}")
    assert "| T | MSGD | MSGD-C | MSGD-CR |" in stdout
    report = json.loads((tmp_path / "results.json").read_text())
    assert len(report["runs"]) == 3 * 3 * 3
    assert all(r["success"] for r in report["runs"] if r["length"] == 20)  # the shortest: solved
    assert (tmp_path / "figure5_11.png").exists()


def test_pascanu_table6_3(tmp_path):
    _run("reproduce_pascanu_table6_3.py", "--flagfile=scripts/configs/table6_3.cfg",
         f"--output_dir={tmp_path}")
    results = json.loads((tmp_path / "results.json").read_text())["models"]
    assert list(results) == ["rnn", "dts", "dots", "srnn"]
    for r in results.values():
        assert abs(r["params"] - 25000) / 25000 < 0.05
        assert len(r["search"]) == 4  # the four searched learning rates
        assert r["test_bpc"] < 3.0  # well below the uniform code length log2(66) = 6.04
    assert (tmp_path / "table6_3.png").exists()
