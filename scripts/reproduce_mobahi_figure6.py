"""Mobahi (2016), Figure 6: epochs to reach test error 0.02 on the adding task, diffusion vs SGD.

Sec. 7 trains a 10-unit erf RNN on the adding task (T = 10, 1000 training and 100 test
sequences) with minibatches of 10 (Figure 6, left) and 50 (right), hyperparameters "carefully
searched" for both methods, and reports that at batch size 50 SGD needs about 90 epochs to
reach a test error of about 0.02 while diffusion needs about 20.

This script, for every batch size:

The data are the TFDS data set ``adding_problem`` (``keras_diffusion.datasets``), one
configuration per seed, generated into ``--data_dir`` before training.

1. Searches the hyperparameters of both methods with the SAME procedure: ``--search_trials``
   random trials per method, each trained on 80% of the training sequences for
   ``--search_seeds`` seeds (``--search_seed``, ``--search_seed + 1``, ...: none is a final
   seed) and scored on the held-out 20% (validation split) by the mean epochs needed to reach
   ``--target_error`` (a seed that never does counts ``search_epochs + 1``; ties go to the
   lower mean final validation error, infinite if a seed diverged). Trial ``i``
   draws the learning rate log-uniformly from [0.01, 0.3] for both methods (the same value for
   both: paired draws); diffusion also draws sigma_0 log-uniformly from [0.1, 3], lambda
   log-uniformly from [1e-5, 0.1] (the penalty sums over T steps and H units, so lambda
   >= 0.01 outweighs the data term and stalls training) and the length of its linear
   sigma-to-0 schedule from {0.05, 0.1, 0.2, 0.4} x ``--search_epochs`` epochs.
2. Trains each method with its best hyperparameters on all training sequences for
   ``--seeds`` seeds (data, initial weights and shuffling change with the seed) for at most
   ``--epochs`` epochs, stopping at the target, and reports the epochs to reach the target on
   the test set (mean +- sd over the seeds that reach it, failures counted) and the ratio
   SGD / diffusion of the means.

Results go to ``--output_dir`` (``results.json``, ``table.md``) and stdout. ``--workers``
trains that many runs in parallel processes.

Usage:
  python scripts/reproduce_mobahi_figure6.py --quick                # CI smoke run, < 60 s
  python scripts/reproduce_mobahi_figure6.py --output_dir=/tmp/fig6 # full run
"""

import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time

from absl import app, flags

import numpy as np
import tensorflow as tf

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_diffusion import validation  # noqa: E402
from scripts import train  # noqa: E402

SCHEDULE_FRACTIONS = (0.05, 0.1, 0.2, 0.4)

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "CI smoke run (< 60 s): tiny search, 2 seeds, few epochs.")
flags.DEFINE_list("batch_sizes", ["10", "50"], "Minibatch sizes (Figure 6: 10 and 50).")
flags.DEFINE_integer("seeds", 3, "Seeds of the final runs (>= 3 for the reproduction).")
flags.DEFINE_integer("epochs", 200, "Epoch cap of the final runs.")
flags.DEFINE_integer("search_trials", 8, "Random-search trials per method and batch size.")
flags.DEFINE_integer("search_epochs", 100, "Epoch cap of a search trial.")
flags.DEFINE_integer("search_seed", 1000, "Seed of the search data, weights and draws.")
flags.DEFINE_integer("search_seeds", 2, "Seeds per trial (search_seed, search_seed + 1, ...).")
flags.DEFINE_float("validation_fraction", 0.2, "Share of training sequences used to validate.")
flags.DEFINE_float("target_error", 0.02, "The test error of sec. 7.")
flags.DEFINE_integer("workers", 1, "Parallel training processes.")
flags.DEFINE_string("output_dir", "/tmp/keras_diffusion_figure6", "Where results are written.")
flags.DEFINE_string("data_dir", None, "TFDS data directory of the adding_problem data sets.")

QUICK = dict(
    batch_sizes=[50], seeds=2, epochs=3, search_trials=1, search_seeds=1, search_epochs=2,
    target_error=0.15,
)


