"""Mobahi (2016), Figure 6: epochs to reach test error 0.02 on the adding task, diffusion vs SGD.

Sec. 7 trains a 10-unit erf RNN (eqs. 3-4: erf hidden AND output units) on the adding task
(T = 10, 1000 training and 100 test sequences) with minibatches of 10 (Figure 6, left) and 50
(right), hyperparameters "carefully searched" for both methods, and reports that at batch size
50 SGD needs about 90 epochs to reach a test error of about 0.02 while diffusion needs about 20.

The network (``models.builders.build_adding_rnn``): ``--output=erf`` (default) is the paper's
erf output unit, trained on the halved target (the mean of the two marked numbers, in [0, 1];
an erf output cannot reach the sum's 2); ``--output=linear`` is the linear output on the sum
(the network of ``scripts/train.py``). The threshold ``--target_error`` applies to the
network's own target: the mean for ``erf``, the sum for ``linear``; both units are reported
(an error ``e`` on the mean is ``4 e`` on the sum). ``--input_initializer`` draws the input
weights ``U`` (``lecun_normal``, default, or ``glorot_uniform``);
``--compare_initializer`` repeats the final runs with another one, same hyperparameters.

The data are the TFDS data set ``adding_problem`` (``keras_diffusion.datasets``), one
configuration per seed, generated into ``--data_dir`` before training.

For every batch size:

1. Search, the SAME procedure for both methods: ``--search_trials`` random trials per method,
   each trained on 80% of the training sequences for ``--search_seeds`` seeds
   (``--search_seed``, ``--search_seed + 1``, ...: none is a final seed) and scored on the
   held-out 20% by the MEDIAN over the seeds of the epochs to reach ``--target_error`` (a seed
   that never does counts ``search_epochs + 1``), then by the number of failed seeds, then by
   the median final validation error (infinite for a diverged seed). Trial ``i`` draws the
   learning rate log-uniformly from [0.01, 1] for both methods (the same value for both:
   paired draws). Diffusion also draws its step rule, plain SGD steps or the annealed step of
   sec. 5.2 (``keras_diffusion.optimizers.AnnealedStep``: a normalized gradient step of length
   ``learning_rate * max(sigma, sigma_floor)``, ``sigma_floor`` log-uniform on [0.003, 0.3]),
   sigma_0 log-uniformly from [0.1, 10], lambda log-uniformly from [1e-6, 0.1] and the length
   of its linear sigma-to-0 schedule from {0.05, 0.1, 0.2, 0.4} x ``--search_epochs`` epochs.
2. Final runs: each method with its best hyperparameters on all training sequences for
   ``--seeds`` seeds (data, initial weights and shuffling change with the seed), at most
   ``--epochs`` epochs, stopping at the target on the test set. Reported per method: the
   median over all seeds of the epochs to the target (a failed seed counting as never), the
   failed seeds, the median wall-clock to the target and per epoch, and the ratio SGD /
   diffusion of the medians.

Wall-clock: every job compiles one XLA function that trains a whole epoch (steps per
execution = steps per epoch) and shares it between its seeds; a callback times each epoch's
training (the test error that follows is not counted, nor the compilation). "Seconds to
target" is a run's epochs to the target times its steady epoch time (``summarize``). The jobs
of both methods alternate in the queue of the ``--workers`` processes, so both meet the same
load of the shared machine.

Results go to ``--output_dir``: ``results.json``, ``table.md`` (also on stdout) and
``figure6.png`` (median epochs to reach each test error, as the paper's Figure 6, with the
paper's batch-50 points).

Usage:
  python scripts/reproduce_mobahi_figure6.py --quick                # CI smoke run, < 60 s
  python scripts/reproduce_mobahi_figure6.py --flagfile=scripts/configs/figure6.cfg
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

import keras
import numpy as np
import tensorflow as tf

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_diffusion import validation  # noqa: E402
from keras_diffusion.datasets import pipelines  # noqa: E402
from models import builders, optimizers  # noqa: E402
from scripts import train  # noqa: E402

SCHEDULE_FRACTIONS = (0.05, 0.1, 0.2, 0.4)
STEP_RULES = ("sgd", "annealed")
OUTPUTS = ("erf", "linear")
LEARNING_RATES = (0.01, 1.0)
SIGMA0S = (0.1, 10.0)
PENALTIES = (1e-6, 0.1)
SIGMA_FLOORS = (0.003, 0.3)
PAPER = {"50/sgd": 90, "50/diffusion": 20}  # sec. 7, Figure 6 (right), epochs to ~0.02

FLAGS = flags.FLAGS

QUICK = dict(
    batch_sizes=[50], seeds=2, epochs=3, search_trials=1, search_seeds=2, search_epochs=2,
    target_error=0.05, compare_initializer="",
)


def define_flags():
    """The script's flags (defined by ``main`` only: importing the module defines none)."""
    flags.DEFINE_bool("quick", False, "CI smoke run (< 60 s): tiny search, 2 seeds, few epochs.")
    flags.DEFINE_list("batch_sizes", ["10", "50"], "Minibatch sizes (Figure 6: 10 and 50).")
    flags.DEFINE_integer("seeds", 10, "Seeds of the final runs.")
    flags.DEFINE_integer("epochs", 200, "Epoch cap of the final runs.")
    flags.DEFINE_integer("search_trials", 8, "Random-search trials per method and batch size.")
    flags.DEFINE_integer("search_epochs", 100, "Epoch cap of a search trial.")
    flags.DEFINE_integer("search_seed", 1000, "Seed of the search data, weights and draws.")
    flags.DEFINE_integer("search_seeds", 5, "Seeds per trial (search_seed, search_seed + 1, ...).")
    flags.DEFINE_float("validation_fraction", 0.2, "Share of training sequences used to validate.")
    flags.DEFINE_float("target_error", 0.02, "The test error of sec. 7 (the network's unit).")
    flags.DEFINE_enum("output", "erf", OUTPUTS, "Output unit: erf on the halved target (the "
                      "paper's eqs. 3-4) or linear on the sum.")
    flags.DEFINE_enum("input_initializer", "lecun_normal", builders.INPUT_INITIALIZERS,
                      "Initialization of the input weights U.")
    flags.DEFINE_string("compare_initializer", "glorot_uniform", "Repeat the final runs with "
                        "this U initialization (same hyperparameters); empty: none.")
    flags.DEFINE_integer("workers", 1, "Parallel training processes.")
    flags.DEFINE_string("output_dir", "/tmp/keras_diffusion_figure6", "Where results go.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory of the adding_problem data sets.")


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
    search_seeds: int = 5
    output: str = "erf"
    input_initializer: str = "lecun_normal"
    compare_initializer: str = ""
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
        validation.positive("target_error", self.target_error)
        validation.one_of("output", self.output, OUTPUTS)
        validation.one_of("input_initializer", self.input_initializer,
                          builders.INPUT_INITIALIZERS)
        if self.compare_initializer:
            validation.one_of("compare_initializer", self.compare_initializer,
                              builders.INPUT_INITIALIZERS)

    @property
    def target_scale(self):
        """The network's target per unit of the sum: 1/2 for the erf output (the mean)."""
        return 0.5 if self.output == "erf" else 1.0


