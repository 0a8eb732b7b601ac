"""Martens & Sutskever (2011), scaled: HF with structural damping against clipped SGD.

Paper setting (sec. 4-5 of Martens & Sutskever 2011; Pascanu 2014, sec. 4.3.2): the
pathological long-term-memory problems of Hochreiter & Schmidhuber (1997) -- addition,
multiplication, temporal order -- with a tanh RNN of 100 units at T = 30..200, trained by
Hessian-free optimization (Gauss-Newton curvature, Levenberg-Marquardt ``lambda``, CG with
Martens' stopping rule and backtracking, structural damping ``mu = 1/30``, large batches for
the gradient and a smaller share of them for the curvature); a run succeeds when fewer than
1% of 10,000 fresh sequences are wrong (regression: squared error over 0.04).

This script compares ``hf`` (``models.martens``: ``HessianFree`` with structural damping) and
``sgd`` (SGD with global gradient-norm clipping, the thesis' MSGD-C) at the SAME wall-clock
budget per run, measured as follows. Per task, both methods' networks are compiled and their
per-step times measured in this process, interleaved (``--calibration_rounds`` rounds of
``--calibration_steps`` HF steps then the SGD steps of about the same time, median per step
of each method); the budget ``--budget_seconds`` then becomes a step budget per method
(``round(budget / seconds per step)``). Runs are then counted in steps, not timed, so the
machine's load during the runs does not move the comparison; the seconds each run took are
recorded beside.

Both methods get the same search: a grid of ``2 x 2`` knobs (HF: initial ``lambda`` x ``mu``;
SGD: learning rate x clipping threshold), one run per point on the search seed
(``--search_seed``, none of the final seeds) with ``--search_fraction`` of the budget, scored
by the first check at which the run succeeds on ``--n_eval`` fresh validation sequences
(failures: after the last), ties by the lowest error rate. The best point of each method then
trains ``--seeds`` seeds (weights and data change with the seed) with the full budget; the
error rate is checked ``--checks`` times along the budget on ``--n_eval`` fresh sequences,
and a run that passes is confirmed on ``--n_test`` (10,000) fresh sequences and stops.

Writes ``--output_dir``/``results.json`` (calibration, search, per-run curves), ``table.md``
(success rate per task and method, median budget share to success) and ``plot.png`` (error
rate against wall-clock, per task; one thin line per seed, success counts in the legend).

Usage:
  python scripts/reproduce_martens_pathological.py --quick        # CI smoke run
  python scripts/reproduce_martens_pathological.py \
      --flagfile=scripts/configs/martens_pathological.cfg
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
from keras_diffusion.datasets import pathological  # noqa: E402
from models import martens  # noqa: E402
from scripts import reporting  # noqa: E402

FLAGS = flags.FLAGS
TASKS = ("addition", "multiplication", "temporal_order")
QUICK = dict(
    tasks=["addition"], length=10, units=8, seeds=1, budget_seconds=2.0, hf_batch_size=50,
    sgd_batch_size=10, cg_max_iterations=5, calibration_rounds=1, calibration_steps=1,
    hf_dampings=["1.0"], hf_structural_dampings=["0.0333"], sgd_learning_rates=["0.01"],
    sgd_clipnorms=["1.0"], checks=2, n_eval=100, n_test=200, search_fraction=0.5,
)


def define_flags():
    """The flags, defined only when this file runs as a script."""
    flags.DEFINE_bool("quick", False, "CI smoke run: one tiny task, one seed.")
    flags.DEFINE_list("tasks", list(TASKS), "Pathological tasks.")
    flags.DEFINE_integer("length", 30, "Sequence length T (paper: 100, up to 200).")
    flags.DEFINE_integer("units", 32, "Hidden tanh units (paper: 100).")
    flags.DEFINE_string("init", "smart_tanh", "Initialization (rnn_builders).")
    flags.DEFINE_integer("seeds", 3, "Final runs (seeds 0..seeds-1) per task and method.")
    flags.DEFINE_float("budget_seconds", 60.0, "Wall-clock budget of one final run.")
    flags.DEFINE_float("search_fraction", 0.5, "Share of the budget of one search run.")
    flags.DEFINE_integer("search_seed", 1000, "Seed of the search runs.")
    flags.DEFINE_integer("hf_batch_size", 500, "HF: fresh sequences per step (gradient).")
    flags.DEFINE_float("curvature_fraction", 0.2, "HF: share of the batch for the curvature.")
    flags.DEFINE_integer("cg_max_iterations", 50, "HF: CG iteration cap (Martens: 250).")
    flags.DEFINE_list("hf_dampings", ["1.0", "0.01"], "HF search: initial lambda.")
    flags.DEFINE_list("hf_structural_dampings", ["0.0333", "0.3"], "HF search: mu.")
    flags.DEFINE_integer("sgd_batch_size", 20, "SGD: sequences per step (thesis: 20).")
    flags.DEFINE_list("sgd_learning_rates", ["0.01", "0.1"], "SGD search: learning rate.")
    flags.DEFINE_list("sgd_clipnorms", ["1.0", "10.0"], "SGD search: clipping threshold.")
    flags.DEFINE_integer("calibration_rounds", 3, "Interleaved timing rounds per task.")
    flags.DEFINE_integer("calibration_steps", 3, "HF steps per timing round.")
    flags.DEFINE_integer("checks", 10, "Error-rate checks along a run's budget.")
    flags.DEFINE_integer("n_eval", 2000, "Fresh sequences per check.")
    flags.DEFINE_integer("n_test", 10000, "Fresh sequences confirming a success (paper: 10,000).")
    flags.DEFINE_string("output_dir", "/tmp/martens_pathological", "Where results go.")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated flags (see ``define_flags`` for their meaning)."""

    tasks: tuple
    length: int
    units: int
    init: str
    seeds: int
    budget_seconds: float
    search_fraction: float
    search_seed: int
    hf_batch_size: int
    curvature_fraction: float
    cg_max_iterations: int
    hf_dampings: tuple
    hf_structural_dampings: tuple
    sgd_batch_size: int
    sgd_learning_rates: tuple
    sgd_clipnorms: tuple
    calibration_rounds: int
    calibration_steps: int
    checks: int
    n_eval: int
    n_test: int

    def __post_init__(self):
        if not self.tasks:
            raise ValueError(f"tasks must name at least one of {TASKS}, got {self.tasks!r}.")
        for task in self.tasks:
            validation.one_of("tasks entry", task, TASKS)
            pathological.PathologicalTask(task, self.length)  # checks the length
        for name in ("units", "seeds", "calibration_rounds", "calibration_steps", "checks",
                     "n_eval", "n_test"):
            validation.positive_int(name, getattr(self, name))
        validation.positive("budget_seconds", self.budget_seconds)
        validation.fraction("search_fraction", self.search_fraction)
        for name in ("hf_dampings", "hf_structural_dampings", "sgd_learning_rates",
                     "sgd_clipnorms"):
            if not getattr(self, name):
                raise ValueError(f"{name} must list at least one value, got an empty list.")
        self.grid("hf") + self.grid("sgd")  # checks every knob

    def grid(self, method):
        """The search points of ``method`` (``martens.MethodConfig``)."""
        if method == "hf":
            return [
                martens.MethodConfig("hf", self.hf_batch_size, damping=d, structural_damping=mu,
                                     curvature_fraction=self.curvature_fraction,
                                     cg_max_iterations=self.cg_max_iterations)
                for d in self.hf_dampings for mu in self.hf_structural_dampings
            ]
        return [
            martens.MethodConfig("sgd", self.sgd_batch_size, learning_rate=lr, clipnorm=c)
            for lr in self.sgd_learning_rates for c in self.sgd_clipnorms
        ]


