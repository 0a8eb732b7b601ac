"""Lersch et al., "Accelerated deep learning by Gaussian continuation", sec. 3.1, scaled down.

The paper trains a 30-layer fully-connected ReLU network (50 units per hidden layer, softmax
output) on MNIST with Adam (learning rate 1e-4) for 200 epochs, ensembles of 10 models with and
without continuation (one Monte Carlo sample per step, lambda learned from lambda_0 = exp(-13)
with learning rate 1e-2 and regularization weight 1e-3), and reports (Figure 5) that without
continuation the models stagnate between 60% and 90% accuracy while with it they reach ~94%.

Here the data are the offline sklearn digits (8x8 images, 1797 samples, 10% held out as the
test set as in the paper); everything else follows sec. 3.1. Continuation is
``keras_diffusion.optimizers.GaussianContinuation`` with the authors' code's conventions for
what the text leaves open: the pathwise lambda estimator and the regularizer
``beta m lambda / lambda_0`` in the gradient of ``s = log lambda`` (our ``regularization`` is
``beta / lambda_0``); lambda's optimizer is Adam with learning rate 1e-2, as in that code.

Outputs in ``--output_dir``: ``results.json`` (per-seed curves), ``table.md`` (mean, standard
deviation, min and max of the final test accuracy per method) and ``curves.png`` (mean test
accuracy per epoch with the min-max band of the ensemble).

Usage:
  python scripts/reproduce_gc_section3_1.py --quick --output_dir=/tmp/gc31   # CI, < 60 s
  python scripts/reproduce_gc_section3_1.py --output_dir=/tmp/gc31           # 5 seeds each
"""

import json
import os
import sys

from absl import app, flags

import numpy as np

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import reporting  # noqa: E402

FLAGS = flags.FLAGS

QUICK = {"seeds": 2, "epochs": 1, "depth": 4, "samples": 200}
METHODS = ("adam", "continuation")


def load_digits(seed, samples=None):
    """sklearn digits scaled to [0, 1], split 90/10 at random (``seed``)."""
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = sklearn_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))[:samples]
    x, y = x[order], y[order].astype("int32")
    test = max(1, len(x) // 10)
    return (x[test:], y[test:]), (x[:test], y[:test])


def build(method, depth, units, seed):
    import keras

    import keras_diffusion as kd

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((64,))]
    layers += [keras.layers.Dense(units, activation="relu") for _ in range(depth)]
    layers += [keras.layers.Dense(10, activation="softmax")]
    model = kd.Sequential(layers)
    optimizer = keras.optimizers.Adam(FLAGS.learning_rate)
    if method == "continuation":
        variance = float(np.exp(FLAGS.log_variance))
        optimizer = kd.optimizers.GaussianContinuation(
            optimizer,
            variance=variance,
            variance_learning_rate=FLAGS.variance_learning_rate,
            regularization=FLAGS.beta / variance,
            estimator=FLAGS.estimator,
            seed=seed,
        )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def train_one(method, seed, epochs, depth, samples):
    (x, y), (x_test, y_test) = load_digits(seed, samples)
    model = build(method, depth, FLAGS.units, seed)
    history = model.fit(x, y, batch_size=FLAGS.batch_size, epochs=epochs, verbose=0,
                        validation_data=(x_test, y_test), shuffle=True)
    curves = {k: [float(v) for v in history.history[k]]
              for k in ("accuracy", "val_accuracy", "variance") if k in history.history}
    return curves


def summarize(runs):
    rows, summary = [], {}
    for method in METHODS:
        final = np.array([r["val_accuracy"][-1] for r in runs[method]])
        summary[method] = {"mean": final.mean(), "std": final.std(), "min": final.min(),
                           "max": final.max(), "final": final.tolist()}
        rows.append([method, f"{final.mean():.3f}", f"{final.std():.3f}",
                     f"{final.min():.3f}", f"{final.max():.3f}", str(len(final))])
    return summary, rows


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        curves = np.array([r["val_accuracy"] for r in runs[method]])
        epochs = np.arange(1, curves.shape[1] + 1)
        ax.plot(epochs, curves.mean(0), label=f"{method} (mean of {len(curves)})")
        ax.fill_between(epochs, curves.min(0), curves.max(0), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{FLAGS.depth if not FLAGS.quick else QUICK['depth']}x{FLAGS.units} ReLU, "
                 "sklearn digits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    seeds, epochs, depth = FLAGS.seeds, FLAGS.epochs, FLAGS.depth
    samples = None
    if FLAGS.quick:
        seeds, epochs, depth, samples = (QUICK[k] for k in ("seeds", "epochs", "depth", "samples"))
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    runs = {m: [train_one(m, seed, epochs, depth, samples) for seed in range(seeds)]
            for m in METHODS}
    summary, rows = summarize(runs)
    header = ["method", "mean final test acc", "std", "min", "max", "models"]
    reporting.print_table(header, rows)
    with open(os.path.join(FLAGS.output_dir, "table.md"), "w") as f:
        f.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        f.writelines("| " + " | ".join(r) + " |\n" for r in rows)
    reporting.write_json({"summary": summary, "runs": runs,
                          "flags": {"seeds": seeds, "epochs": epochs, "depth": depth}},
                         os.path.join(FLAGS.output_dir, "results.json"))
    plot(runs, os.path.join(FLAGS.output_dir, "curves.png"))
    print(json.dumps({m: round(summary[m]["mean"], 4) for m in METHODS}))


def define_flags():
    """Defines the flags (only when run as a script, so importing it defines none)."""
    flags.DEFINE_bool("quick", False, "CI smoke run: 2 seeds, 4 layers, 1 epoch, 200 samples.")
    flags.DEFINE_integer("seeds", 5, "Models per ensemble (the paper: 10).")
    flags.DEFINE_integer("epochs", 200, "Training epochs (sec. 3.1: 200).")
    flags.DEFINE_integer("depth", 30, "Hidden layers (sec. 3.1: 30).")
    flags.DEFINE_integer("units", 50, "Units per hidden layer (sec. 3.1: 50).")
    flags.DEFINE_integer("batch_size", 64, "Minibatch size (not given in the paper).")
    flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate of the weights (sec. 3.1).")
    flags.DEFINE_float("log_variance", -13.0, "log lambda_0 (sec. 3.1: -13).")
    flags.DEFINE_float("variance_learning_rate", 1e-2, "Learning rate of log lambda (sec. 3.1).")
    flags.DEFINE_float("beta", 1e-3, "Regularization weight beta (sec. 3.1: 1e-3).")
    flags.DEFINE_enum("estimator", "pathwise", ["pathwise", "score"], "lambda gradient estimator.")
    flags.DEFINE_string("output_dir", "/tmp/gc_section3_1", "Where results go.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
