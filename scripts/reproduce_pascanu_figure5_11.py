"""Pascanu thesis Figure 5.11, scaled: success rate on a pathological task against length.

Thesis setup (sec. 5.9.1 and 5.9.3): temporal order problem, an RNN of 50 tanh units, SGD
with learning rate 0.01 and no momentum, mini-batches of 20 fresh sequences, three methods:
MSGD, MSGD-C (gradient norm clipped at 1) and MSGD-CR (clipping plus the Omega
regularizer, weight 4), 5 seeds per length, up to 5 million updates; a run succeeds when
fewer than 1% of 10,000 fresh sequences are misclassified (regression tasks: squared error
over 0.04). MSGD-CR reaches 100% success up to T = 250.

What 2 shared CPU cores allow is far smaller: by default lengths 20, 50 and 100, 2 seeds,
at most 3,000 updates per run (the thesis reports 2k-21k updates at T = 20 and ~400k-700k
at T = 200), success checked on 10,000 fresh sequences every ``--eval_every`` updates with
early stopping. The printed header states the scaling actually used.

Usage:
  python scripts/reproduce_pascanu_figure5_11.py --quick     # CI smoke run, < 60 s
  python scripts/reproduce_pascanu_figure5_11.py --lengths=20,50,100 --seeds=2 --updates=3000
"""

import os
import sys
import time

from absl import app, flags

import keras
import numpy as np

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_diffusion.regularizers import NormPreservingModel  # noqa: E402
from models import pathological, rnn_builders  # noqa: E402
from scripts import reporting  # noqa: E402

FLAGS = flags.FLAGS
METHODS = ("sgd", "sgd_c", "sgd_cr")
METHOD_NAMES = {"sgd": "MSGD", "sgd_c": "MSGD-C", "sgd_cr": "MSGD-CR"}
flags.DEFINE_bool("quick", False, "Tiny CI run: one short length, one seed, a few updates.")
flags.DEFINE_enum("task", "temporal_order", list(pathological.TASKS), "Pathological task.")
flags.DEFINE_list("lengths", ["20", "50", "100"], "Sequence lengths T.")
flags.DEFINE_list("methods", list(METHODS), "Subset of sgd, sgd_c, sgd_cr.")
flags.DEFINE_integer("seeds", 2, "Runs (seeds 0..seeds-1) per length and method.")
flags.DEFINE_integer("updates", 3000, "Maximum SGD updates per run.")
flags.DEFINE_integer("eval_every", 500, "Updates between success checks.")
flags.DEFINE_integer("n_test", 10000, "Fresh sequences per success check (thesis: 10,000).")
flags.DEFINE_integer("units", 50, "Hidden tanh units (thesis: 50).")
flags.DEFINE_enum("init", "basic_tanh", list(rnn_builders.PATHOLOGICAL_INITS), "Initialization.")
flags.DEFINE_float("learning_rate", 0.01, "SGD learning rate (thesis: 0.01, no momentum).")
flags.DEFINE_float("clipnorm", 1.0, "Gradient-norm clipping threshold for sgd_c/sgd_cr.")
flags.DEFINE_float("alpha", 4.0, "Omega weight for sgd_cr (thesis: 4).")
flags.DEFINE_integer("batch_size", 20, "Sequences per update (thesis: 20).")
flags.DEFINE_string("output", None, "Optional JSON file for the per-run results.")


class SuccessCheck(keras.callbacks.Callback):
    """Evaluates the thesis criterion after each 'epoch' of eval_every updates; stops on success."""

    def __init__(self, net, task, n_test, seed):
        super().__init__()
        self.net, self.task, self.n_test, self.seed = net, task, n_test, seed
        self.error_rate, self.success, self.checks = 1.0, False, 0

    def on_epoch_end(self, epoch, logs=None):
        self.checks += 1
        self.error_rate, self.success = pathological.evaluate_success(
            self.net, self.task, n=self.n_test, seed=10**6 + 1000 * self.seed + self.checks
        )
        if self.success:
            self.model.stop_training = True


def train_run(task, method, seed):
    """One training run; returns its success, final error rate and updates used."""
    keras.utils.set_random_seed(seed)
    net = rnn_builders.pathological_rnn(task, FLAGS.units, FLAGS.init, seed=seed)
    model = net
    if method == "sgd_cr":
        model = NormPreservingModel(net, net.get_layer("rnn"), weight=FLAGS.alpha)
    clip = None if method == "sgd" else FLAGS.clipnorm
    model.compile(
        optimizer=keras.optimizers.SGD(FLAGS.learning_rate, global_clipnorm=clip),
        loss="mse" if task.regression else keras.losses.SparseCategoricalCrossentropy(
            from_logits=True),
    )
    data = task.dataset(FLAGS.batch_size, seed=seed)
    if task.regression:
        data = data.map(lambda x, y: (x, y[:, :, None]))
    check = SuccessCheck(net, task, FLAGS.n_test, seed)
    every = min(FLAGS.eval_every, FLAGS.updates)
    model.fit(data, steps_per_epoch=every, epochs=FLAGS.updates // every, verbose=0,
              callbacks=[check])
    return {"success": check.success, "error_rate": check.error_rate,
            "updates": check.checks * every}


def run():
    """Runs every (length, method, seed); prints and returns the per-run results."""
    if FLAGS.quick:
        FLAGS.lengths, FLAGS.seeds, FLAGS.updates = ["20"], 1, 20
        FLAGS.eval_every, FLAGS.n_test = 20, 500
    methods = list(FLAGS.methods)
    for method in methods:
        if method not in METHODS:
            raise app.UsageError(f"--methods entries must be in {METHODS}, got {method!r}.")
    lengths = [int(v) for v in FLAGS.lengths]
    print(f"Task {FLAGS.task}, {FLAGS.units} units, init {FLAGS.init}, SGD lr "
          f"{FLAGS.learning_rate}, batch {FLAGS.batch_size}, clip {FLAGS.clipnorm}, alpha "
          f"{FLAGS.alpha}. SCALED: lengths {lengths}, {FLAGS.seeds} seeds, <= {FLAGS.updates} "
          f"updates (thesis: 5 seeds, <= 5M updates), success checked on {FLAGS.n_test} fresh "
          f"sequences every {FLAGS.eval_every} updates"
          f"{' (QUICK smoke run)' if FLAGS.quick else ''}.", flush=True)
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
    print("\nSuccess rate (successful runs / runs; mean final error %):")
    rows = []
    for length in lengths:
        cells = [length]
        for method in methods:
            runs = [r for r in results if r["length"] == length and r["method"] == method]
            wins = sum(r["success"] for r in runs)
            err = 100 * np.mean([r["error_rate"] for r in runs])
            cells.append(f"{wins}/{len(runs)} ({err:.1f}%)")
        rows.append(cells)
    reporting.print_table(["T"] + [METHOD_NAMES[m] for m in methods], rows)
    return reporting.write_json(results, FLAGS.output)


def main(argv):
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
