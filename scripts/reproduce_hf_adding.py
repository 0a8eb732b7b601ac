"""The adding task of Mobahi (2016, sec. 7): Hessian-free, diffusion and SGD side by side.

Task and network are the main job's (``scripts/train.py`` defaults): a 10-unit erf RNN on the
adding problem (T = 10, 1000 training and 100 test sequences of ``adding_problem/mobahi``),
batches of ``--batch_size``, test error the mean squared error of the final output with the
undiffused network. Three methods, each a ``train.MethodSpec``:

* ``sgd``: plain SGD (sigma = 0, no penalty);
* ``diffusion``: SGD on the diffused cost while sigma falls linearly to 0 (sec. 4.3, Alg. 1);
* ``hf``: ``HessianFree`` (Martens 2010; the ``hessian_free`` entry of the optimizer registry:
  Gauss-Newton CG with Martens' stopping rule, warm start, backtracking, preconditioner,
  Levenberg-Marquardt damping from 1.0, Armijo line search) on the plain network.

Every method gets the same random search: ``--search_trials`` trials, each trained on 80% of
the training sequences for the search seed and scored on the held-out 20% by the epochs to
reach ``--target_error`` (a miss counts the cap + 1; ties by the final validation error).
Trial ``i`` draws the learning rate log-uniformly from [0.01, 0.3] (the same value for SGD
and diffusion); diffusion also sigma_0 from [0.1, 3], lambda from [1e-5, 1e-2] and the
length of its sigma schedule from {0.1, 0.2, 0.4} x the epoch cap; HF draws its step scale
(``learning_rate``) log-uniformly from [0.1, 1] and its CG cap from {10, 25, 50}.

The best trial of each method then trains ``--seeds`` seeds on all training sequences until
it reaches the target on the test set (at most ``--epochs`` epochs; HF ``--hf_epochs``).
Wall-clock: each method's seconds per training epoch are measured in this process,
interleaved (``--calibration_rounds`` rounds of one epoch of each, after a compiling epoch;
median), and the wall-clock to the target is the epochs to the target times that; the
seconds each run took (compilation and test-error checks included) are recorded beside.

Writes ``--output_dir``/``results.json``, ``table.md`` and ``plot.png`` (test error against
epochs and against wall-clock, one line per seed).

Usage:
  python scripts/reproduce_hf_adding.py --quick                  # CI smoke run
  python scripts/reproduce_hf_adding.py --flagfile=scripts/configs/hf_adding.cfg
"""

import dataclasses
import os
import sys
import time

from absl import app, flags

import keras
import numpy as np
import tensorflow as tf

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_diffusion import validation  # noqa: E402
from keras_diffusion.datasets import pipelines  # noqa: E402
from scripts import reporting, train  # noqa: E402

FLAGS = flags.FLAGS
METHODS = ("sgd", "diffusion", "hf")
SCHEDULE_FRACTIONS = (0.1, 0.2, 0.4)
CG_CAPS = (10, 25, 50)
QUICK = dict(seeds=1, epochs=2, hf_epochs=1, search_trials=1, search_epochs=1,
             hf_search_epochs=1, calibration_rounds=1, target_error=0.3)


