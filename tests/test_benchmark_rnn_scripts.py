"""The RNN step-time benchmarks: importable next to the other scripts, and a tiny run each."""

import json
import os
import re
import subprocess
import sys

import script_runner


SCRIPTS = ("benchmark_deep_rnn", "benchmark_diffused_rnn", "benchmark_gpu", "train")


def test_scripts_define_no_flags_on_import():
    """In a fresh process (pytest has imported the scripts already), importing the scripts
    together defines none of their flags: those are defined only when a script runs."""
    defined = set()
    for name in SCRIPTS:
        with open(os.path.join(script_runner.ROOT, "scripts", f"{name}.py")) as f:
            defined |= set(re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', f.read()))
    assert {"batch", "lengths", "units", "policy", "jit_compile", "task"} <= defined
    code = (
        "import importlib, json; from absl import flags\n"
        f"for name in {SCRIPTS!r}: importlib.import_module('scripts.' + name)\n"
        "print(json.dumps(sorted(flags.FLAGS)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=script_runner.ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not set(json.loads(proc.stdout.splitlines()[-1])) & defined


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
