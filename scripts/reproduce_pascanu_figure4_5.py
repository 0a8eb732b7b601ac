"""Pascanu thesis Figure 4.5 (a, b, d), scaled: SGD, damped Newton and Saddle-Free Newton.

Thesis setup (sec. 4.5.3): one-hidden-layer MLPs with 5, 25 and 50 hidden units on MNIST
downscaled to 10x10; mini-batch SGD with momentum (random search over about 80 choices of
learning rate and momentum, log scale, and batch size in {1, 10, 100}); damped Newton and
Saddle-Free Newton in batch mode with the exact Hessian, the damping picked every step
from {1, 1e-1, ..., 1e-5} by the lowest loss with learning rate 1. Figure 4.5 (a): minimum
training error against model size (Saddle-Free clearly best at 50 units); (b) training
error against epochs; (c, d) the largest and the most negative Hessian eigenvalue.
Dauphin et al. (2014) also start Saddle-Free Newton from the SGD solution.

Scaled to 2 CPU cores: sklearn's 8x8 digits (offline), average-pooled to 4x4 by default
(``--pool=2``: 16 inputs, 1,360 weights at 50 units; TensorFlow's dense eigendecomposition
of the 3,760 x 3,760 Hessian of the unpooled 50-unit net takes about a minute per step
here), ``--n_train`` examples, a small random search (``--sgd_trials``), ``--epochs``
passes. Softmax cross-entropy; "error" is the classification error (%) on the training set,
as in the thesis' plot. The eigenvalues come from ``keras_diffusion.CurvatureMonitor``
(Lanczos on the whole training set, each epoch). The printed header states the scaling.

Usage:
  python scripts/reproduce_pascanu_figure4_5.py --quick                 # CI smoke run
  python scripts/reproduce_pascanu_figure4_5.py --output=fig45.json --plot=fig45.png
"""

import os
import sys
import time

from absl import app, flags

import keras
import numpy as np

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_diffusion as kd  # noqa: E402
from keras_diffusion.optimizers import SaddleFreeNewton  # noqa: E402
from scripts import reporting  # noqa: E402

FLAGS = flags.FLAGS
METHODS = ("sgd", "newton", "sfn", "sgd_then_sfn")
METHOD_NAMES = {
    "sgd": "SGD+momentum", "newton": "Damped Newton", "sfn": "Saddle-Free Newton",
    "sgd_then_sfn": "SGD, then SFN",
}
flags.DEFINE_bool("quick", False, "Tiny CI run: 5 units, 100 examples, 1 epoch, 1 SGD trial.")
flags.DEFINE_list("units", ["5", "25", "50"], "Hidden units (thesis: 5, 25, 50).")
flags.DEFINE_integer("n_train", 500, "Training examples (of sklearn's 1,797 digits).")
flags.DEFINE_integer("pool", 2, "Average-pooling factor of the 8x8 images (1: none).")
flags.DEFINE_integer("epochs", 20, "Passes through the training set per method.")
flags.DEFINE_integer("sgd_trials", 6, "Random-search trials for SGD (thesis: about 80).")
flags.DEFINE_integer("seed", 0, "Seed of the data subset, the initialization and the search.")
flags.DEFINE_integer("lanczos_num_steps", 20, "Lanczos steps of the eigenvalue monitor.")
flags.DEFINE_string("output", None, "Optional JSON file for the results.")
flags.DEFINE_string("plot", None, "Optional PNG file for Figure 4.5 (a, b, c, d).")


