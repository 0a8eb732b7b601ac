"""Mobahi (2016), sec. 7: an erf RNN learns the adding task, by diffusion and by SGD.

The defaults run the comparison of sec. 7 / Figure 6: a 10-unit erf RNN, the adding task
with sequences of length 10 (1000 training, 100 test sequences, ``models/adding.py``),
trained once by diffusion (the diffused cost of sec. 4.3 with a sigma schedule lowering sigma
to 0, Algorithm 1) and once by plain SGD on the undiffused cost, same architecture, same
initial weights. After every epoch it records the test error of Figure 6: the mean squared
error of the final output on the test sequences, evaluated with the undiffused network
(sigma = 0; ``models.builders.adding_test_error``). It writes into ``--output_dir``:

* ``summary.txt`` / ``summary.json``: epochs each method needs to reach ``--target_error``
  (0.02 in sec. 7) and the final test error;
* ``test_error.png``: test error against epochs for both methods;
* ``test_error.csv``: the curves.

Usage:
  python scripts/train.py --output_dir=/tmp/adding
  python scripts/train.py --schedule=staged --sigma_stages=1,0.5,0.25,0 --sigma_epochs=5
  python scripts/train.py --optimizer=annealed --learning_rate=0.5     # sec. 5.2 step
  python scripts/train.py --task=long_adding --length=200 --epochs=50
"""

import dataclasses
import json
import math
import os
import sys
import time

from absl import app, flags

import keras
import numpy as np
import tensorflow as tf

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_diffusion  # noqa: E402
from keras_diffusion import validation  # noqa: E402
from keras_diffusion.losses import SequenceSquaredError  # noqa: E402
from keras_diffusion.optimizers import AnnealedStep  # noqa: E402
from models import adding, builders  # noqa: E402

