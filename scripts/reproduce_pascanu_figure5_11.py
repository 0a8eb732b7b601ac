"""Pascanu thesis Figure 5.11, scaled: success rate on a pathological task against length.

Thesis setup (secs. 5.9.1 and 5.9.3), used here unchanged: temporal order problem, an RNN
of 50 tanh units, *basic tanh* initialization (all weights N(0, 0.1), biases 0; also
``--init=sigmoid|smart_tanh``, the figure's other two panels), plain SGD with learning
rate 0.01 and no momentum, mini-batches of 20 freshly drawn sequences, three methods:
MSGD, MSGD-C (gradient norm clipped at mu = 1) and MSGD-CR (clipping plus the Omega
regularizer with a constant weight alpha = 4: "we did not explore any decreasing scheme ...
for the regularization weight", sec. 5.9.3). A run succeeds when fewer than 1% of 10,000
fresh sequences are misclassified. The thesis uses 5 seeds per length and up to 5 million
updates; MSGD-CR reaches 100% success at every length up to T = 250.

Scaled here (2 shared CPU cores): fewer lengths, seeds and updates (``--updates``; the
thesis reports ~2k-21k updates at T = 20 and ~400k-700k at T = 200). Every ``--eval_every``
updates a screen on ``--screen_n`` fresh sequences runs; when it is under 1% the thesis
criterion is checked on ``--n_test`` (10,000) fresh sequences and the run stops on success.
Unsuccessful runs report the error of their last screen.

Writes ``results.json``, ``table.md`` and ``figure5_11.png`` to ``--output_dir``.

Usage:
  python scripts/reproduce_pascanu_figure5_11.py --quick --output_dir=/tmp/f511   # CI, < 60 s
  python scripts/reproduce_pascanu_figure5_11.py --flagfile=scripts/configs/figure5_11.cfg
"""

import os
import sys
import time

from absl import app, flags

import keras
import numpy as np

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_diffusion.regularizers import NormPreservingModel, OmegaWeight  # noqa: E402
from models import pathological, rnn_builders  # noqa: E402
from scripts import reporting  # noqa: E402

FLAGS = flags.FLAGS
METHODS = ("sgd", "sgd_c", "sgd_cr")
METHOD_NAMES = {"sgd": "MSGD", "sgd_c": "MSGD-C", "sgd_cr": "MSGD-CR"}
# What the thesis' text states about Figure 5.11 (the figure itself is an image): the
# lengths of its basic-tanh panel, at each of which MSGD-CR succeeds in 5/5 runs (sec. 5.9.1,
# "a success rate of 100% for sequences up to 250 steps"), and the average updates to
# success it reports (sec. 5.9.3).
THESIS_LENGTHS = (16, 20, 35, 45, 50, 55, 65, 75, 100, 150, 200, 250)
THESIS_UPDATES = {  # (method, T, initialization): average updates to success
    ("sgd", 20, "smart_tanh"): 21000, ("sgd_c", 20, "smart_tanh"): 11000,
    ("sgd_cr", 20, "smart_tanh"): 2000, ("sgd_cr", 200, "sigmoid"): 685000,
    ("sgd_cr", 200, "basic_tanh"): 476000, ("sgd_cr", 200, "smart_tanh"): 434000,
}


def define_flags():
    """Defines the script's flags (called from ``main`` only, so importing is side-effect free)."""
    flags.DEFINE_bool("quick", False, "Tiny CI run: one short length, one seed, a few updates.")
    flags.DEFINE_enum("task", "temporal_order", list(pathological.TASKS), "Pathological task.")
    flags.DEFINE_list("lengths", ["20", "50", "100"], "Sequence lengths T.")
    flags.DEFINE_list("methods", list(METHODS), "Subset of sgd, sgd_c, sgd_cr.")
    flags.DEFINE_integer("seeds", 3, "Runs (seeds 0..seeds-1) per length and method.")
    flags.DEFINE_integer("updates", 3000, "Maximum SGD updates per run (thesis: 5M).")
    flags.DEFINE_integer("eval_every", 500, "Updates between success screens.")
    flags.DEFINE_integer("screen_n", 2000, "Fresh sequences per screen.")
    flags.DEFINE_integer("n_test", 10000, "Fresh sequences of the success check (thesis: 10,000).")
    flags.DEFINE_integer("units", 50, "Hidden tanh units (thesis: 50).")
    flags.DEFINE_enum("init", "basic_tanh", list(rnn_builders.PATHOLOGICAL_INITS),
                      "Initialization (sec. 5.9.1).")
    flags.DEFINE_float("learning_rate", 0.01, "SGD learning rate (thesis: 0.01, no momentum).")
    flags.DEFINE_float("clipnorm", 1.0, "Gradient-norm clipping threshold mu (thesis: 1).")
    flags.DEFINE_float("alpha", 4.0, "Omega weight of sgd_cr (thesis: 4, constant).")
    flags.DEFINE_integer("omega_decay_steps", 0,
                         "0: constant Omega weight (thesis, synthetic tasks); N: alpha/(1+t/N).")
    flags.DEFINE_integer("batch_size", 20, "Sequences per update (thesis: 20).")
    flags.DEFINE_bool("jit_compile", True, "XLA-compile the train step.")
    flags.DEFINE_integer("steps_per_execution", 50, "Train steps per compiled call.")
    flags.DEFINE_string("output_dir", None, "Directory for results.json, table.md, figure5_11.png.")