def load_data(n_train, pool, seed):
    """``(x, y)``: ``n_train`` random sklearn digits, pooled, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype("float32") / 16.0
    if pool > 1:
        size = 8 // pool
        images = images.reshape(-1, size, pool, size, pool).mean(axis=(2, 4))
    order = np.random.default_rng(seed).permutation(len(images))[:n_train]
    return images.reshape(len(images), -1)[order], digits.target[order].astype("int32")


def build(inputs, units, seed, optimizer):
    keras.utils.set_random_seed(seed)
    model = kd.Sequential(
        [keras.Input((inputs,)), keras.layers.Dense(units, "tanh"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class TrainingError(keras.callbacks.Callback):
    """Records the training-set loss and classification error (%) at the start and after
    every epoch, at the end-of-epoch weights (``fit``'s logs average over the epoch)."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y
        self.loss, self.error = [], []

    def _record(self):
        logits = self.model(self.x, training=False)
        self.loss.append(float(self.model.loss(self.y, logits)))
        self.error.append(100.0 * float(np.mean(np.argmax(logits, axis=-1) != self.y)))

    def on_train_begin(self, logs=None):
        self._record()

    def on_epoch_end(self, epoch, logs=None):
        self._record()


def train(model, x, y, batch_size, epochs, initial=None):
    """Trains; returns per-epoch lists (epoch 0 = the initial weights): error (%), loss,
    the largest and the most negative Hessian eigenvalue."""
    if initial is not None:
        model.set_weights(initial)
    monitor = kd.CurvatureMonitor(
        (x, y), lanczos_num_steps=FLAGS.lanczos_num_steps, hutchinson_probes=0
    )
    monitor.set_model(model)
    start = monitor.measure()
    record = TrainingError(x, y)
    history = model.fit(
        x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
        callbacks=[record, monitor],
    ).history
    return {
        "error": record.error,
        "loss": record.loss,
        "hessian_max": [start["curvature/hessian_max"]] + history["curvature/hessian_max"],
        "hessian_most_negative": [start["curvature/hessian_most_negative"]]
        + history["curvature/hessian_most_negative"],
    }


def sgd_search(x, y, units, trials, epochs, seed):
    """Random search (thesis: log-scale learning rate and momentum, batch in {1, 10, 100})."""
    rng = np.random.default_rng(seed + 7)
    best = None
    for trial in range(trials):
        lr = float(10 ** rng.uniform(-3, 0))
        momentum = float(10 ** rng.uniform(-2, 0)) * 0.99
        batch_size = int(rng.choice([1, 10, 100]))
        model = build(x.shape[1], units, seed, keras.optimizers.SGD(lr, momentum=momentum))
        curves = train(model, x, y, batch_size, epochs)
        curves["hyper"] = {"learning_rate": lr, "momentum": momentum, "batch_size": batch_size}
        if best is None or min(curves["error"]) < min(best[0]["error"]):
            best = (curves, model.get_weights())
    return best


def newton_like(matrix):
    return SaddleFreeNewton(mode="exact", matrix=matrix, damping_rule="search")


def run_size(x, y, units, epochs, trials, seed):
    sgd, sgd_weights = sgd_search(x, y, units, trials, epochs, seed)
    results = {"sgd": sgd}
    for method, matrix in (("newton", "hessian"), ("sfn", "abs")):
        model = build(x.shape[1], units, seed, newton_like(matrix))
        results[method] = train(model, x, y, len(x), epochs)
    model = build(x.shape[1], units, seed, newton_like("abs"))
    results["sgd_then_sfn"] = train(model, x, y, len(x), epochs, initial=sgd_weights)
    return results


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results, key=int)
    largest = results[sizes[-1]]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for method in METHODS:
        name = METHOD_NAMES[method]
        axes[0].plot([int(s) for s in sizes], [min(results[s][method]["error"]) for s in sizes],
                     "o-", label=name)
        for ax, key in zip(axes[1:], ("error", "hessian_max", "hessian_most_negative")):
            ax.plot(largest[method][key], label=name)
    titles = ("(a) min training error (%) vs hidden units",
              f"(b) training error (%), {sizes[-1]} units",
              f"(c) largest Hessian eigenvalue, {sizes[-1]} units",
              f"(d) most negative Hessian eigenvalue, {sizes[-1]} units")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("hidden units" if ax is axes[0] else "epoch")
    axes[1].set_yscale("symlog", linthresh=0.1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv):
    del argv
    if FLAGS.quick:
        units, n_train, epochs, trials = [5], 100, 1, 1
        FLAGS.lanczos_num_steps = 5
    else:
        units = [int(u) for u in FLAGS.units]
        n_train, epochs, trials = FLAGS.n_train, FLAGS.epochs, FLAGS.sgd_trials
    x, y = load_data(n_train, FLAGS.pool, FLAGS.seed)
    print(
        f"# Figure 4.5 scaled: sklearn digits pooled x{FLAGS.pool} ({x.shape[1]} inputs), "
        f"{n_train} examples, units {units}, {epochs} epochs, {trials} SGD trials "
        f"(thesis: 10x10 MNIST, 5/25/50 units, ~80 SGD trials)"
    )
    results, rows = {}, []
    for size in units:
        start = time.time()
        results[str(size)] = run_size(x, y, size, epochs, trials, FLAGS.seed)
        for method in METHODS:
            curves = results[str(size)][method]
            rows.append([
                size, METHOD_NAMES[method], f"{min(curves['error']):.2f}",
                f"{min(curves['loss']):.4f}", f"{curves['hessian_max'][-1]:.3g}",
                f"{curves['hessian_most_negative'][-1]:.3g}",
            ])
        print(f"# {size} units: {time.time() - start:.0f} s; SGD "
              f"{results[str(size)]['sgd']['hyper']}")
    reporting.print_table(
        ["units", "method", "min train error %", "min train loss", "final lambda_max",
         "final most negative lambda"],
        rows,
    )
    if FLAGS.output:
        reporting.write_json(results, FLAGS.output)
    if FLAGS.plot:
        plot(results, FLAGS.plot)


if __name__ == "__main__":
    app.run(main)