def define_flags():
    """The flags, defined only when this file runs as a script."""
    flags.DEFINE_bool("quick", False, "CI smoke run: one trial, one seed, an epoch or two.")
    flags.DEFINE_integer("seeds", 5, "Final runs (seeds 0..seeds-1) per method.")
    flags.DEFINE_integer("epochs", 300, "Epoch cap of SGD's and diffusion's final runs.")
    flags.DEFINE_integer("hf_epochs", 30, "Epoch cap of HF's final runs.")
    flags.DEFINE_integer("search_trials", 6, "Random-search trials per method.")
    flags.DEFINE_integer("search_epochs", 150, "Epoch cap of SGD/diffusion search trials.")
    flags.DEFINE_integer("hf_search_epochs", 15, "Epoch cap of HF search trials.")
    flags.DEFINE_integer("search_seed", 1000, "Seed of the search data, weights and draws.")
    flags.DEFINE_integer("batch_size", 50, "Minibatch size (Figure 6: 10 and 50).")
    flags.DEFINE_float("target_error", 0.02, "The test error of sec. 7.")
    flags.DEFINE_integer("calibration_rounds", 3, "Interleaved timing rounds (one epoch each).")
    flags.DEFINE_string("output_dir", "/tmp/hf_adding", "Where results are written.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory of the adding_problem data.")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated flags (see ``define_flags``)."""

    seeds: int
    epochs: int
    hf_epochs: int
    search_trials: int
    search_epochs: int
    hf_search_epochs: int
    search_seed: int
    batch_size: int
    target_error: float
    calibration_rounds: int
    data_dir: str = None

    def __post_init__(self):
        for name in ("seeds", "epochs", "hf_epochs", "search_trials", "search_epochs",
                     "hf_search_epochs", "batch_size", "calibration_rounds"):
            validation.positive_int(name, getattr(self, name))
        validation.integer("search_seed", self.search_seed)
        validation.positive("target_error", self.target_error)

    def cap(self, method, search=False):
        if method == "hf":
            return self.hf_search_epochs if search else self.hf_epochs
        return self.search_epochs if search else self.epochs

    def run(self, method, seed, search=False):
        """The ``train.RunConfig`` of one run (search runs train on 80%, score on 20%)."""
        return train.RunConfig(
            epochs=self.cap(method, search), batch_size=self.batch_size, seed=seed,
            target_error=self.target_error, stop_at_target=True,
            validation_fraction=0.2 if search else 0.0, data_dir=self.data_dir, verbose=0,
        )


def search_space(settings):
    """``{method: [MethodSpec, ...]}``: the random trials of every method."""
    rng = np.random.default_rng(settings.search_seed)
    trials = {m: [] for m in METHODS}
    for _ in range(settings.search_trials):
        rate = float(10 ** rng.uniform(-2, np.log10(0.3)))
        duration = int(rng.choice(SCHEDULE_FRACTIONS) * settings.search_epochs)
        trials["sgd"].append(train.MethodSpec("sgd", learning_rate=rate))
        trials["diffusion"].append(train.MethodSpec(
            "diffusion", learning_rate=rate, schedule="linear",
            sigma0=float(10 ** rng.uniform(-1, np.log10(3))),
            penalty=float(10 ** rng.uniform(-5, -2)), sigma_epochs=max(1, duration)))
        trials["hf"].append(train.MethodSpec(
            "sgd", optimizer="hessian_free", learning_rate=float(10 ** rng.uniform(-1, 0)),
            cg_max_iterations=int(rng.choice(CG_CAPS))))
    return trials


def score(errors, target, cap):
    """``(epochs to target, a miss counting cap + 1; final error, inf if not finite)``."""
    reached = train.epochs_to_reach(errors, target)
    final = float(errors[-1]) if len(errors) and np.isfinite(errors[-1]) else float("inf")
    return (cap + 1 if reached is None else reached, final)


class EpochTimer(keras.callbacks.Callback):
    """Seconds of each fit epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def calibrate(settings, specs):
    """Seconds per training epoch of each method, interleaved: ``{method: seconds}``.

    Each method's model (``train.build_model``, as its runs compile it) trains one epoch to
    compile; then every round trains two epochs of each method in turn, timing the second
    (the first of a ``fit`` call also starts the data iterator); medians.
    """
    run = settings.run("sgd", seed=0)
    task = run.make_task()
    steps = pipelines.steps_per_epoch(task.num_train, run.batch_size)
    models, data, seconds = {}, {}, {m: [] for m in specs}
    for method, spec in specs.items():
        keras.utils.set_random_seed(0)
        models[method] = train.build_model(run, spec, task, steps)
        data[method] = pipelines.batches(task.train, run.batch_size, training=True, seed=0)
        models[method].fit(data[method], epochs=1, steps_per_epoch=steps, verbose=0)
    for _ in range(settings.calibration_rounds):
        for method in specs:
            timer = EpochTimer()
            models[method].fit(data[method], epochs=2, steps_per_epoch=steps, verbose=0,
                               callbacks=[timer])
            seconds[method].append(timer.seconds[1])
    return {m: float(np.median(v)) for m, v in seconds.items()}