def _floats(name, values):
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"--{name} must list numbers, got {values!r}.") from None


def settings_from_flags():
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(Settings)}
    if FLAGS.quick:
        values.update(QUICK)
    for name in ("hf_dampings", "hf_structural_dampings", "sgd_learning_rates", "sgd_clipnorms"):
        values[name] = _floats(name, values[name])
    values["tasks"] = tuple(values["tasks"])
    return Settings(**values)


class Trainer:
    """One compiled network per method configuration of a task, reset for every run.

    Configurations differing only in values held by variables (HF's initial ``lambda``,
    SGD's learning rate) share one compiled train function: a run assigns the seed's
    initial weights and the optimizer's initial state instead of compiling anew.
    """

    def __init__(self, task, settings):
        self.task, self.settings = task, settings
        self._models, self._forwards = {}, {}
        self._spec = tf.TensorSpec((None, None, task.input_dim), tf.float32)

    def model(self, config, seed):
        """The compiled model of ``config`` with the initial weights of ``seed``."""
        key = dataclasses.replace(config, damping=1.0, learning_rate=1.0)  # variables
        if key not in self._models:
            model = martens.build(self.task, config, self.settings.units, 0, self.settings.init)
            model.optimizer.build(model.trainable_variables)
            state = [v.numpy() for v in model.optimizer.variables]
            self._models[key] = (model, state)
            self._forwards[key] = tf.function(lambda x: model(x, training=False),
                                              input_signature=[self._spec])
        model, state = self._models[key]
        init = martens.network(self.task, self.settings.units, seed, self.settings.init)
        model.set_weights(init.get_weights())
        for variable, value in zip(model.optimizer.variables, state):
            variable.assign(value)
        if config.method == "hf":
            model.optimizer.damping.assign(config.damping)
        else:
            model.optimizer.learning_rate.assign(config.learning_rate)
        return model, self._forwards[key]

    def train(self, model, config, steps, seed, callbacks=(), epochs=1):
        """``epochs`` fit epochs of ``steps`` steps each on fresh data of ``seed``."""
        data = martens.dataset(self.task, config.batch_size, seed)
        model.fit(data, steps_per_epoch=steps, epochs=epochs, verbose=0, shuffle=False,
                  callbacks=list(callbacks))