class SuccessCheck(keras.callbacks.Callback):
    """After each 'epoch' of eval_every updates: screens, checks the thesis criterion when the
    screen passes, and stops on success. ``curve`` holds (updates, screen error rate)."""

    def __init__(self, net, task, every, seed):
        super().__init__()
        self.net, self.task, self.every, self.seed = net, task, every, seed
        self.error_rate, self.success, self.updates, self.curve = 1.0, False, 0, []

    def on_epoch_end(self, epoch, logs=None):
        self.updates = (epoch + 1) * self.every
        stream = 10**6 + 1000 * self.seed + epoch  # test streams independent of training
        rate, _ = pathological.evaluate_success(self.net, self.task, n=FLAGS.screen_n,
                                                seed=stream)
        self.curve.append((self.updates, rate))
        self.error_rate = rate
        if rate < pathological.SUCCESS_ERROR_RATE:
            self.error_rate, self.success = pathological.evaluate_success(
                self.net, self.task, n=FLAGS.n_test, seed=stream + 500)
        if self.success:
            self.model.stop_training = True


def omega_weight():
    """The MSGD-CR weight: constant alpha, or alpha / (1 + t / omega_decay_steps)."""
    return OmegaWeight(FLAGS.alpha, decay_steps=FLAGS.omega_decay_steps or None)


def train_run(task, method, seed):
    """One training run; returns its success, error rate, updates used and screen curve."""
    keras.utils.set_random_seed(seed)
    net = rnn_builders.pathological_rnn(task, FLAGS.units, FLAGS.init, seed=seed)
    model = net
    if method == "sgd_cr":
        model = NormPreservingModel(net, net.get_layer("rnn"), weight=omega_weight())
    model.compile(
        optimizer=keras.optimizers.SGD(FLAGS.learning_rate,
                                       global_clipnorm=None if method == "sgd" else FLAGS.clipnorm),
        loss="mse" if task.regression else keras.losses.SparseCategoricalCrossentropy(
            from_logits=True),
        jit_compile=FLAGS.jit_compile,
        steps_per_execution=min(FLAGS.steps_per_execution, FLAGS.eval_every),
    )
    data = task.dataset(FLAGS.batch_size, seed=seed)
    if task.regression:
        data = data.map(lambda x, y: (x, y[:, :, None]))
    every = min(FLAGS.eval_every, FLAGS.updates)
    check = SuccessCheck(net, task, every, seed)
    model.fit(data, steps_per_epoch=every, epochs=FLAGS.updates // every, verbose=0,
              callbacks=[check])
    return {"success": check.success, "error_rate": check.error_rate,
            "updates": check.updates, "curve": check.curve}


def summarize(results, lengths, methods):
    """Per (length, method): success count, median updates of the successes, median error."""
    summary = {}
    for length in lengths:
        for method in methods:
            runs = [r for r in results if r["length"] == length and r["method"] == method]
            wins = [r["updates"] for r in runs if r["success"]]
            summary[f"{length}/{method}"] = {
                "successes": len(wins), "runs": len(runs),
                "success_rate": len(wins) / len(runs),
                "median_updates_to_success": float(np.median(wins)) if wins else None,
                "median_error_rate": float(np.median([r["error_rate"] for r in runs])),
            }
    return summary