@dataclasses.dataclass(frozen=True)
class Job:
    """Training runs of one spec, one per seed: what ``train_runs`` needs (picklable)."""

    runs: tuple
    spec: train.MethodSpec
    split: str
    output: str
    input_initializer: str


def _stratified(rng, bounds, count):
    """``count`` log-uniform draws from ``bounds``, one in each of ``count`` equal strata of
    the log range, in random order (a Latin hypercube: even coverage with few trials)."""
    low, high = np.log10(bounds)
    strata = (rng.permutation(count) + rng.uniform(size=count)) / count
    return [float(10 ** (low + (high - low) * u)) for u in strata]


def _balanced(rng, choices, count):
    """``count`` draws from ``choices``, each as often as possible, in random order."""
    return [choices[i] for i in rng.permutation(np.arange(count) % len(choices))]


def search_space(settings, batch_size):
    """The paired random trials: ``[(sgd_spec, diffusion_spec), ...]`` (module docstring)."""
    rng = np.random.default_rng([settings.search_seed, batch_size])
    count = settings.search_trials
    learning_rates = _stratified(rng, LEARNING_RATES, count)
    step_rules = _balanced(rng, STEP_RULES, count)
    sigma_floors = _stratified(rng, SIGMA_FLOORS, count)
    sigma0s = _stratified(rng, SIGMA0S, count)
    penalties = _stratified(rng, PENALTIES, count)
    fractions = _balanced(rng, SCHEDULE_FRACTIONS, count)
    trials = []
    for i in range(count):
        step_rule = str(step_rules[i])
        trials.append(
            (
                train.MethodSpec("sgd", learning_rate=learning_rates[i]),
                train.MethodSpec(
                    "diffusion",
                    learning_rate=learning_rates[i],
                    optimizer=step_rule,
                    sigma_floor=sigma_floors[i] if step_rule == "annealed" else 0.01,
                    schedule="linear",
                    sigma0=sigma0s[i],
                    sigma_epochs=max(1, int(round(fractions[i] * settings.search_epochs))),
                    penalty=penalties[i],
                ),
            )
        )
    return trials