@dataclasses.dataclass(frozen=True)
class Settings:
    batch_sizes: tuple
    seeds: int
    epochs: int
    search_trials: int
    search_epochs: int
    search_seed: int
    validation_fraction: float
    target_error: float
    workers: int
    search_seeds: int = 1
    data_dir: str = None

    def __post_init__(self):
        if not self.batch_sizes:
            raise ValueError(
                f"batch_sizes must name at least one batch size, got {self.batch_sizes!r}."
            )
        for size in self.batch_sizes:
            validation.positive_int("batch_sizes entry", size)
        counts = ("seeds", "epochs", "search_trials", "search_epochs", "workers", "search_seeds")
        for name in counts:
            validation.positive_int(name, getattr(self, name))
        if validation.fraction("validation_fraction", self.validation_fraction) == 1.0:
            raise ValueError(
                f"`validation_fraction` must be in (0, 1), got {self.validation_fraction!r}: "
                "1 leaves no sequence to train on."
            )


def search_space(settings, batch_size):
    """The paired random trials: ``[(sgd_spec, diffusion_spec), ...]``."""
    rng = np.random.default_rng([settings.search_seed, batch_size])
    trials = []
    for _ in range(settings.search_trials):
        learning_rate = float(10 ** rng.uniform(-2, np.log10(0.3)))
        sigma0 = float(10 ** rng.uniform(-1, np.log10(3)))
        penalty = float(10 ** rng.uniform(-5, -1))
        duration = max(1, int(round(rng.choice(SCHEDULE_FRACTIONS) * settings.search_epochs)))
        trials.append(
            (
                train.MethodSpec("sgd", learning_rate=learning_rate),
                train.MethodSpec(
                    "diffusion",
                    learning_rate=learning_rate,
                    schedule="linear",
                    sigma0=sigma0,
                    sigma_epochs=duration,
                    penalty=penalty,
                ),
            )
        )
    return trials


def _run(job):
    """Worker: trains one ``(RunConfig, MethodSpec, split)``; returns its error curve."""
    run, spec, split = job
    return train.train_method(run, spec, split=split).tolist()


def _quiet():
    # Every run builds new tf.functions, which TensorFlow reports as retracing.
    tf.get_logger().setLevel("ERROR")