def plot(summary, lengths, methods, path):
    """Success rate against T (ours, and the thesis' MSGD-CR as its text states it) and the
    median updates to success against T beside the thesis' reported averages."""
    styles = {"sgd": "C0", "sgd_c": "C1", "sgd_cr": "C2"}
    rate_series = [(f"ours {METHOD_NAMES[m]}", lengths,
                    [summary[f"{t}/{m}"]["success_rate"] for t in lengths],
                    {"marker": "o", "color": styles[m]}) for m in methods]
    rate_series.append(("thesis MSGD-CR (text: 100% up to T=250)", THESIS_LENGTHS,
                        [1.0] * len(THESIS_LENGTHS),
                        {"marker": "x", "linestyle": "--", "color": "gray"}))
    update_series = []
    for m in methods:
        points = [(t, summary[f"{t}/{m}"]["median_updates_to_success"]) for t in lengths]
        points = [(t, u) for t, u in points if u is not None]
        update_series.append((f"ours {METHOD_NAMES[m]} (median of successes)",
                              [t for t, _ in points], [u for _, u in points],
                              {"marker": "o", "color": styles[m]}))
    for (m, t, init), updates in THESIS_UPDATES.items():
        if m in methods:
            update_series.append((f"thesis {METHOD_NAMES[m]}, {init}, T={t} (mean)", [t], [updates],
                                  {"marker": "*", "markersize": 11, "linestyle": "none",
                                   "color": styles[m], "alpha": 0.6}))
    reporting.plot_panels(path, [
        {"title": f"Success rate ({FLAGS.seeds} seeds, <= {FLAGS.updates} updates; thesis: 5 "
                  "seeds, <= 5M)", "xlabel": "sequence length T", "ylabel": "success rate",
         "xscale": "log", "ylim": (-0.05, 1.05), "series": rate_series,
         "xticks": sorted(set(lengths) | set(THESIS_LENGTHS))},
        {"title": "Updates to success", "xlabel": "sequence length T", "ylabel": "updates",
         "xscale": "log", "yscale": "log", "series": update_series,
         "xticks": sorted(set(lengths) | {20, 200})},
    ], title=f"Pascanu (2014) Figure 5.11, scaled: {FLAGS.task}, {FLAGS.units} units, "
             f"{FLAGS.init} init")


def run():
    """Runs every (length, method, seed); prints the table, writes the report files."""
    if FLAGS.quick:
        FLAGS.lengths, FLAGS.seeds, FLAGS.updates = ["20"], 1, 20
        FLAGS.eval_every, FLAGS.screen_n, FLAGS.n_test = 10, 200, 500
        FLAGS.jit_compile = False
    methods = list(FLAGS.methods)
    for method in methods:
        if method not in METHODS:
            raise app.UsageError(f"--methods entries must be in {METHODS}, got {method!r}.")
    lengths = [int(v) for v in FLAGS.lengths]
    schedule = (f"alpha {FLAGS.alpha} constant" if not FLAGS.omega_decay_steps else
                f"alpha {FLAGS.alpha}/(1+t/{FLAGS.omega_decay_steps})")
    setting = (f"Task {FLAGS.task}, {FLAGS.units} units, init {FLAGS.init}, SGD lr "
               f"{FLAGS.learning_rate} (no momentum), batch {FLAGS.batch_size}, clip "
               f"{FLAGS.clipnorm}, Omega {schedule}. SCALED: lengths {lengths}, {FLAGS.seeds} "
               f"seeds, <= {FLAGS.updates} updates (thesis: 5 seeds, <= 5M updates); screen on "
               f"{FLAGS.screen_n} fresh sequences every {FLAGS.eval_every} updates, success = "
               f"< 1% wrong of {FLAGS.n_test} fresh sequences"
               f"{' (QUICK smoke run)' if FLAGS.quick else ''}.")
    print(setting, flush=True)
    results = []
    for length in lengths:
        task = pathological.PathologicalTask(FLAGS.task, length)
        for method in methods:
            for seed in range(FLAGS.seeds):
                start = time.time()
                result = train_run(task, method, seed)
                result.update(length=length, method=method, seed=seed,
                              seconds=time.time() - start)
                results.append(result)
                print(f"  T={length} {METHOD_NAMES[method]} seed {seed}: error "
                      f"{100 * result['error_rate']:.2f}% after {result['updates']} updates, "
                      f"{'success' if result['success'] else 'failure'} "
                      f"({result['seconds']:.0f} s)", flush=True)
        report = write_results(setting, results, [t for t in lengths if t <= length], methods,
                               final=length == lengths[-1])
    return report


def write_results(setting, results, lengths, methods, final=True):
    """Tabulates the ``lengths`` done so far; prints the table when ``final``; writes the
    report files (after every length, so that an interrupted run keeps what it finished)."""
    summary = summarize(results, lengths, methods)
    header = ["T"] + [METHOD_NAMES[m] for m in methods]
    rows = []
    for length in lengths:
        cells = [length]
        for method in methods:
            s = summary[f"{length}/{method}"]
            median = s["median_updates_to_success"]
            cells.append(f"{s['successes']}/{s['runs']}"
                         + (f" (median {median:,.0f} updates)" if median else
                            f" ({100 * s['median_error_rate']:.1f}% wrong)"))
        rows.append(cells)
    if final:
        print("\nSuccesses / runs (median updates to success; or median error of failures):")
        reporting.print_table(header, rows)
    report = {"setting": setting, "summary": summary, "runs": results}
    if FLAGS.output_dir:
        reporting.write_report(FLAGS.output_dir, report, header, rows, preamble=setting)
        plot(summary, lengths, methods, os.path.join(FLAGS.output_dir, "figure5_11.png"))
    return report


def main(argv):
    del argv
    run()


if __name__ == "__main__":
    define_flags()
    app.run(main)