class EpochTimer(keras.callbacks.Callback):
    """Seconds of training of every epoch (list it first: before the test-error callback)."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def build(run, spec, output, input_initializer, length):
    """The sec. 7 network of ``run.seed`` for ``spec`` (uncompiled)."""
    return builders.build_adding_rnn(
        spec.method, units=run.units, activation=run.activation, output_activation=output,
        sigma=spec.sigma0, penalty=spec.penalty, length=length, seed=run.seed,
        input_initializer=input_initializer,
    )


def train_runs(job):
    """Trains the runs of ``job``; returns one ``{"errors": [...], "seconds": [...]}`` each.

    ``errors``: per epoch, the error on ``job.split`` of the plain network (sigma = 0) in the
    network's unit (the halved target for the erf output); ``seconds``: each epoch's training
    time. The runs share one compiled model (XLA compilation costs more than a run here): each
    starts from the initial weights of its seed and the optimizer's initial state, so it
    trains exactly as a fresh model would. ``seconds`` excludes that compilation: the first
    epoch of the first run gets the median epoch time (the difference is
    ``compile_seconds`` of the first outcome) of all epochs of the job.
    """
    spec, outcomes, model, initial_state = job.spec, [], None, None
    target = builders.halved_target if job.output == "erf" else (lambda y: y)
    for run in job.runs:
        train.check_run(run, spec)
        keras.utils.set_random_seed(run.seed)
        task = run.make_task()
        fresh = build(run, spec, job.output, job.input_initializer, task.input_shape[0])
        steps = pipelines.steps_per_epoch(task.num_train, run.batch_size)
        if model is None:
            model = fresh
            optimizer = optimizers.make(spec.optimizer, spec.hyperparameters(), model)
            model.compile(optimizer=optimizer, loss=task.loss(), jit_compile=True,
                          steps_per_execution=steps)
            optimizer.build(model.trainable_variables)
            initial_state = [v.numpy() for v in optimizer.variables]
        else:
            model.set_weights(fresh.get_weights())
            for variable, value in zip(model.optimizer.variables, initial_state):
                variable.assign(value)
        data = pipelines.batches(
            task.train.map(lambda x, y: (x, target(y))), run.batch_size, training=True,
            seed=run.seed,
        )
        arrays = [(x, target(y)) for x, y in task.arrays[job.split]]
        timer = EpochTimer()
        curve = train.ErrorCurve(arrays, task.error, stop_at=run.target_error)
        callbacks = [c for c in (timer, spec.sigma_callback(), curve) if c is not None]
        model.fit(data, epochs=run.epochs, steps_per_epoch=steps, callbacks=callbacks,
                  verbose=0, shuffle=False)
        outcomes.append({"errors": curve.errors, "seconds": timer.seconds})
    first = outcomes[0]["seconds"]
    others = first[1:] + [t for o in outcomes[1:] for t in o["seconds"]]
    if others:
        typical = float(np.median(others))
        outcomes[0]["compile_seconds"] = first[0] - typical
        first[0] = typical
    return outcomes


def _quiet():
    # Every run builds new tf.functions, which TensorFlow reports as retracing.
    tf.get_logger().setLevel("ERROR")


def _init_worker():
    _quiet()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def run_all(jobs, workers):
    """``train_runs`` of every job, in order, on ``workers`` processes."""
    # Generate each run's adding_problem data set once, here, before workers read it.
    for config in {run.task_config() for job in jobs for run in job.runs}:
        train.load_task(config)
    if workers == 1:
        return [train_runs(job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker
    ) as pool:
        return list(pool.map(train_runs, jobs))


def search_score(curves, target, cap):
    """Score of one trial from its validation curves (one per search seed); lower is better.

    ``(median epochs to target, counting a miss as cap + 1; failed seeds; median final error,
    inf for a diverged seed)``.
    """
    epochs, finals = [], []
    for errors in curves:
        reached = train.epochs_to_reach(errors, target)
        epochs.append(cap + 1 if reached is None else reached)
        finals.append(errors[-1] if math.isfinite(errors[-1]) else math.inf)
    failures = sum(e > cap for e in epochs)
    return (float(np.median(epochs)), failures, float(np.median(finals)))


def _median_with_failures(values, seeds):
    """Median over ``seeds`` runs, the ``seeds - len(values)`` failed ones counting as never
    (infinite); ``None`` when that median is never (half the seeds or more failed)."""
    median = float(np.median(list(values) + [math.inf] * (seeds - len(values))))
    return None if math.isinf(median) else median


def summarize(outcomes, target):
    """Per-method summary of final runs: medians over ALL seeds, a failed one counting as
    never reaching ``target`` (``_median_with_failures``), and the number of failed seeds.

    Wall-clock: each run's steady epoch time (the median over its epochs after the first,
    which also fills the input pipeline's cache) times its epochs to the target
    (``seconds_to_target``); ``measured_seconds_to_target`` is the plain sum of its epoch
    times, first epoch included, noisier on the shared machine.
    """
    epochs = [train.epochs_to_reach(o["errors"], target) for o in outcomes]
    steady = [float(np.median(o["seconds"][1:] or o["seconds"])) for o in outcomes]
    reached = [i for i, e in enumerate(epochs) if e is not None]
    to_target = [epochs[i] * steady[i] for i in reached]
    return {
        "epochs": epochs,
        "failures": len(epochs) - len(reached),
        "median": _median_with_failures([epochs[i] for i in reached], len(epochs)),
        "seconds_to_target": to_target,
        "measured_seconds_to_target": [sum(outcomes[i]["seconds"][:epochs[i]]) for i in reached],
        "median_seconds": _median_with_failures(to_target, len(epochs)),
        "median_epoch_seconds": float(np.median(steady)),
        "compile_seconds": [o["compile_seconds"] for o in outcomes if "compile_seconds" in o],
        "final_errors": [o["errors"][-1] for o in outcomes],
    }


def _search_jobs(settings, batch_size, trials):
    """One job per trial and method: its ``search_seeds`` runs on the validation split."""
    runs = tuple(
        train.RunConfig(
            epochs=settings.search_epochs, batch_size=batch_size, seed=settings.search_seed + i,
            target_error=settings.target_error, validation_fraction=settings.validation_fraction,
            data_dir=settings.data_dir, verbose=0,
        )
        for i in range(settings.search_seeds)
    )
    return [
        Job(runs, spec, "validation", settings.output, settings.input_initializer)
        for pair in trials for spec in pair
    ]


FINAL_CHUNK = 5  # seeds per final job: SGD and diffusion jobs alternate in the queue


def _final_jobs(settings, best):
    """Final jobs as ``[(key, job)]``, key ``(initializer, batch size, method)``."""
    initializers = [settings.input_initializer]
    if settings.compare_initializer:
        initializers.append(settings.compare_initializer)
    jobs = []
    for initializer in initializers:
        for batch_size in settings.batch_sizes:
            runs = [
                train.RunConfig(
                    epochs=settings.epochs, batch_size=batch_size, seed=seed,
                    target_error=settings.target_error, data_dir=settings.data_dir, verbose=0,
                )
                for seed in range(settings.seeds)
            ]
            for start in range(0, len(runs), FINAL_CHUNK):
                for method in ("sgd", "diffusion"):
                    job = Job(tuple(runs[start:start + FINAL_CHUNK]), best[batch_size, method],
                              "test", settings.output, initializer)
                    jobs.append(((initializer, batch_size, method), job))
    return jobs


def reproduce(settings):
    """Runs the search and the final runs; returns the results dictionary."""
    start = time.time()
    trials = {b: search_space(settings, b) for b in settings.batch_sizes}
    search_jobs = [j for b in settings.batch_sizes for j in _search_jobs(settings, b, trials[b])]
    outcomes = iter(run_all(search_jobs, settings.workers))
    search, best = {}, {}
    for batch_size in settings.batch_sizes:
        scored = {"sgd": [], "diffusion": []}
        for pair in trials[batch_size]:
            for spec in pair:
                curves = [o["errors"] for o in next(outcomes)]
                score = search_score(curves, settings.target_error, settings.search_epochs)
                scored[spec.method].append((score, spec))
        search[str(batch_size)] = {
            method: [
                {"score": list(score), "hyperparameters": dataclasses.asdict(spec)}
                for score, spec in entries
            ]
            for method, entries in scored.items()
        }
        for method, entries in scored.items():
            best[batch_size, method] = min(entries, key=lambda e: e[0])[1]
    search_seconds = time.time() - start
    jobs = _final_jobs(settings, best)
    groups = {}
    for (key, _), outcomes in zip(jobs, run_all([job for _, job in jobs], settings.workers)):
        groups.setdefault(key, []).extend(outcomes)
    table, initializers = {}, {}
    for (initializer, batch_size, method), outcomes in groups.items():
        entry = summarize(outcomes, settings.target_error)
        entry.update(batch_size=batch_size, method=method,
                     hyperparameters=dataclasses.asdict(best[batch_size, method]),
                     curves=[o["errors"] for o in outcomes])
        if initializer == settings.input_initializer:
            table[f"{batch_size}/{method}"] = entry
        else:
            initializers[f"{batch_size}/{method}"] = entry
    return {
        "settings": dataclasses.asdict(settings),
        "search": search,
        "table": table,
        "compare_initializer": initializers,
        "search_seconds": search_seconds,
        "seconds": time.time() - start,
    }


def _hyperparameter_cells(hp):
    if hp["method"] == "sgd":
        return f"{hp['learning_rate']:.3g} | - | - | - | -"
    rule = "SGD" if hp["optimizer"] == "sgd" else f"annealed (floor {hp['sigma_floor']:.2g})"
    return (f"{hp['learning_rate']:.3g} | {rule} | {hp['sigma0']:.3g} | {hp['penalty']:.2g} | "
            f"{hp['sigma_epochs']}")


def markdown_table(results):
    settings = results["settings"]
    scale = 0.5 if settings["output"] == "erf" else 1.0
    unit = "mean of the two numbers" if scale == 0.5 else "sum"
    target = settings["target_error"]
    lines = [
        f"Epochs to reach test error {target} on the {unit} ({target / scale**2:g} on the "
        f"sum) on the adding task (T = 10), "
        f"{settings['output']} output, U {settings['input_initializer']}; {settings['seeds']} "
        f"seeds, cap {settings['epochs']} epochs; hyperparameters from "
        f"{settings['search_trials']} random-search trials x {settings['search_seeds']} seeds "
        "per method. Medians over all seeds, a failed seed counting as never.",
        "",
        "| batch | method | epochs (median) | failed seeds | s to target (median) | s/epoch "
        "| final error, mean / sum unit (median) | paper | SGD / diffusion | lr | step rule "
        "| sigma_0 | lambda | sigma -> 0 over (epochs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for batch_size in settings["batch_sizes"]:
        entries = {m: results["table"][f"{batch_size}/{m}"] for m in ("sgd", "diffusion")}
        for method, entry in entries.items():
            final = float(np.median(entry["final_errors"])) / scale**2
            paper = PAPER.get(f"{batch_size}/{method}", "-")
            ratio_cell = ratio(entries) if method == "diffusion" else ""
            lines.append(
                f"| {batch_size} | {method} | {cell(entry['median'])} | "
                f"{entry['failures']}/{len(entry['epochs'])} | {cell(entry['median_seconds'])} | "
                f"{cell(entry['median_epoch_seconds'], '.3f')} | "
                f"{final / 4:.3g} / {final:.3g} | {paper} | {ratio_cell} | "
                f"{_hyperparameter_cells(entry['hyperparameters'])} |"
            )
    if results["compare_initializer"]:
        lines += [
            "",
            f"Same hyperparameters, U {settings['compare_initializer']}:",
            "",
            "| batch | method | epochs (median) | failed seeds | s to target (median) |",
            "|---|---|---|---|---|",
        ]
        for key, entry in results["compare_initializer"].items():
            lines.append(
                f"| {entry['batch_size']} | {entry['method']} | {cell(entry['median'])} | "
                f"{entry['failures']}/{len(entry['epochs'])} | {cell(entry['median_seconds'])} |"
            )
    lines += ["", f"Total time: {results['seconds']:.0f} s (search {results['search_seconds']:.0f} s)"]
    return "\n".join(lines)


def cell(value, spec=".1f"):
    return "never" if value is None else format(value, spec)


def ratio(entries):
    """SGD / diffusion median epochs; "n/a" when either never reaches the target."""
    sgd, diffusion = entries["sgd"]["median"], entries["diffusion"]["median"]
    return "n/a" if sgd is None or diffusion is None else f"{sgd / diffusion:.2f}"


def epochs_to_thresholds(curves, thresholds):
    """Median over the curves of the epochs to reach each threshold (NaN: half never do)."""
    medians = []
    for threshold in thresholds:
        cap = max(len(c) for c in curves) + 1
        epochs = [train.epochs_to_reach(c, threshold) or math.inf for c in curves]
        median = float(np.median(np.minimum(epochs, cap)))
        medians.append(median if median < cap else math.nan)
    return medians


def plot(results, path):
    """Figure 6 as the paper draws it: epochs (y) to reach each test error (x)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    settings = results["settings"]
    sizes = settings["batch_sizes"]
    figure, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    thresholds = np.geomspace(settings["target_error"], 10 * settings["target_error"], 25)
    for axis, batch_size in zip(axes[0], sizes):
        for method, color in (("sgd", "tab:blue"), ("diffusion", "tab:red")):
            entry = results["table"][f"{batch_size}/{method}"]
            axis.plot(thresholds, epochs_to_thresholds(entry["curves"], thresholds), color=color,
                      label=f"{method} (median of {len(entry['curves'])} seeds)")
            paper = PAPER.get(f"{batch_size}/{method}")
            if paper is not None:
                axis.plot([0.02], [paper], "x", color=color, markersize=10,
                          label=f"paper, {method}: ~{paper} epochs at ~0.02")
        axis.set_xscale("log")
        ticks = settings["target_error"] * np.array([1, 2, 5, 10])
        axis.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axis.minorticks_off()
        axis.set_xlabel(f"test error ({settings['output']} output's unit)")
        axis.set_ylabel("epochs to reach it")
        axis.set_title(f"batch size {batch_size}")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def settings_from_flags():
    values = dict(
        batch_sizes=[int(b) for b in FLAGS.batch_sizes],
        seeds=FLAGS.seeds,
        epochs=FLAGS.epochs,
        search_trials=FLAGS.search_trials,
        search_epochs=FLAGS.search_epochs,
        search_seeds=FLAGS.search_seeds,
        target_error=FLAGS.target_error,
        compare_initializer=FLAGS.compare_initializer,
    )
    if FLAGS.quick:
        values.update(QUICK)
    return Settings(
        batch_sizes=tuple(values.pop("batch_sizes")),
        search_seed=FLAGS.search_seed,
        validation_fraction=FLAGS.validation_fraction,
        workers=FLAGS.workers,
        output=FLAGS.output,
        input_initializer=FLAGS.input_initializer,
        data_dir=FLAGS.data_dir,
        **values,
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
    plot(results, os.path.join(FLAGS.output_dir, "figure6.png"))


if __name__ == "__main__":
    define_flags()
    app.run(main)
