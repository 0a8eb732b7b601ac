"""Throughput of the package's recurrent layers and step time of its optimizers, on a GPU.

Runs on the first GPU TensorFlow sees (``--device=auto``), else on the CPU, and says which:
it prints ``tf.config.list_physical_devices()``, the device it placed the work on and, for
every timed model, the device of its weights and of the output of one eager call.

Two tables, each measured in this one run, models interleaved step by step (round-robin, so
that load from other processes spreads over all of them), median of ``--repeats`` steps after
``--warmup`` untimed ones (tracing, compilation):

1. Layers: sequences per second of one training step (forward, backpropagation through time,
   SGD update; ``train_on_batch``) of ``DiffusedRNN`` + ``DiffusedOutput``,
   ``keras.layers.RNN(DiffusedRNNCell)``, ``DeepTransitionRNN`` (DT(S)-RNN) and
   ``keras.layers.RNN(DeepTransitionRNNCell)``, against ``keras.layers.SimpleRNN`` (the
   baseline, ratio 1) and ``keras.layers.GRU`` with ``use_cudnn=True`` (cuDNN; GPU only,
   the row says why when it cannot run), ``"auto"`` and ``False``. Same units, batch and
   sequences for all.
2. Optimizers: one training step of each package optimizer on one model and batch
   (``keras.layers.RNN(DiffusedRNNCell)`` + ``Dense``) against one SGD step (ratio 1).

Example (the figures of the README's Benchmarks section):

    python scripts/benchmark_gpu.py --batch=64 --length=100 --units=256 --repeats=20
    python scripts/benchmark_gpu.py --policy=mixed_float16 --output=gpu.json
"""

import dataclasses
import json
import os
import re
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
from keras_diffusion import optimizers as kdo  # noqa: E402
from keras_diffusion.layers import (  # noqa: E402
    DeepTransitionRNN,
    DeepTransitionRNNCell,
    DiffusedOutput,
    DiffusedRNN,
    DiffusedRNNCell,
)

