"""Training-step time of the diffused RNN against keras.layers.SimpleRNN of the same size.

For every (length, units, jit_compile) the script builds, on the same inputs:

* ``diffused``: ``DiffusedRNN(DiffusedRNNCell)`` + ``DiffusedOutput`` trained on the full
  approximate diffused cost of Mobahi 2016, sec. 4.3 (sigma > 0, penalty > 0);
* ``rnn_cell``: ``keras.layers.RNN(DiffusedRNNCell)`` + ``Dense`` (the eq. (6) forward with the
  input projection inside the loop, squared error only);
* ``simple``: ``keras.layers.SimpleRNN`` + ``Dense`` (the baseline, squared error).

It times ``train_on_batch`` (one optimizer step), interleaving the models step by step, drops
``--warmup`` steps and prints the median step time of each and the ratios to SimpleRNN.
By default it runs TensorFlow on one thread and reads the process CPU time
(``--clock=cpu``): on a shared machine the CPU time of a single-threaded step is stable where
the wall-clock time is not; use ``--clock=wall --threads=0`` on an idle machine.

Example:

    python scripts/benchmark_diffused_rnn.py --quick
    python scripts/benchmark_diffused_rnn.py --lengths=50,200 --units=128,512 --steps=7
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_diffusion as kd  # noqa: E402
from keras_diffusion.layers import DiffusedOutput, DiffusedRNN, DiffusedRNNCell  # noqa: E402
from keras_diffusion.losses import SequenceSquaredError  # noqa: E402

FLAGS = flags.FLAGS
JIT_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def define_flags():
    """Defines the flags; called only when this file runs as a script (no clash on import)."""
    flags.DEFINE_list("lengths", ["50", "200"], "Sequence lengths T.")
    flags.DEFINE_list("units", ["128", "512"], "Hidden units H.")
    flags.DEFINE_list("jit", ["false", "true"], "jit_compile settings to time.")
    flags.register_validator(
        "jit",
        lambda values: all(v.lower() in JIT_VALUES for v in values),
        message="--jit takes true/false values, e.g. --jit=false,true.",
    )
    flags.DEFINE_integer("batch_size", 32, "Sequences per batch.", lower_bound=1)
    flags.DEFINE_integer("input_dim", 8, "Input features per step.", lower_bound=1)
    flags.DEFINE_integer("steps", 7, "Timed training steps per model (median reported).", lower_bound=1)
    flags.DEFINE_integer("warmup", 2, "Untimed training steps per model (tracing, compilation).", lower_bound=1)
    flags.DEFINE_string("activation", "erf", "Hidden activation of the diffused RNN.")
    flags.DEFINE_bool("quick", False, "Only T=50, H=128 (both jit settings), 5 steps.")
    flags.DEFINE_enum("clock", "cpu", ["cpu", "wall"], "Process CPU time or wall-clock time.")
    flags.DEFINE_integer("threads", 1, "TensorFlow intra- and inter-op threads (0: TF default).", lower_bound=0)


def build(kind, length, units, input_dim):
    inputs = keras.Input((length, input_dim))
    if kind == "simple":
        outputs = keras.layers.Dense(1)(keras.layers.SimpleRNN(units)(inputs))
        return keras.Model(inputs, outputs)
    sigma = kd.Bandwidth(0.5)
    cell = DiffusedRNNCell(units, FLAGS.activation, bandwidth=sigma, penalty=0.1)
    if kind == "rnn_cell":
        outputs = keras.layers.Dense(1)(keras.layers.RNN(cell)(inputs))
    else:
        outputs = DiffusedOutput(1, "linear", bandwidth=sigma, penalty=0.1)(DiffusedRNN(cell)(inputs))
    return keras.Model(inputs, outputs)


def time_steps(models, x, y, steps, warmup, clock):
    """Median seconds per ``train_on_batch`` for each model, timed step-interleaved."""
    for model in models.values():
        for _ in range(warmup):
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(steps):
        for name, model in models.items():
            start = clock()
            model.train_on_batch(x, y)
            times[name].append(clock() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def main(argv):
    del argv
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    clock = time.process_time if FLAGS.clock == "cpu" else time.perf_counter
    lengths, units_list, jits, steps = FLAGS.lengths, FLAGS.units, FLAGS.jit, FLAGS.steps
    if FLAGS.quick:
        lengths, units_list, steps = ["50"], ["128"], 5
    rng = np.random.default_rng(0)
    header = f"{'T':>5} {'H':>5} {'jit':>5} {'simple ms':>10} {'diffused ms':>12} {'rnn_cell ms':>12} {'diffused/simple':>16} {'rnn_cell/simple':>16}"
    print(f"clock={FLAGS.clock} threads={FLAGS.threads} batch={FLAGS.batch_size} input_dim={FLAGS.input_dim}")
    print(header)
    for length in map(int, lengths):
        for units in map(int, units_list):
            x = rng.normal(size=(FLAGS.batch_size, length, FLAGS.input_dim)).astype("float32")
            y = rng.normal(size=(FLAGS.batch_size, 1)).astype("float32")
            for jit in jits:
                jit_compile = JIT_VALUES[jit.lower()]
                models = {}
                for kind in ("simple", "diffused", "rnn_cell"):
                    keras.utils.set_random_seed(0)
                    model = build(kind, length, units, FLAGS.input_dim)
                    loss = SequenceSquaredError() if kind == "diffused" else "mse"
                    model.compile(keras.optimizers.SGD(1e-3), loss=loss, jit_compile=jit_compile)
                    models[kind] = model
                ms = {k: 1e3 * v for k, v in time_steps(models, x, y, steps, FLAGS.warmup, clock).items()}
                print(
                    f"{length:>5} {units:>5} {str(jit_compile):>5} {ms['simple']:>10.2f} {ms['diffused']:>12.2f} "
                    f"{ms['rnn_cell']:>12.2f} {ms['diffused'] / ms['simple']:>16.2f} {ms['rnn_cell'] / ms['simple']:>16.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    define_flags()
    app.run(main)