METHODS = ("diffusion", "sgd")
OPTIMIZERS = ("sgd", "annealed")
SCHEDULES = ("linear", "geometric", "polynomial", "staged", "constant")
TASKS = ("adding", "long_adding")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """Hyperparameters of one training method.

    ``"sgd"`` trains the plain network (sigma = 0, no penalty) with ``keras.optimizers.SGD``;
    only ``learning_rate`` applies to it. ``"diffusion"`` trains the diffused cost with
    ``optimizer`` (``"sgd"``, or ``"annealed"``: the sec. 5.2 step, ``learning_rate`` = eta)
    while ``schedule`` lowers sigma from ``sigma0`` (``keras_diffusion.callbacks``):
    ``linear`` reaches 0 after ``sigma_epochs`` epochs; ``geometric`` multiplies by
    ``sigma_rate`` per epoch; ``polynomial`` is ``sigma0 / (1 + k)**sigma_gamma``; both snap to
    0 below ``sigma_cutoff``; ``staged`` runs ``sigma_stages`` (ending at 0) for
    ``sigma_epochs`` epochs each; ``constant`` keeps ``sigma0``. ``penalty`` is lambda (sec. 4.1).
    """

    method: str = "diffusion"
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    schedule: str = "linear"
    sigma0: float = 1.0
    sigma_epochs: int = 30
    sigma_rate: float = 0.9
    sigma_gamma: float = 1.0
    sigma_cutoff: float = 0.0
    sigma_stages: tuple = ()
    penalty: float = 1e-4
    sigma_floor: float = 0.01

    def __post_init__(self):
        validation.one_of("method", self.method, METHODS)
        validation.one_of("optimizer", self.optimizer, OPTIMIZERS)
        validation.one_of("schedule", self.schedule, SCHEDULES)
        validation.positive("learning_rate", self.learning_rate)
        validation.positive_int("sigma_epochs", self.sigma_epochs)
        for name in ("sigma0", "sigma_cutoff", "penalty", "sigma_floor", "sigma_gamma"):
            validation.nonnegative(name, getattr(self, name))
        validation.fraction("sigma_rate", self.sigma_rate)
        if self.sigma_stages:  # validated even where unused, naming the bad value
            keras_diffusion.callbacks.StagedSigma(list(self.sigma_stages), epochs_per_stage=1)

    def sigma_callback(self):
        """The ``keras_diffusion.callbacks`` schedule of this method (None for SGD/constant)."""
        if self.method == "sgd" or self.schedule == "constant":
            return None
        callbacks = keras_diffusion.callbacks
        if self.schedule == "linear":
            return callbacks.LinearSigma(self.sigma0, duration=self.sigma_epochs)
        if self.schedule == "geometric":
            return callbacks.GeometricSigma(self.sigma0, self.sigma_rate, cutoff=self.sigma_cutoff)
        if self.schedule == "polynomial":
            return callbacks.PolynomialSigma(
                self.sigma0, self.sigma_gamma, cutoff=self.sigma_cutoff
            )
        stages = self.sigma_stages or (self.sigma0, self.sigma0 / 2, self.sigma0 / 4, 0.0)
        return callbacks.StagedSigma(list(stages), epochs_per_stage=self.sigma_epochs)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What is trained on, for how long, and how progress is measured."""

    task: str = "adding"
    length: int = 10
    epochs: int = 150
    batch_size: int = 50
    seed: int = 0
    units: int = 10
    activation: str = "erf"
    target_error: float = 0.02
    stop_at_target: bool = False
    validation_fraction: float = 0.0
    verbose: int = 1

    def __post_init__(self):
        validation.one_of("task", self.task, TASKS)
        for name in ("epochs", "batch_size", "units"):
            validation.positive_int(name, getattr(self, name))
        validation.positive("target_error", self.target_error)

    def make_task(self, seed=None):
        seed = self.seed if seed is None else seed
        if self.task == "adding":
            if self.length != 10:
                return adding.AddingTask(
                    length=self.length, validation_fraction=self.validation_fraction, seed=seed
                )
            return adding.mobahi_adding_task(seed, self.validation_fraction)
        return adding.long_adding_task(
            self.length, seed=seed, validation_fraction=self.validation_fraction
        )


class ErrorCurve(keras.callbacks.Callback):
    """Logs the Figure 6 error after every epoch: the MSE of the final output of the
    undiffused network (sigma = 0) on ``(x, y)``.

    Same value as ``models.builders.adding_test_error`` (tests/test_train_script.py checks
    it), but through one compiled forward function instead of ``model.predict``, which costs
    more than a training epoch here. The value goes into ``logs[key]`` (History and the
    progress bar) and ``self.errors``. Training stops once the error is <= ``stop_at`` (if
    given) or not finite (a diverged run).
    """

    def __init__(self, x, y, key="test_error", stop_at=None):
        super().__init__()
        self.x, self.y, self.key, self.stop_at = x, y, key, stop_at
        self.errors = []
        self._forward = None

    def error(self):
        if self._forward is None:
            model = self.model
            self._forward = tf.function(lambda x: model(x, training=False))
        with builders.undiffused(self.model):
            prediction = self._forward(self.x).numpy()
        return builders.squared_error(prediction, self.y)

    def on_epoch_end(self, epoch, logs=None):
        error = self.error()
        self.errors.append(error)
        if logs is not None:
            logs[self.key] = error
        if not math.isfinite(error) or (self.stop_at is not None and error <= self.stop_at):
            self.model.stop_training = True


def build_model(run, spec, length, steps_per_epoch=1):
    model = builders.build_adding_rnn(
        spec.method,
        units=run.units,
        activation=run.activation,
        sigma=spec.sigma0,
        penalty=spec.penalty,
        length=length,
        seed=run.seed,
    )
    if spec.method == "diffusion" and spec.optimizer == "annealed":
        optimizer = AnnealedStep(spec.learning_rate, bandwidth=model, sigma_floor=spec.sigma_floor)
    else:
        optimizer = keras.optimizers.SGD(spec.learning_rate)
    # One compiled call runs a whole epoch: the per-step dispatch of fit would dominate.
    model.compile(
        optimizer=optimizer,
        loss=SequenceSquaredError(),
        jit_compile=True,
        steps_per_execution=steps_per_epoch,
    )
    return model


def train_method(run, spec, split="test"):
    """Trains one method; returns its per-epoch error on ``split`` as a numpy array.

    Training uses the ``"train"`` split; ``split="validation"`` (with
    ``run.validation_fraction > 0``) measures the error for hyperparameter search.
    """
    keras.utils.set_random_seed(run.seed)
    task = run.make_task()
    x_train, _ = task.arrays("train")
    model = build_model(run, spec, task.length, math.ceil(len(x_train) / run.batch_size))
    curve = ErrorCurve(
        *task.arrays(split),
        key=f"{split}_error",
        stop_at=run.target_error if run.stop_at_target else None,
    )
    callbacks = [c for c in (spec.sigma_callback(), curve) if c is not None]
    model.fit(
        task.dataset("train", run.batch_size, shuffle=True),
        epochs=run.epochs,
        callbacks=callbacks,
        verbose=run.verbose,
        shuffle=False,  # the dataset reshuffles itself, seeded
    )
    return np.array(curve.errors)


def epochs_to_reach(errors, target):
    """The first epoch (1-based) whose error is <= ``target``, or None if none is."""
    hits = np.flatnonzero(np.asarray(errors) <= target)
    return int(hits[0]) + 1 if hits.size else None


def train_and_evaluate(run, specs, output_dir):
    """Trains every method of ``specs`` and writes the summary, curves and plot.

    Returns:
        ``{method: {"epochs_to_target": int | None, "final_test_error": float,
        "test_errors": [...], "seconds": float, "hyperparameters": {...}}}``.
    """
    os.makedirs(output_dir, exist_ok=True)
    results = {}
    for spec in specs:
        print(f"== {spec.method}: {spec}")
        start = time.time()
        errors = train_method(run, spec)
        results[spec.method] = {
            "epochs_to_target": epochs_to_reach(errors, run.target_error),
            "final_test_error": float(errors[-1]),
            "test_errors": errors.tolist(),
            "seconds": time.time() - start,
            "hyperparameters": dataclasses.asdict(spec),
        }
    summary = summary_table(results, run)
    print(summary)
    with open(os.path.join(output_dir, "summary.txt"), "w") as f:
        f.write(summary + "\n")
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump({"run": dataclasses.asdict(run), "results": results}, f, indent=1)
    write_curves(results, os.path.join(output_dir, "test_error.csv"))
    plot_curves(results, run, os.path.join(output_dir, "test_error.png"))
    return results


def summary_table(results, run):
    lines = [
        f"Adding task (T = {run.length}), batch size {run.batch_size}, seed {run.seed}: "
        f"epochs to reach test error {run.target_error}",
        "| method | epochs to target | final test error | seconds |",
        "|---|---|---|---|",
    ]
    for method, result in results.items():
        reached = result["epochs_to_target"]
        reached = f"> {len(result['test_errors'])}" if reached is None else str(reached)
        lines.append(
            f"| {method} | {reached} | {result['final_test_error']:.4f} | "
            f"{result['seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_curves(results, path):
    methods = list(results)
    longest = max(len(results[m]["test_errors"]) for m in methods)
    with open(path, "w") as f:
        f.write("epoch," + ",".join(methods) + "\n")
        for epoch in range(longest):
            row = [
                f"{results[m]['test_errors'][epoch]:.6g}"
                if epoch < len(results[m]["test_errors"])
                else ""
                for m in methods
            ]
            f.write(f"{epoch + 1}," + ",".join(row) + "\n")


def plot_curves(results, run, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    colors = {"diffusion": "tab:red", "sgd": "tab:blue"}
    figure, axes = pyplot.subplots(figsize=(6, 4))
    for method, result in results.items():
        errors = result["test_errors"]
        axes.plot(range(1, len(errors) + 1), errors, label=method, color=colors.get(method))
    axes.axhline(
        run.target_error, color="gray", linestyle="--", label=f"target {run.target_error}"
    )
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("test error (MSE, sigma = 0)")
    axes.set_title(f"Adding task, batch size {run.batch_size}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags, in one place; ``configs_from_flags`` validates them (never mutated).

    Called only when this file runs as a script, so importing ``scripts.train`` (e.g. from
    ``reproduce_mobahi_figure6.py``, which has flags of its own) defines no flags.
    """
    flags.DEFINE_enum(
        "task", "adding", TASKS, "adding (sec. 7) or long_adding (one marker per half)."
    )
    flags.DEFINE_integer("length", 10, "Sequence length (10 in sec. 7; >= 200 for long_adding).")
    flags.DEFINE_list("methods", list(METHODS), "Methods to train: diffusion and/or sgd.")
    flags.DEFINE_enum(
        "optimizer", "sgd", OPTIMIZERS, "Diffusion's optimizer: sgd or annealed (sec. 5.2)."
    )
    flags.DEFINE_float(
        "learning_rate", 0.1, "Diffusion's learning rate (eta for --optimizer=annealed)."
    )
    flags.DEFINE_float("sgd_learning_rate", 0.1, "The SGD baseline's learning rate.")
    flags.DEFINE_enum("schedule", "linear", SCHEDULES, "Sigma schedule of diffusion.")
    flags.DEFINE_float("sigma0", 1.0, "Initial sigma.")
    flags.DEFINE_integer("sigma_epochs", 30, "linear: epochs to reach 0; staged: epochs per stage.")
    flags.DEFINE_float("sigma_rate", 0.9, "geometric: factor per epoch.")
    flags.DEFINE_float("sigma_gamma", 1.0, "polynomial: exponent.")
    flags.DEFINE_float("sigma_cutoff", 0.0, "geometric/polynomial: sigma is 0 below this value.")
    flags.DEFINE_list(
        "sigma_stages", [], "staged: sigma_0 > ... > 0 (default sigma0 * (1, 1/2, 1/4, 0))."
    )
    flags.DEFINE_float("penalty", 1e-4, "lambda of sec. 4.1 (diffusion only).")
    flags.DEFINE_float("sigma_floor", 0.01, "annealed: the step uses max(sigma, sigma_floor).")
    flags.DEFINE_integer("epochs", 150, "Training epochs per method.")
    flags.DEFINE_integer("batch_size", 50, "Minibatch size (10 and 50 in Figure 6).")
    flags.DEFINE_integer("seed", 0, "Seed of the data, initial weights and shuffling.")
    flags.DEFINE_integer("units", 10, "Hidden units.")
    flags.DEFINE_float("target_error", 0.02, "Test error whose first epoch is reported.")
    flags.DEFINE_bool("stop_at_target", False, "Stop a method once it reaches --target_error.")
    flags.DEFINE_integer("verbose", 1, "Keras fit verbosity (1: progress bar).")
    flags.DEFINE_string("output_dir", "/tmp/keras_diffusion_adding", "Where results are written.")