def _init_worker():
    _quiet()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def run_all(jobs, workers):
    # Generate each run's adding_problem data set once, here, before workers read it.
    for run in {run for run, _, _ in jobs}:
        train.load_task(run.task_config())
    if workers == 1:
        return [_run(job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker
    ) as pool:
        return list(pool.map(_run, jobs))


def search_score(curves, target, cap):
    """Score of one trial from its validation curves (one per search seed); lower is better.

    ``(mean epochs to target, counting a miss as cap + 1; mean final error, inf if any seed
    diverged)``.
    """
    epochs, finals = [], []
    for errors in curves:
        reached = train.epochs_to_reach(errors, target)
        epochs.append(cap + 1 if reached is None else reached)
        finals.append(errors[-1] if math.isfinite(errors[-1]) else math.inf)
    return (float(np.mean(epochs)), float(np.mean(finals)))


def reproduce(settings):
    """Runs the search and the final runs; returns the results dictionary."""
    start = time.time()
    search_jobs, final_specs = [], {}
    trials = {b: search_space(settings, b) for b in settings.batch_sizes}
    for batch_size in settings.batch_sizes:
        runs = [
            train.RunConfig(
                epochs=settings.search_epochs,
                batch_size=batch_size,
                seed=settings.search_seed + i,
                target_error=settings.target_error,
                stop_at_target=True,
                validation_fraction=settings.validation_fraction,
                data_dir=settings.data_dir,
                verbose=0,
            )
            for i in range(settings.search_seeds)
        ]
        for pair in trials[batch_size]:
            search_jobs += [(run, spec, "validation") for spec in pair for run in runs]
    curves = iter(run_all(search_jobs, settings.workers))
    search = {}
    for batch_size in settings.batch_sizes:
        scored = {"sgd": [], "diffusion": []}
        for pair in trials[batch_size]:
            for spec in pair:
                seed_curves = [next(curves) for _ in range(settings.search_seeds)]
                score = search_score(seed_curves, settings.target_error, settings.search_epochs)
                scored[spec.method].append((score, spec))
        search[batch_size] = {
            method: [
                {"score": list(score), "hyperparameters": dataclasses.asdict(spec)}
                for score, spec in entries
            ]
            for method, entries in scored.items()
        }
        for method, entries in scored.items():
            final_specs[batch_size, method] = min(entries, key=lambda e: e[0])[1]
    final_jobs = []
    for (batch_size, method), spec in final_specs.items():
        for seed in range(settings.seeds):
            run = train.RunConfig(
                epochs=settings.epochs,
                batch_size=batch_size,
                seed=seed,
                target_error=settings.target_error,
                stop_at_target=True,
                data_dir=settings.data_dir,
                verbose=0,
            )
            final_jobs.append((batch_size, method, run, spec))
    final_curves = run_all(
        [(run, spec, "test") for _, _, run, spec in final_jobs], settings.workers
    )
    table = {}
    for (batch_size, method, _, spec), errors in zip(final_jobs, final_curves):
        entry = table.setdefault(
            f"{batch_size}/{method}",
            {"batch_size": batch_size, "method": method, "epochs": [], "final_errors": [],
             "hyperparameters": dataclasses.asdict(spec)},
        )
        entry["epochs"].append(train.epochs_to_reach(errors, settings.target_error))
        entry["final_errors"].append(errors[-1])
    for entry in table.values():
        reached = [e for e in entry["epochs"] if e is not None]
        entry["failures"] = len(entry["epochs"]) - len(reached)
        entry["mean"] = float(np.mean(reached)) if reached else None
        entry["sd"] = float(np.std(reached, ddof=1)) if len(reached) > 1 else None
    return {
        "settings": dataclasses.asdict(settings),
        "search": {str(b): s for b, s in search.items()},
        "table": table,
        "seconds": time.time() - start,
    }


def markdown_table(results):
    settings = results["settings"]
    lines = [
        f"Epochs to reach test error {settings['target_error']} on the adding task (T = 10), "
        f"{settings['seeds']} seeds, cap {settings['epochs']} epochs; hyperparameters from "
        f"{settings['search_trials']} random-search trials per method.",
        "",
        "| batch size | method | epochs to target (mean +- sd) | failures | learning rate "
        "| sigma_0 | lambda | sigma -> 0 over (epochs) | SGD / diffusion |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for batch_size in settings["batch_sizes"]:
        entries = {m: results["table"][f"{batch_size}/{m}"] for m in ("sgd", "diffusion")}
        for method, entry in entries.items():
            hp = entry["hyperparameters"]
            if method == "sgd":
                diffusion_columns = "- | - | - | "
            else:
                diffusion_columns = (
                    f"{hp['sigma0']:.3g} | {hp['penalty']:.3g} | {hp['sigma_epochs']} | "
                    f"{ratio(entries)}"
                )
            lines.append(
                f"| {batch_size} | {method} | {epochs_cell(entry)} | "
                f"{entry['failures']}/{len(entry['epochs'])} | {hp['learning_rate']:.3g} | "
                f"{diffusion_columns} |"
            )
    lines += ["", f"Total time: {results['seconds']:.0f} s"]
    return "\n".join(lines)


def epochs_cell(entry):
    if entry["mean"] is None:
        return "never"
    if entry["sd"] is None:
        return f"{entry['mean']:.1f}"
    return f"{entry['mean']:.1f} +- {entry['sd']:.1f}"


def ratio(entries):
    """SGD / diffusion mean epochs; "n/a" when either never reaches the target."""
    sgd, diffusion = entries["sgd"]["mean"], entries["diffusion"]["mean"]
    return "n/a" if sgd is None or diffusion is None else f"{sgd / diffusion:.2f}"


def settings_from_flags():
    values = dict(
        batch_sizes=[int(b) for b in FLAGS.batch_sizes],
        seeds=FLAGS.seeds,
        epochs=FLAGS.epochs,
        search_trials=FLAGS.search_trials,
        search_epochs=FLAGS.search_epochs,
        search_seeds=FLAGS.search_seeds,
        target_error=FLAGS.target_error,
    )
    if FLAGS.quick:
        values.update(QUICK)
    return Settings(
        batch_sizes=tuple(values["batch_sizes"]),
        seeds=values["seeds"],
        epochs=values["epochs"],
        search_trials=values["search_trials"],
        search_epochs=values["search_epochs"],
        search_seed=FLAGS.search_seed,
        validation_fraction=FLAGS.validation_fraction,
        target_error=values["target_error"],
        workers=FLAGS.workers,
        search_seeds=values["search_seeds"],
        data_dir=FLAGS.data_dir,
    )


def main(argv):
    del argv
    _quiet()
    settings = settings_from_flags()
    results = reproduce(settings)
    table = markdown_table(results)
    print(table)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(FLAGS.output_dir, "table.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    app.run(main)
