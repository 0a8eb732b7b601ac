"""Step time of the deep RNNs of Pascanu's thesis (ch. 6) against Keras's SimpleRNN and GRU.

Every new model (DT-RNN, DT(S)-RNN, DOT(S)-RNN, stacked RNN) is timed against a
``keras.layers.SimpleRNN`` and a ``keras.layers.GRU(use_cudnn=False)`` whose unit counts are
solved so that their recurrent part has the SAME number of parameters (closest integer).
All models share the input width, the sequence length and a ``Dense(outputs)`` head; one
train step (forward + BPTT + SGD update, ``train_on_batch``) is timed: the fastest of
``--repeats`` steps, taken round-robin over the models.
A last row times the DT(S) cell in plain ``keras.layers.RNN`` (input projected inside the
loop, step by step) against ``DeepTransitionRNN`` (projection hoisted: one matmul over the
sequence), which measures the hoisting.

    python scripts/benchmark_deep_rnn.py --batch=32 --length=50 --input_dim=64 --units=128
"""

import math
import os
import sys
import time

from absl import app, flags

import keras
import numpy as np

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_diffusion.layers import DeepOutput, DeepTransitionRNN, DeepTransitionRNNCell  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags; called only when this file runs as a script (no clash on import)."""
    flags.DEFINE_integer("batch", 32, "Sequences per batch.")
    flags.DEFINE_integer("length", 50, "Time steps per sequence.")
    flags.DEFINE_integer("input_dim", 64, "Input features per step.")
    flags.DEFINE_integer("units", 128, "Hidden state size of the deep RNNs.")
    flags.DEFINE_integer("transition_units", 128, "Width of the intermediate transition layer.")
    flags.DEFINE_integer("output_units", 128, "Width of the DOT(S)-RNN deep output layer.")
    flags.DEFINE_integer("outputs", 16, "Width of the shared Dense head.")
    flags.DEFINE_integer("repeats", 20, "Timed train steps per model.")
    flags.DEFINE_integer("warmup", 3, "Untimed train steps per model (tracing).")
    flags.DEFINE_bool("jit_compile", False, "Compile the train steps with XLA.")


def _recurrent_params(model):
    """Parameters of everything but the shared Dense head."""
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights) - (
        sum(int(np.prod(w.shape)) for w in model.layers[-1].trainable_weights)
    )


def _units_for(params, per_unit):
    """Smallest-error integer u with a*u^2 + b*u = params, per_unit = (a, b)."""
    a, b = per_unit
    root = (-b + math.sqrt(b * b + 4 * a * params)) / (2 * a)
    return min((max(1, math.floor(root)), math.ceil(root)),
               key=lambda u: abs(a * u * u + b * u - params))


def _model(recurrent):
    inputs = keras.Input((FLAGS.length, FLAGS.input_dim))
    x = inputs
    for layer in recurrent:
        x = layer(x)
    return keras.Model(inputs, keras.layers.Dense(FLAGS.outputs)(x))


def _dt(shortcut, hoisted=True):
    cell = DeepTransitionRNNCell(FLAGS.units, [FLAGS.transition_units], shortcut=shortcut)
    wrapper = DeepTransitionRNN if hoisted else keras.layers.RNN
    return [wrapper(cell, return_sequences=True)]


def _candidates():
    n = FLAGS.units
    return {
        "DT-RNN": _dt(shortcut=False),
        "DT(S)-RNN": _dt(shortcut=True),
        "DOT(S)-RNN": _dt(shortcut=True) + [DeepOutput([FLAGS.output_units])],
        "sRNN (2 levels)": [DeepTransitionRNN(DeepTransitionRNNCell(n), return_sequences=True),
                            DeepTransitionRNN(DeepTransitionRNNCell(n), return_sequences=True)],
    }


def _train_step(model):
    """A function running one train step of ``model`` (compiled, traced and warmed up)."""
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse",
                  jit_compile=FLAGS.jit_compile)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(FLAGS.batch, FLAGS.length, FLAGS.input_dim)).astype("float32")
    y = rng.normal(size=(FLAGS.batch, FLAGS.length, FLAGS.outputs)).astype("float32")
    for _ in range(FLAGS.warmup):
        model.train_on_batch(x, y)
    return lambda: model.train_on_batch(x, y)


def _best_times(steps):
    """Fastest of ``--repeats`` timings of each step, taken round-robin so that load from
    other processes spreads over all models alike."""
    best = {key: math.inf for key in steps}
    for _ in range(FLAGS.repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def _baselines(params):
    """SimpleRNN and GRU models with the recurrent parameter count closest to ``params``."""
    d = FLAGS.input_dim
    simple = _units_for(params, (1, d + 1))  # SimpleRNN: d*u + u^2 + u
    gru = _units_for(params, (3, 3 * d + 6))  # GRU (reset_after): 3*d*u + 3*u^2 + 6*u
    return {
        f"SimpleRNN({simple})": _model([keras.layers.SimpleRNN(simple, return_sequences=True)]),
        f"GRU({gru})": _model([keras.layers.GRU(gru, return_sequences=True, use_cudnn=False)]),
    }


def main(argv):
    del argv
    print(f"batch={FLAGS.batch} length={FLAGS.length} input_dim={FLAGS.input_dim} "
          f"units={FLAGS.units} transition_units={FLAGS.transition_units} "
          f"output_units={FLAGS.output_units} jit_compile={FLAGS.jit_compile}; "
          f"fastest of {FLAGS.repeats} train steps, taken round-robin")
    models, compared = {}, {}
    for name, layers in _candidates().items():
        models[name] = _model(layers)
        baselines = _baselines(_recurrent_params(models[name]))
        models.update(baselines)
        compared[name] = list(baselines)
    models["DT(S)-RNN in keras.layers.RNN"] = _model(_dt(shortcut=True, hoisted=False))
    times = _best_times({name: _train_step(model) for name, model in models.items()})
    header = (f"{'model':<17}{'params':>8}{'ms':>8} | {'baseline':<15}{'params':>8}{'ms':>8}"
              f"{'model/baseline':>16}")
    print(header)
    print("-" * len(header))
    for name, baselines in compared.items():
        params = _recurrent_params(models[name])
        for base in baselines:
            print(f"{name:<17}{params:>8}{times[name] * 1e3:>8.2f} | {base:<15}"
                  f"{_recurrent_params(models[base]):>8}{times[base] * 1e3:>8.2f}"
                  f"{times[name] / times[base]:>16.2f}")
    hoisted, in_loop = times["DT(S)-RNN"], times["DT(S)-RNN in keras.layers.RNN"]
    print(f"\nDT(S)-RNN input projection: DeepTransitionRNN (hoisted) {hoisted * 1e3:.2f} ms, "
          f"keras.layers.RNN (per step) {in_loop * 1e3:.2f} ms, "
          f"hoisted/per-step {hoisted / in_loop:.2f}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
