"""The quick mode of scripts/reproduce_pascanu_figure4_5.py (Pascanu 2014, Figure 4.5)."""

import json
import os

import script_runner

# Not imported from the script: its module-level absl flags would clash with other scripts'.
METHODS = ("sgd", "newton", "sfn", "sgd_then_sfn")


def test_figure4_5_quick(tmp_path):
    out, png = tmp_path / "fig.json", tmp_path / "fig.png"
    done = script_runner.run_script(
        "reproduce_pascanu_figure4_5.py", "--quick", f"--output={out}", f"--plot={png}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 5 |")]
    assert len(rows) == len(METHODS)
    results = json.loads(out.read_text())["5"]
    assert set(results) == set(METHODS)
    for method, curves in results.items():
        for key in ("error", "loss", "hessian_max", "hessian_most_negative"):
            assert len(curves[key]) == 2, (method, key)  # initial weights + 1 epoch
        assert all(v <= 0.0 for v in curves["hessian_most_negative"])
        assert all(0.0 <= e <= 100.0 for e in curves["error"])
    # Newton-type methods start from the same initialization; SFN descends from it.
    assert results["sfn"]["loss"][0] == results["newton"]["loss"][0]
    assert results["sfn"]["loss"][1] < results["sfn"]["loss"][0]
    assert {"learning_rate", "momentum", "batch_size"} <= set(results["sgd"]["hyper"])
    assert os.path.getsize(png) > 10000