FLAGS = flags.FLAGS
LAYER_BASELINE = "SimpleRNN"
OPTIMIZER_BASELINE = "SGD"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one run measures (the flags of ``main``)."""

    batch: int = 64
    length: int = 100
    input_dim: int = 32
    units: int = 256
    repeats: int = 20
    warmup: int = 3
    jit_compile: bool = False
    policy: str = "float32"
    device: str = "auto"
    cg_max_iterations: int = 10
    lanczos_num_steps: int = 10


def define_flags():
    """Defines the flags; called only when this file runs as a script (no clash on import)."""
    defaults = Settings()
    flags.DEFINE_integer("batch", defaults.batch, "Sequences per batch.", lower_bound=1)
    flags.DEFINE_integer("length", defaults.length, "Time steps per sequence.", lower_bound=1)
    flags.DEFINE_integer("input_dim", defaults.input_dim, "Input features per step.", lower_bound=1)
    flags.DEFINE_integer("units", defaults.units, "Hidden units of every RNN.", lower_bound=1)
    flags.DEFINE_integer("repeats", defaults.repeats, "Timed steps per model (median).",
                         lower_bound=1)
    flags.DEFINE_integer("warmup", defaults.warmup, "Untimed steps per model.", lower_bound=1)
    flags.DEFINE_bool("jit_compile", defaults.jit_compile, "Compile the train steps with XLA.")
    flags.DEFINE_enum("policy", defaults.policy, ["float32", "mixed_float16", "mixed_bfloat16"],
                      "Keras dtype policy of every model.")
    flags.DEFINE_enum("device", defaults.device, ["auto", "gpu", "cpu"],
                      "auto: the first GPU if TensorFlow sees one, else the CPU.")
    flags.DEFINE_integer("cg_max_iterations", defaults.cg_max_iterations,
                         "CG iterations of Gauss-Newton and Hessian-free.", lower_bound=1)
    flags.DEFINE_integer("lanczos_num_steps", defaults.lanczos_num_steps,
                         "Lanczos steps of Saddle-Free Newton.", lower_bound=1)
    flags.DEFINE_string("output", None, "Also write the results as JSON to this path.")


def pick_device(choice):
    """``(device name, description)`` for ``--device``; ``gpu`` without a GPU is an error."""
    gpus = tf.config.list_physical_devices("GPU")
    if choice == "gpu" and not gpus:
        raise ValueError(
            "--device=gpu but TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') "
            "is empty): install a CUDA build of TensorFlow, or use --device=auto/cpu."
        )
    if gpus and choice in ("auto", "gpu"):
        details = tf.config.experimental.get_device_details(gpus[0])
        return "/GPU:0", f"GPU:0 {details.get('device_name', '')} {details}".strip()
    return "/CPU:0", "CPU:0 (no GPU used)"


def _diffused_cell(units):
    return DiffusedRNNCell(units, "erf", bandwidth=kd.Bandwidth(0.5), penalty=0.1)


def layer_models(s):
    """``{name: (layers after the Input, loss)}`` of the layer table (the baseline first)."""
    def head(units=1):
        return keras.layers.Dense(units)

    def gru(use_cudnn):
        return ([keras.layers.GRU(s.units, use_cudnn=use_cudnn), head()], "mse")

    return {
        LAYER_BASELINE: ([keras.layers.SimpleRNN(s.units), head()], "mse"),
        "GRU use_cudnn=True": gru(True),
        "GRU use_cudnn=auto": gru("auto"),
        "GRU use_cudnn=False": gru(False),
        "DiffusedRNN+DiffusedOutput": (
            [DiffusedRNN(_diffused_cell(s.units)),
             DiffusedOutput(1, bandwidth=kd.Bandwidth(0.5), penalty=0.1)],
            "mse",
        ),
        "RNN(DiffusedRNNCell)": ([keras.layers.RNN(_diffused_cell(s.units)), head()], "mse"),
        "DeepTransitionRNN DT(S)": (
            [DeepTransitionRNN(DeepTransitionRNNCell(s.units, [s.units], shortcut=True)), head()],
            "mse",
        ),
        "RNN(DeepTransitionRNNCell) DT(S)": (
            [keras.layers.RNN(DeepTransitionRNNCell(s.units, [s.units], shortcut=True)), head()],
            "mse",
        ),
    }


def optimizer_factories(s):
    """``{name: factory(model)}`` of the optimizer table, the SGD baseline first."""
    return {
        OPTIMIZER_BASELINE: lambda model: keras.optimizers.SGD(0.01),
        "AnnealedStep": lambda model: kdo.AnnealedStep(0.1, bandwidth=model),
        "GaussNewton": lambda model: kdo.GaussNewton(cg_max_iterations=s.cg_max_iterations),
        "HessianFree": lambda model: kdo.HessianFree(cg_max_iterations=s.cg_max_iterations),
        "SaddleFreeNewton": lambda model: kdo.SaddleFreeNewton(
            lanczos_num_steps=s.lanczos_num_steps),
        "GaussianContinuation": lambda model: kdo.GaussianContinuation(
            keras.optimizers.SGD(0.01)),
        "EntropySGD": lambda model: kdo.EntropySGD(0.1),
        "HJ": lambda model: kdo.HJ(0.1),
        "HEAT": lambda model: kdo.HEAT(0.1),
    }


def _build(s, layers):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(s.policy)
    try:
        keras.utils.set_random_seed(0)
        return kd.Sequential([keras.Input((s.length, s.input_dim))] + layers)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _placement(model, x):
    """The device of the model's first weight and of the output of one eager call."""
    output = model(x[:1])
    output = output[0] if isinstance(output, (list, tuple)) else output
    return {"weights": model.weights[0].value.device, "output": output.device}


def _steps(models, x, y):
    """A step function per model (compiled and warmed up), or the error that stopped it."""
    steps, errors = {}, {}
    for name, model in models.items():
        try:
            model.train_on_batch(x, y)
            steps[name] = lambda model=model: model.train_on_batch(x, y)
        except Exception as error:  # e.g. GRU(use_cudnn=True) without a GPU
            errors[name] = f"{type(error).__name__}: {_reason(error)}"
    return steps, errors


