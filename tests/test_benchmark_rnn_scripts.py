"""The RNN step-time benchmarks: importable next to the other scripts, and a tiny run each."""

import importlib

import script_runner
from absl import flags


def test_scripts_define_no_flags_on_import():
    before = set(flags.FLAGS)
    for name in ("benchmark_deep_rnn", "benchmark_diffused_rnn", "benchmark_gpu", "train"):
        importlib.import_module(f"scripts.{name}")
    assert set(flags.FLAGS) == before


def test_benchmark_diffused_rnn_runs_tiny():
    proc = script_runner.run_script(
        "benchmark_diffused_rnn.py", "--lengths=3", "--units=4", "--jit=false",
        "--batch_size=2", "--input_dim=2", "--steps=1", "--warmup=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("    3")]
    assert len(rows) == 1 and rows[0][:3] == ["3", "4", "False"]
    assert all(float(v) > 0 for v in rows[0][3:])


def test_benchmark_deep_rnn_runs_tiny():
    proc = script_runner.run_script(
        "benchmark_deep_rnn.py", "--batch=2", "--length=3", "--input_dim=2", "--units=4",
        "--transition_units=4", "--output_units=4", "--outputs=2", "--repeats=1", "--warmup=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(" | SimpleRNN(") == 4 and proc.stdout.count(" | GRU(") == 4
    assert "hoisted/per-step" in proc.stdout
