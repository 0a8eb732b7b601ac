"""scripts/benchmark_gpu.py on the CPU at tiny sizes (the CI smoke test of the GPU benchmark)."""

import json

import pytest
import script_runner

from scripts import benchmark_gpu

TINY = benchmark_gpu.Settings(
    batch=2, length=3, input_dim=2, units=4, repeats=1, warmup=1, device="cpu",
    cg_max_iterations=2, lanczos_num_steps=2,
)


@pytest.fixture(scope="module")
def results():
    return benchmark_gpu.run(TINY)


def test_every_layer_and_optimizer_is_timed_against_its_baseline(results):
    assert results["device"] == "/CPU:0" and "/physical_device:CPU:0" in results["physical_devices"]
    assert list(results["layers"]) == list(benchmark_gpu.layer_models(TINY))
    assert list(results["optimizers"]) == list(benchmark_gpu.optimizer_factories(TINY))
    for table, baseline in (("layers", "SimpleRNN"), ("optimizers", "SGD")):
        rows = results[table]
        assert rows[baseline]["ratio"] == 1.0
        for name, row in rows.items():
            assert "CPU:0" in row["placement"]["weights"]
            if name == "GRU use_cudnn=True":  # cuDNN needs a GPU: the row says why
                assert "cuDNN" in row["error"] and "ms" not in row
                continue
            assert "error" not in row, (name, row)
            assert "CPU:0" in row["placement"]["output"]
            assert row["ms"] > 0 and row["sequences_per_s"] == pytest.approx(
                TINY.batch / (row["ms"] / 1e3))
            assert row["ratio"] == pytest.approx(row["ms"] / rows[baseline]["ms"])


def test_report_names_the_device_and_every_row(results):
    text = benchmark_gpu.report(results)
    assert "physical devices: " in text and "ran on: /CPU:0" in text
    for name in list(results["layers"]) + list(results["optimizers"]):
        assert f"\n{name}" in text


def test_gpu_requested_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="--device=gpu but TensorFlow sees no GPU"):
        benchmark_gpu.pick_device("gpu")


def test_results_round_trip_through_json(results, tmp_path):
    path = tmp_path / "gpu.json"
    benchmark_gpu.save(results, path)
    assert json.loads(path.read_text()) == results


def test_script_without_a_gpu_refuses_device_gpu():
    """The script's flags and main, run as a user does (stops before building any model)."""
    proc = script_runner.run_script("benchmark_gpu.py", "--device=gpu", "--units=2")
    assert proc.returncode != 0
    assert "--device=gpu but TensorFlow sees no GPU" in proc.stderr