class StepTimer(keras.callbacks.Callback):
    """Steady-state seconds per step of one fit epoch: from the end of its first step to the
    end of its last, over the steps between (fit's and the data iterator's set-up and the
    first step are left out)."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def per_step(self):
        return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)


def calibrate(trainer, settings, configs):
    """Seconds per step of each method, measured interleaved: ``{method: seconds}``.

    HF's CG runs to its cap here (``cg_epsilon=0``): its most expensive step, so the
    conversion never favours HF. After a warm-up step of each (compilation), every round times
    ``settings.calibration_steps + 1`` HF steps, then as many SGD steps as filled the
    previous round's HF time (``StepTimer``), and the median per step of each method over
    the rounds is returned.
    """
    configs = dict(configs, hf=dataclasses.replace(configs["hf"], cg_epsilon=0.0))
    for config in configs.values():
        model, _ = trainer.model(config, 0)
        trainer.train(model, config, 1, seed=0)
    counts = {"hf": settings.calibration_steps, "sgd": settings.calibration_steps}
    per_step = {"hf": [], "sgd": []}
    for round_ in range(settings.calibration_rounds):
        for method in ("hf", "sgd"):
            model, _ = trainer.model(configs[method], 0)
            timer = StepTimer()
            trainer.train(model, configs[method], counts[method] + 1, seed=round_ + 1,
                          callbacks=[timer])
            per_step[method].append(timer.per_step())
        counts["sgd"] = max(1, round(per_step["hf"][-1] * counts["hf"] / per_step["sgd"][-1]))
    return {m: float(np.median(v)) for m, v in per_step.items()}


class SuccessChecks(keras.callbacks.Callback):
    """Error rate after each fit epoch on fresh sequences; confirms a pass and stops."""

    def __init__(self, forward, task, settings, seed):
        super().__init__()
        self.forward, self.task, self.settings, self.seed = forward, task, settings, seed
        self.errors, self.success, self.test_error = [], False, None

    def on_epoch_end(self, epoch, logs=None):
        rate, passed = pathological.evaluate_success(
            self.forward, self.task, n=self.settings.n_eval, seed=10**6 + self.seed * 100 + epoch)
        loss = float(logs["loss"]) if logs else float("nan")
        self.errors.append(rate)
        if not np.isfinite(loss):
            self.model.stop_training = True
        elif passed:
            self.test_error, self.success = pathological.evaluate_success(
                self.forward, self.task, n=self.settings.n_test, seed=2 * 10**6 + self.seed)
            self.model.stop_training = self.success


def run_once(trainer, config, steps, seed, settings):
    """One run of ``steps`` steps checked ``settings.checks`` times; returns its record."""
    model, forward = trainer.model(config, seed)  # no keras.utils.set_random_seed: it
    # would retrace the train function, and neither method draws random numbers
    chunk = max(1, steps // settings.checks)
    checks = SuccessChecks(forward, trainer.task, settings, seed)
    start = time.perf_counter()
    trainer.train(model, config, chunk, seed, callbacks=[checks], epochs=settings.checks)
    seconds = time.perf_counter() - start
    done = len(checks.errors)
    return {
        "seed": seed, "success": checks.success, "error_rates": checks.errors,
        "test_error_rate": checks.test_error, "steps_per_check": chunk,
        "steps": done * chunk, "seconds": seconds,
        "checks_to_success": done if checks.success else None,
    }


def search_score(record, checks):
    first = record["checks_to_success"] or checks + 1
    return (first, min(record["error_rates"], default=1.0))


def reproduce(settings):
    """Calibration, search and final runs of every task; returns the results dictionary."""
    results = {"settings": dataclasses.asdict(settings), "tasks": {}}
    for name in settings.tasks:
        task = pathological.PathologicalTask(name, settings.length)
        trainer = Trainer(task, settings)
        first = {m: settings.grid(m)[0] for m in martens.METHODS}
        per_step = calibrate(trainer, settings, first)
        steps = {m: max(settings.checks, round(settings.budget_seconds / per_step[m]))
                 for m in martens.METHODS}
        print(f"[{name}] seconds per step {per_step}; step budgets {steps}", flush=True)
        entry = {"seconds_per_step": per_step, "steps": steps, "search": {}, "runs": {}}
        for method in martens.METHODS:
            search_steps = max(settings.checks, round(settings.search_fraction * steps[method]))
            scored = []
            for config in settings.grid(method):
                record = run_once(trainer, config, search_steps, settings.search_seed, settings)
                scored.append((search_score(record, settings.checks), config, record))
                print(f"  search {method} {config.knobs()}: {record['error_rates'][-1]:.3f} "
                      f"success={record['success']}", flush=True)
            best = min(scored, key=lambda item: item[0])[1]
            entry["search"][method] = {
                "trials": [{"knobs": c.knobs(), "score": list(s), "record": r}
                           for s, c, r in scored],
                "best": dataclasses.asdict(best),
            }
            runs = []
            for seed in range(settings.seeds):
                record = run_once(trainer, best, steps[method], seed, settings)
                record["wall_clock"] = [
                    (k + 1) * record["steps_per_check"] * per_step[method]
                    for k in range(len(record["error_rates"]))
                ]
                runs.append(record)
                print(f"  {method} seed {seed}: success={record['success']} errors "
                      f"{record['error_rates'][-1]:.3f} after {record['steps']} steps "
                      f"({record['seconds']:.0f} s)", flush=True)
            entry["runs"][method] = runs
        results["tasks"][name] = entry
    return results


def table_rows(results):
    """``[task, method, successes/runs, median error rate, median seconds to success, knobs]``."""
    rows = []
    for name, entry in results["tasks"].items():
        for method, runs in entry["runs"].items():
            wins = [r for r in runs if r["success"]]
            reached = [r["wall_clock"][-1] for r in wins]
            final = [r["error_rates"][-1] for r in runs]
            knobs = martens.MethodConfig(**entry["search"][method]["best"]).knobs()
            rows.append([
                name, martens.METHOD_NAMES[method], f"{len(wins)}/{len(runs)}",
                f"{100 * np.median(final):.2f}%",
                f"{np.median(reached):.0f} s" if reached else "-",
                f"{entry['steps'][method]} ({entry['seconds_per_step'][method] * 1e3:.1f} ms)",
                ", ".join(f"{k}={v:g}" for k, v in knobs.items()),
            ])
    return rows


HEADER = ["task", "method", "successes", "median final error", "median time to success",
          "step budget (per step)", "searched knobs"]


def plot(results, path):
    """Error rate against (calibrated) wall-clock, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    names = list(results["tasks"])
    figure, axes = pyplot.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    colors = {"hf": "tab:red", "sgd": "tab:blue"}
    for ax, name in zip(axes[0], names):
        for method, runs in results["tasks"][name]["runs"].items():
            wins = sum(r["success"] for r in runs)
            for i, run in enumerate(runs):
                label = f"{martens.METHOD_NAMES[method]} ({wins}/{len(runs)})" if i == 0 else None
                ax.plot(run["wall_clock"], np.maximum(run["error_rates"], 1e-4),
                        color=colors[method], alpha=0.7, label=label, marker=".")
        ax.axhline(pathological.SUCCESS_ERROR_RATE, color="gray", linestyle="--")
        ax.set_yscale("log")
        ax.set_xlabel("wall-clock (s, calibrated)")
        ax.set_ylabel("error rate (fresh sequences)")
        ax.set_title(f"{name}, T = {results['settings']['length']}")
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    try:
        settings = settings_from_flags()
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    print(f"SCALED from Martens & Sutskever (2011): T = {settings.length} (paper 100-200), "
          f"{settings.units} tanh units (paper 100), {settings.seeds} seeds, "
          f"{settings.budget_seconds:g} s per run{' (QUICK smoke run)' if FLAGS.quick else ''}.",
          flush=True)
    start = time.time()
    results = reproduce(settings)
    results["seconds"] = time.time() - start
    rows = table_rows(results)
    reporting.print_table(HEADER, rows)
    reporting.write_report(FLAGS.output_dir, results, HEADER, rows)
    plot(results, os.path.join(FLAGS.output_dir, "plot.png"))
    print(f"Done in {results['seconds']:.0f} s; wrote {FLAGS.output_dir}.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
