r"""Chaudhari et al. (2018), Table 1 (mnistfc row) in small: Entropy-SGD, HEAT, HJ and SGD.

The paper trains ``mnistfc`` (784 -> drop 0.2 -> [fc 1024 -> ReLU -> BN -> drop 0.2] x 2 -> fc 10,
softmax cross-entropy) on MNIST, batch 128, momentum 0.9 (sec. 7.4), and reports the validation
error (%) at the number of *effective epochs* (Remark 22: epochs times the gradient
evaluations per update) for 6 seeds:

    Entropy-SGD 1.08 +- 0.02 @ 120 | HEAT 1.13 +- 0.02 @ 200
    HJ 1.17 +- 0.04 @ 200          | SGD 1.10 +- 0.01 @ 194

This script runs the same comparison in small, offline: the ``sklearn`` digits (8 x 8 images,
1797 samples; 1297 for training, 500 for validation, a fixed split), the mnistfc architecture
with ``--width`` units instead of 1024, batch ``--batch_size``. Every train step of every
optimizer evaluates ONE mini-batch gradient (``keras_diffusion.optimizers.EntropySGD``/``HJ``/
``HEAT`` run one inner step per batch), so a ``fit`` epoch is an effective epoch for all four.
Hyper-parameters: sec. 7 (Entropy-SGD L = 20, alpha = 0.75, eta_y = 0.1, noise 1e-8; HJ
L = 5; HEAT L = 20; gamma_1 = 1e-3; momentum 0.9; gamma_0 = 0.1 for Entropy-SGD/HJ and
``--heat_gamma`` for HEAT, whose gamma is a per-weight variance); the learning rate of each
method is chosen by the SAME search: every value of ``--learning_rates`` trained with the
search seed on 80% of the training split, scored by the final error on the other 20%. The
learning rate is divided by 5 at 50% and 75% of the budget (sec. 7.1 anneals it too). The
best rate is then trained on the whole training split for ``--seeds`` seeds; the table gives
the mean +- sd (over seeds) of the validation error at the end and its minimum over epochs of
the seed-mean curve, "@" the effective epoch where that minimum is reached.

Usage:
  python scripts/reproduce_chaudhari_table1.py --quick                     # CI smoke run
  python scripts/reproduce_chaudhari_table1.py --output_dir=/tmp/table1    # the reproduction
"""

import json
import os
import sys
import time

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

METHODS = ("entropy_sgd", "heat", "hj", "sgd")
PAPER = {
    "entropy_sgd": "1.08 ± 0.02 @ 120",
    "heat": "1.13 ± 0.02 @ 200",
    "hj": "1.17 ± 0.04 @ 200",
    "sgd": "1.10 ± 0.01 @ 194",
}


# --quick: the CI smoke run (tests/test_local_entropy_scripts.py runs it).
QUICK = {"width": 8, "batch_size": 256, "epochs": 2, "seeds": 2, "learning_rates": [0.1]}


def define_flags():
    """Defines the flags; called only when this file runs as a script."""
    flags.DEFINE_bool("quick", False, "CI smoke run: tiny network, 2 seeds, 2 epochs, no search.")
    flags.DEFINE_list("methods", list(METHODS), "Methods to compare.")
    flags.DEFINE_integer("width", 128, "Hidden units (mnistfc: 1024).", lower_bound=1)
    flags.DEFINE_integer("batch_size", 32, "Mini-batch size (paper: 128).", lower_bound=1)
    flags.DEFINE_integer("epochs", 40, "Budget in effective epochs.", lower_bound=1)
    flags.DEFINE_integer("seeds", 3, "Seeds of the final runs.", lower_bound=1)
    flags.DEFINE_integer("search_seed", 100, "Seed of the learning-rate search (no final seed).")
    flags.DEFINE_list("learning_rates", ["0.01", "0.03", "0.1", "0.3", "1.0"], "Searched rates.")
    flags.DEFINE_float("heat_gamma", 1e-4, "HEAT's gamma_0 (perturbation variance).", lower_bound=0)
    flags.DEFINE_string("output_dir", None, "Writes results.json and table.md there.")


def load_digits(seed=0):
    """``(x_train, y_train, x_val, y_val)``: sklearn digits in [0, 1], a fixed 1297/500 split."""
    import numpy as np
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    train, val = order[:1297], order[1297:]
    return x[train], y[train], x[val], y[val]


def build_mnistfc(inputs, width):
    """mnistfc (sec. 8.2.1), ``width`` hidden units: drop, [fc -> ReLU -> BN -> drop] x 2, fc."""
    import keras

    import keras_diffusion as kd

    layers = [keras.Input((inputs,)), keras.layers.Dropout(0.2)]
    for _ in range(2):
        layers += [
            keras.layers.Dense(width, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.2),
        ]
    return kd.Sequential(layers + [keras.layers.Dense(10)])