def _reason(error):
    """The informative line of an exception's message (Keras wraps layer errors)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Exception encountered")]
    return (lines or [""])[0][:160]


def median_times(steps, repeats, warmup):
    """Median seconds per call of each step, calls interleaved round-robin after ``warmup``."""
    for _ in range(warmup - 1):  # _steps already ran one step of each
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()  # train_on_batch returns numpy logs: the step has finished on the device
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def _table(s, models, x, y, baseline):
    steps, errors = _steps(models, x, y)
    times = median_times(steps, s.repeats, s.warmup)
    rows = {}
    for name, model in models.items():
        if name in errors:
            row = {"error": errors[name],
                   "placement": {"weights": model.weights[0].value.device, "output": "-"}}
        else:
            row = {"placement": _placement(model, x)}
            row.update(ms=1e3 * times[name], sequences_per_s=s.batch / times[name],
                       ratio=times[name] / times[baseline])
        rows[name] = row
    return rows


def run(s):
    """Measures both tables under ``Settings`` ``s``; returns them with the device facts."""
    device, description = pick_device(s.device)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(s.batch, s.length, s.input_dim)).astype("float32")
    y = rng.normal(size=(s.batch, 1)).astype("float32")
    with tf.device(device):
        models = {}
        for name, (layers, loss) in layer_models(s).items():
            models[name] = _build(s, layers)
            models[name].compile(keras.optimizers.SGD(0.01), loss, jit_compile=s.jit_compile)
        layers = _table(s, models, x, y, LAYER_BASELINE)
        models = {}
        for name, factory in optimizer_factories(s).items():
            model = _build(s, [keras.layers.RNN(_diffused_cell(s.units)), keras.layers.Dense(1)])
            model.compile(factory(model), "mse", jit_compile=s.jit_compile)
            models[name] = model
        optimizers = _table(s, models, x, y, OPTIMIZER_BASELINE)
    return {
        "settings": dataclasses.asdict(s),
        "physical_devices": [d.name for d in tf.config.list_physical_devices()],
        "device": device,
        "device_description": description,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "layers": layers,
        "optimizers": optimizers,
    }


def report(results):
    """The results as printed text."""
    s = results["settings"]
    lines = [
        f"physical devices: {results['physical_devices']}",
        f"ran on: {results['device']} ({results['device_description']})",
        f"TensorFlow {results['tensorflow']}, Keras {results['keras']}; batch={s['batch']} "
        f"length={s['length']} input_dim={s['input_dim']} units={s['units']} "
        f"policy={s['policy']} jit_compile={s['jit_compile']}; median of {s['repeats']} steps",
    ]
    for title, baseline in (("layers", LAYER_BASELINE), ("optimizers", OPTIMIZER_BASELINE)):
        lines.append(f"\n{title} (ratio: step time / {baseline} step time, same run)")
        lines.append(f"{'':<34}{'ms':>9}{'seq/s':>10}{'ratio':>8}  placement (weights | output)")
        for name, row in results[title].items():
            where = " | ".join(
                d.replace("/job:localhost/replica:0/task:0", "") for d in row["placement"].values()
            )
            if "error" in row:
                lines.append(f"{name:<34}{'not run: ' + row['error']}  {where}")
            else:
                lines.append(f"{name:<34}{row['ms']:>9.2f}{row['sequences_per_s']:>10.1f}"
                             f"{row['ratio']:>8.2f}  {where}")
    return "\n".join(lines)


def save(results, path):
    """Writes ``results`` (from ``run``) as JSON to ``path``."""
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


def main(argv):
    del argv
    settings = Settings(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(Settings)})
    results = run(settings)
    print(report(results), flush=True)
    if FLAGS.output:
        save(results, FLAGS.output)


if __name__ == "__main__":
    define_flags()
    app.run(main)