def reproduce(settings):
    """Search, calibration and final runs; returns the results dictionary."""
    start = time.time()
    results = {"settings": dataclasses.asdict(settings), "search": {}, "runs": {}}
    best = {}
    for method, specs in search_space(settings).items():
        cap = settings.cap(method, search=True)
        scored = []
        for spec in specs if len(specs) > 1 else ():  # one trial needs no scoring
            errors = train.train_method(settings.run(method, settings.search_seed, True), spec,
                                        split="validation")
            scored.append((score(errors, settings.target_error, cap), spec))
            print(f"  search {method}: {score(errors, settings.target_error, cap)} {spec}",
                  flush=True)
        best[method] = min(scored, key=lambda item: item[0])[1] if scored else specs[0]
        results["search"][method] = [
            {"score": list(s), "hyperparameters": dataclasses.asdict(spec)} for s, spec in scored
        ]
    per_epoch = calibrate(settings, best)
    results["seconds_per_epoch"] = per_epoch
    print(f"seconds per epoch (interleaved): {per_epoch}", flush=True)
    for method, spec in best.items():
        runs = []
        for seed in range(settings.seeds):
            began = time.perf_counter()
            errors = train.train_method(settings.run(method, seed), spec)
            reached = train.epochs_to_reach(errors, settings.target_error)
            runs.append({
                "seed": seed, "test_errors": errors.tolist(), "epochs_to_target": reached,
                "seconds_to_target": None if reached is None else reached * per_epoch[method],
                "run_seconds": time.perf_counter() - began,
            })
            print(f"  {method} seed {seed}: epochs to target {reached}, final error "
                  f"{errors[-1]:.4f}", flush=True)
        results["runs"][method] = {"hyperparameters": dataclasses.asdict(spec), "runs": runs}
    results["seconds"] = time.time() - start
    return results


def _median(values):
    return float(np.median(values)) if values else None


def table_rows(results):
    """One row per method: epochs and seconds to the target (median, range), failures."""
    rows = []
    for method, entry in results["runs"].items():
        runs = entry["runs"]
        epochs = [r["epochs_to_target"] for r in runs if r["epochs_to_target"] is not None]
        seconds = [r["seconds_to_target"] for r in runs if r["seconds_to_target"] is not None]
        hp = entry["hyperparameters"]
        knobs = f"lr {hp['learning_rate']:.3g}"
        if method == "diffusion":
            knobs += (f", sigma0 {hp['sigma0']:.3g}, lambda {hp['penalty']:.2g}, sigma -> 0 "
                      f"over {hp['sigma_epochs']} epochs")
        if method == "hf":
            knobs += f", CG cap {hp['cg_max_iterations']}"
        cap = results["settings"]["hf_epochs" if method == "hf" else "epochs"]
        rows.append([
            method,
            f"{_median(epochs):.0f} ({min(epochs)}-{max(epochs)})" if epochs else "never",
            f"{_median(seconds):.1f} ({min(seconds):.1f}-{max(seconds):.1f})" if seconds
            else "never",
            f"{len(runs) - len(epochs)}/{len(runs)} (cap {cap})",
            f"{results['seconds_per_epoch'][method]:.3f}",
            knobs,
        ])
    return rows


HEADER = ["method", "epochs to target: median (range)", "seconds to target: median (range)",
          "failures", "s / epoch", "hyperparameters (searched)"]


def plot(results, path):
    """Test error against epochs (left) and calibrated wall-clock (right)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4))
    colors = {"sgd": "tab:blue", "diffusion": "tab:green", "hf": "tab:red"}
    for method, entry in results["runs"].items():
        per_epoch = results["seconds_per_epoch"][method]
        for i, run in enumerate(entry["runs"]):
            errors = run["test_errors"]
            epochs = np.arange(1, len(errors) + 1)
            label = method if i == 0 else None
            for ax, x in zip(axes, (epochs, epochs * per_epoch)):
                ax.plot(x, errors, color=colors[method], alpha=0.6, label=label,
                        marker="o" if len(errors) == 1 else None)
    target = results["settings"]["target_error"]
    for ax, xlabel in zip(axes, ("epoch", "wall-clock (s, calibrated)")):
        ax.axhline(target, color="gray", linestyle="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(1e-3, 1.0)  # early divergent epochs (up to 1e6) are cut off
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test error (MSE)")
        ax.legend()
    axes[0].set_title("Adding task (T = 10): HF, diffusion, SGD")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def settings_from_flags():
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(Settings)}
    if FLAGS.quick:
        values.update(QUICK)
    return Settings(**values)


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    try:
        settings = settings_from_flags()
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    results = reproduce(settings)
    rows = table_rows(results)
    reporting.print_table(HEADER, rows)
    reporting.write_report(FLAGS.output_dir, results, HEADER, rows)
    plot(results, os.path.join(FLAGS.output_dir, "plot.png"))
    print(f"Done in {results['seconds']:.0f} s; wrote {FLAGS.output_dir}.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