def make_optimizer(method, learning_rate, steps, heat_gamma, seed):
    """The method's optimizer (sec. 7 defaults), learning rate / 5 at 50% and 75% of ``steps``."""
    import keras

    from keras_diffusion import optimizers

    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [max(1, steps // 2), max(2, 3 * steps // 4)],
        [learning_rate, learning_rate / 5, learning_rate / 25],
    )
    if method == "entropy_sgd":
        return optimizers.EntropySGD(schedule, seed=seed)
    if method == "hj":
        return optimizers.HJ(schedule, seed=seed)
    if method == "heat":
        return optimizers.HEAT(schedule, gamma=heat_gamma, seed=seed)
    if method == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    raise app.UsageError(f"Unknown method {method!r}; choose from {', '.join(METHODS)}.")


def train_run(method, learning_rate, seed, data, width, batch_size, epochs, heat_gamma):
    """Trains one run; returns the validation error (%) after every effective epoch."""
    import keras

    x_train, y_train, x_val, y_val = data
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_mnistfc(x_train.shape[1], width)
    steps = epochs * -(-len(x_train) // batch_size)
    model.compile(
        optimizer=make_optimizer(method, learning_rate, steps, heat_gamma, seed),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        x_train, y_train, batch_size=batch_size, epochs=epochs,
        validation_data=(x_val, y_val), verbose=0,
    )
    errors = [100.0 * (1.0 - a) for a in history.history["val_accuracy"]]
    evaluations = history.history.get("gradient_evaluations", [float(steps)])[-1]
    return {"errors": errors, "gradient_evaluations": evaluations, "steps": steps}


def search(method, data, config):
    """The best of ``config["learning_rates"]`` on an 80/20 split of the training data."""
    x_train, y_train, _, _ = data
    cut = int(0.8 * len(x_train))
    split = (x_train[:cut], y_train[:cut], x_train[cut:], y_train[cut:])
    scores = {}
    for lr in config["learning_rates"]:
        run = train_run(method, lr, config["search_seed"], split, config["width"],
                        config["batch_size"], config["epochs"], config["heat_gamma"])
        scores[lr] = run["errors"][-1]
    return min(scores, key=scores.get), scores


def run(config):
    """Runs the comparison; returns ``{method: {...}}`` with the curves and summary."""
    import numpy as np

    data = load_digits()
    results = {}
    for method in config["methods"]:
        if len(config["learning_rates"]) > 1:
            best, scores = search(method, data, config)
        else:
            best, scores = config["learning_rates"][0], {}
        runs = [
            train_run(method, best, seed, data, config["width"], config["batch_size"],
                      config["epochs"], config["heat_gamma"])
            for seed in range(config["seeds"])
        ]
        curves = np.array([r["errors"] for r in runs])
        mean = curves.mean(axis=0)
        final = curves[:, -1]
        at = int(np.argmin(mean))
        results[method] = {
            "learning_rate": best,
            "search": scores,
            "curves": curves.tolist(),
            "final_mean": float(final.mean()),
            "final_sd": float(final.std(ddof=1)) if len(final) > 1 else 0.0,
            "best_mean": float(mean[at]),
            "best_sd": float(curves[:, at].std(ddof=1)) if len(final) > 1 else 0.0,
            "best_epoch": at + 1,
            "gradient_evaluations": runs[0]["gradient_evaluations"],
            "steps": runs[0]["steps"],
        }
        print(f"{method}: lr {best:g} (search {scores}), final errors {final.round(2)}", flush=True)
    return results


def table(results, epochs):
    """The Markdown table: this run beside the paper's mnistfc row."""
    lines = [
        "| Method | learning rate | val. error % at the end (" + str(epochs) + " eff. epochs) "
        "| best of the mean curve @ eff. epoch | paper, mnistfc on MNIST |",
        "|---|---|---|---|---|",
    ]
    for method, r in results.items():
        lines.append(
            f"| {method} | {r['learning_rate']:g} | {r['final_mean']:.2f} ± {r['final_sd']:.2f} "
            f"| {r['best_mean']:.2f} ± {r['best_sd']:.2f} @ {r['best_epoch']} | {PAPER[method]} |"
        )
    return "\n".join(lines)


def config_from_flags():
    config = {
        "methods": FLAGS.methods,
        "width": FLAGS.width,
        "batch_size": FLAGS.batch_size,
        "epochs": FLAGS.epochs,
        "seeds": FLAGS.seeds,
        "search_seed": FLAGS.search_seed,
        "learning_rates": [float(v) for v in FLAGS.learning_rates],
        "heat_gamma": FLAGS.heat_gamma,
    }
    return {**config, **QUICK} if FLAGS.quick else config


def main(argv):
    del argv
    for method in FLAGS.methods:
        if method not in METHODS:
            raise app.UsageError(f"Unknown method {method!r}; choose from {', '.join(METHODS)}.")
    config = config_from_flags()
    start = time.time()
    results = run(config)
    text = table(results, config["epochs"])
    print(text)
    print(f"\n{config} in {time.time() - start:.0f} s")
    if FLAGS.output_dir:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
            json.dump({"config": config, "results": results}, f, indent=2)
        with open(os.path.join(FLAGS.output_dir, "table.md"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
