"""scripts/benchmark_communication.py: the run-time count of all-reduces, the per-step counts
the README states for each optimizer, and a smoke run of the script."""

import json

import numpy as np
import pytest
import tensorflow as tf

import script_runner
from scripts import benchmark_communication as bench


def test_counter_counts_every_reduction_at_run_time_even_in_a_while_loop(mirrored_strategy):
    strategy = mirrored_strategy
    with bench.CommunicationCounter(strategy) as counter:

        @tf.function
        def step(iterations):
            def replica_fn():
                ctx = tf.distribute.get_replica_context()
                return ctx.all_reduce("SUM", [tf.ones([3]), tf.ones([2, 2])])

            strategy.run(replica_fn)

            def body(i, total):  # cross-replica context: one reduce per iteration
                shares = strategy.experimental_distribute_values_from_function(
                    lambda context: tf.cast(context.replica_id_in_sync_group, tf.float32))
                return i + 1, total + strategy.reduce("SUM", shares, axis=None)

            return tf.while_loop(lambda i, _: i < iterations, body, (0, 0.0))[1]

        assert float(step(tf.constant(4))) == 4.0  # replica ids 0 + 1, four times
        assert counter.read() == (2 + 4, (3 + 4) * 4 + 4 * 4)
        step(tf.constant(2))  # the same trace: counted as it runs
        assert counter.read() == (2 + 4 + 2 + 2, 2 * (3 + 4) * 4 + 6 * 4)
    assert "counted" not in strategy.extended.reduce_to.__name__  # given back


# Per step on one worker with 2 replicas, counted from the code (README, "Distributed
# training"): (tensors all-reduced, bytes) for a model of P float32 weights in 4 variables.
EXPECTED = {
    "sgd": lambda p: (4, 4 * p),  # Keras: the gradient, one tensor per variable
    "gauss_newton": lambda p: (5, 4 * (p + 1)),  # loss and gradient; CG sums device copies
    "entropy_sgd": lambda p: (5, 4 * (p + 1)),  # loss and gradient (HJ and HEAT alike)
    "gaussian_continuation": lambda p: (7, 4 * (p + 3)),  # + lambda's gradient, distance
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counted_reductions_per_step_match_the_code(mirrored_strategy, name):
    sizes = dict(inputs=2, width=3, batch_size=4, warmup=1, steps=2)
    measured = bench.measure(mirrored_strategy, name, **sizes)
    parameters = bench.parameter_count(2, 3)
    assert (measured["reductions"], measured["bytes"]) == EXPECTED[name](parameters)


def test_benchmark_smoke_run_prints_the_table(tmp_path):
    output = tmp_path / "comm.json"
    proc = script_runner.run_script(
        "benchmark_communication.py", "--quick", "--optimizers=sgd",
        "--configs=single,mirrored", f"--output={output}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| sgd | mirrored | 2 |" in proc.stdout
    with open(output) as f:
        results = json.load(f)
    single, mirrored = results["results"]["sgd"]
    parameters = results["parameters"]
    assert parameters == bench.parameter_count(4, 8) == 49
    assert single["reductions"] == single["bytes"] == 0
    # At least the gradient (4 tensors, 4 bytes per weight) every step.
    assert mirrored["reductions"] >= 4 and mirrored["bytes"] >= 4 * parameters
    assert np.isfinite(mirrored["seconds"]) and mirrored["seconds"] > 0


@pytest.mark.parametrize("settings, message", [
    ((["adam"], ["single"], 8), "--optimizers entries must be of"),
    ((["sgd"], [], 8), "--configs entries must be of"),
    ((["sgd"], ["single"], 7), "--batch_size must be even"),
])
def test_bad_flags_name_the_flag(settings, message):
    with pytest.raises(ValueError, match=message):
        bench.check_flags(*settings)