def configs_from_flags():
    """The validated ``(RunConfig, [MethodSpec, ...])`` described by the flags."""
    run = RunConfig(
        task=FLAGS.task,
        length=FLAGS.length,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        seed=FLAGS.seed,
        units=FLAGS.units,
        target_error=FLAGS.target_error,
        stop_at_target=FLAGS.stop_at_target,
        verbose=FLAGS.verbose,
    )
    if not FLAGS.methods:
        raise ValueError(f"--methods must name at least one of {METHODS}.")
    specs = []
    for method in FLAGS.methods:
        validation.one_of("--methods entry", method, METHODS)
        specs.append(
            MethodSpec(
                method=method,
                learning_rate=FLAGS.sgd_learning_rate if method == "sgd" else FLAGS.learning_rate,
                optimizer=FLAGS.optimizer if method == "diffusion" else "sgd",
                schedule=FLAGS.schedule,
                sigma0=FLAGS.sigma0,
                sigma_epochs=FLAGS.sigma_epochs,
                sigma_rate=FLAGS.sigma_rate,
                sigma_gamma=FLAGS.sigma_gamma,
                sigma_cutoff=FLAGS.sigma_cutoff,
                sigma_stages=tuple(float(s) for s in FLAGS.sigma_stages),
                penalty=FLAGS.penalty,
                sigma_floor=FLAGS.sigma_floor,
            )
        )
    return run, specs


def main(argv):
    del argv
    run, specs = configs_from_flags()
    train_and_evaluate(run, specs, FLAGS.output_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
