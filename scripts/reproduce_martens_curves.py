"""Martens (2010), the CURVES deep autoencoder, scaled: Hessian-free against Adam and SGD.

Paper setup (Martens 2010, "Deep learning via Hessian-free optimization"; the net of
Hinton & Salakhutdinov 2006): the 784-400-200-100-50-25-6 autoencoder with a mirrored decoder,
logistic units, a linear code layer, sigmoid cross-entropy on the 784 pixels, trained from
Martens' sparse initialization without pretraining on CURVES (20,000 training images).
Hessian-free: Gauss-Newton products on a mini-batch, CG with Martens' stopping rule, warm start,
backtracking and Levenberg-Marquardt damping (initial lambda 45 in Martens' code). Martens
reports the training squared reconstruction error per image (his Table 1; see the README for
the numbers and their provenance).

Here (``models.autoencoder``): the same net and loss, compiled with the cross-entropy *averaged*
over pixels (Keras' ``BinaryCrossentropy``), so lambda is scaled by 1/784 (``--damping`` =
45/784 gives Martens' steps); images from ``keras_diffusion.datasets.curves`` (parabolas through
three random points, generated offline); ``--num_train`` images instead of 20,000; the HF
gradient on batches of ``--hf_batch_size`` with the Gauss-Newton products on their leading
``--curvature_fraction``; the Martens diagonal preconditioner off by default (see the README:
per-example gradients dominate the step cost here). Adam and SGD with momentum take
``--batch_size`` mini-batches. Each method's learning rate is tuned by the same search: every
value of its grid trained for ``--search_budget_seconds`` on seed ``--search_seed``, the lowest
final training cross-entropy wins; then ``--seeds`` runs of ``--budget_seconds`` each.

Equal wall-clock on a shared machine: all runs of a phase live in one process and are
interleaved step by step, the run with the least training time so far stepping next, so load
changes hit every method alike. Each run's clock counts its training steps only (not the
evaluations, nor its first step, which traces the graph). Training error is evaluated on the
whole training set at ``--evaluations`` equally spaced points of each run's clock.

Outputs in ``--output_dir``: ``results.json`` (search, per-run curves, settings), ``table.md``
(medians at the common budget) and ``curves.png`` (squared error and cross-entropy against
wall-clock and against data passes).

Usage:
  python scripts/reproduce_martens_curves.py --quick --output_dir=/tmp/curves      # CI, < 1 min
  python scripts/reproduce_martens_curves.py --flagfile=scripts/configs/martens_curves.cfg
  python scripts/reproduce_martens_curves.py --merge=a/results.json,b/results.json \\
      --output_dir=/tmp/merged                     # one table and figure, no training
"""

import dataclasses
import json
import math
import os
import sys
import time

from absl import app, flags

import numpy as np

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import reporting  # noqa: E402

METHODS = ("hessian_free", "adam", "sgd_momentum")
LABELS = {"hessian_free": "Hessian-free (GN)", "adam": "Adam", "sgd_momentum": "SGD+momentum"}
MARTENS_DAMPING = 45.0  # Martens (2010): initial lambda, for the loss summed over pixels
PIXELS = 784


@dataclasses.dataclass(frozen=True)
class Settings:
    """One reproduction's settings (the flags, or ``QUICK``)."""

    num_train: int = 5000
    num_test: int = 1000
    data_seed: int = 0
    encoder: tuple = (400, 200, 100, 50, 25, 6)
    seeds: int = 3
    search_seed: int = 100
    budget_seconds: float = 180.0
    search_budget_seconds: float = 30.0
    evaluations: int = 10
    grids: tuple = (("hessian_free", (0.25, 0.5, 1.0, 2.0)),
                    ("adam", (3e-4, 1e-3, 3e-3, 1e-2)),
                    ("sgd_momentum", (1.0, 3.0, 10.0, 30.0)))
    batch_size: int = 100
    momentum: float = 0.9
    hf_batch_size: int = 5000
    curvature_fraction: float = 0.2
    damping: float = MARTENS_DAMPING / PIXELS
    cg_max_iterations: int = 250
    preconditioner: bool = False
    methods: tuple = METHODS

    def __post_init__(self):
        from keras_diffusion import validation

        for name in ("num_train", "num_test", "seeds", "evaluations", "batch_size",
                     "hf_batch_size", "cg_max_iterations"):
            validation.positive_int(name, getattr(self, name))
        for name in ("budget_seconds", "search_budget_seconds", "damping"):
            validation.positive(name, getattr(self, name))
        validation.fraction("curvature_fraction", self.curvature_fraction)
        validation.nonnegative("momentum", self.momentum)
        for name in ("batch_size", "hf_batch_size"):
            if getattr(self, name) > self.num_train:
                raise ValueError(f"`{name}`={getattr(self, name)} exceeds num_train="
                                 f"{self.num_train}; use at most num_train.")
        for method in self.methods:
            validation.one_of("methods entry", method, METHODS)
            for rate in self.grid(method):
                validation.positive(f"{method}_grid entry", rate)

    def grid(self, method):
        return dict(self.grids)[method]


QUICK = Settings(num_train=64, num_test=32, encoder=(16, 8, 2), seeds=1, budget_seconds=1.0,
                 search_budget_seconds=0.3, evaluations=3,
                 grids=(("hessian_free", (0.5, 1.0)), ("adam", (1e-3, 1e-2)),
                        ("sgd_momentum", (1.0, 3.0))),
                 batch_size=16, hf_batch_size=64, curvature_fraction=0.5, cg_max_iterations=10)


def make_data(settings):
    """``(train, test)`` flattened CURVES-like images, float32 in ``[0, 1]``."""
    from keras_diffusion.datasets import curves

    rng = np.random.default_rng(settings.data_seed)
    images = curves.curve_images(settings.num_train + settings.num_test, rng)
    images = images.reshape(len(images), -1)
    return images[: settings.num_train], images[settings.num_train:]


def make_optimizer(method, learning_rate, settings):
    """The optimizer of ``method`` at ``learning_rate`` (HF: the scale of its step)."""
    import keras

    import keras_diffusion as kd

    if method == "hessian_free":
        return kd.optimizers.HessianFree(
            damping=settings.damping, cg_max_iterations=settings.cg_max_iterations,
            preconditioner="martens" if settings.preconditioner else None,
            curvature_fraction=settings.curvature_fraction, learning_rate=learning_rate)
    if method == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.SGD(learning_rate, momentum=settings.momentum)


class Run:
    """One training run: a model, its batches, its training clock and its curve."""

    def __init__(self, method, learning_rate, seed, settings, data):
        from models import autoencoder

        self.method, self.learning_rate, self.seed = method, float(learning_rate), seed
        self.x_train, self.x_test = data
        self.model = autoencoder.deep_autoencoder(
            input_dim=self.x_train.shape[1], encoder=settings.encoder, seed=seed)
        self.model.compile(optimizer=make_optimizer(method, learning_rate, settings),
                           loss=autoencoder.reconstruction_loss())
        self.batch_size = (settings.hf_batch_size if method == "hessian_free"
                           else settings.batch_size)
        self.rng = np.random.default_rng([seed, METHODS.index(method)])
        self.order, self.position = self.rng.permutation(len(self.x_train)), 0
        self.clock, self.steps, self.examples, self.traced = 0.0, 0, 0, False
        self.failed, self.curve, self.logs = False, [], {}
        self.evaluate()

    def _batch(self):
        if self.position + self.batch_size > len(self.order):
            self.order, self.position = self.rng.permutation(len(self.x_train)), 0
        rows = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.x_train[rows]

    def step(self):
        """One optimizer step; its time joins the clock (except the tracing first step)."""
        x = self._batch()
        start = time.perf_counter()
        logs = self.model.train_on_batch(x, x, return_dict=True)
        logs = {k: float(v) for k, v in logs.items()}
        if self.traced:
            self.clock += time.perf_counter() - start
        self.traced = True
        self.steps += 1
        self.examples += len(x)
        self.logs = logs
        if not math.isfinite(logs["loss"]):
            self.failed = True

    def evaluate(self):
        """Appends the training (and test) errors at the current clock to the curve."""
        from models import autoencoder

        point = {"seconds": self.clock, "passes": self.examples / len(self.x_train),
                 "steps": self.steps}
        for split, x in (("train", self.x_train), ("test", self.x_test)):
            logits = np.concatenate([np.asarray(self.model(x[i : i + 2500], training=False))
                                     for i in range(0, len(x), 2500)])
            point[f"{split}_squared_error"] = autoencoder.squared_error(x, logits)
            point[f"{split}_cross_entropy"] = autoencoder.cross_entropy(x, logits)
        for key in ("damping", "cg_iterations", "rho", "step_length"):
            if key in self.logs:
                point[key] = self.logs[key]
        self.curve.append(point)
        print(f"{self.method} lr={self.learning_rate:g} seed={self.seed}: {self.clock:.1f} s, "
              f"{point['passes']:.1f} passes, squared error {point['train_squared_error']:.2f}, "
              f"cross-entropy {point['train_cross_entropy']:.1f}", flush=True)

    def summary(self):
        return {"method": self.method, "learning_rate": self.learning_rate, "seed": self.seed,
                "failed": self.failed, "steps": self.steps, "curve": self.curve}


def race(runs, budget, evaluations):
    """Trains ``runs`` interleaved until each has ``budget`` seconds of training time.

    The run with the least training time so far takes the next step; each is evaluated
    when its clock passes ``budget * k / evaluations``. A failed run (non-finite loss) stops.
    """
    marks = [budget * (k + 1) / evaluations for k in range(evaluations)]
    pending = {id(run): list(marks) for run in runs}
    active = list(runs)
    while active:
        run = min(active, key=lambda r: r.clock)
        run.step()
        todo = pending[id(run)]
        while todo and (run.clock >= todo[0] or run.failed):
            todo.pop(0)
            run.evaluate()
            if run.failed:
                todo.clear()
        if not todo:
            active.remove(run)
    return runs


def search(settings, data):
    """Every grid value of every method for the search budget; the best per method (a
    one-value grid is taken as given, without a search run)."""
    searched = [m for m in settings.methods if len(settings.grid(m)) > 1]
    runs = race([Run(method, lr, settings.search_seed, settings, data)
                 for method in searched for lr in settings.grid(method)],
                settings.search_budget_seconds, max(2, settings.evaluations // 4))
    trials = {m: [] for m in settings.methods}
    best = {m: settings.grid(m)[0] for m in settings.methods}
    for method in searched:
        scored = [(r.curve[-1]["train_cross_entropy"] if not r.failed else math.inf,
                   r.learning_rate) for r in runs if r.method == method]
        trials[method] = [{"learning_rate": lr, "final_train_cross_entropy": score}
                          for score, lr in scored]
        best[method] = min(scored)[1]
    return best, trials


def at_budget(run, key):
    """``key`` of the run's last evaluation (at the budget); ``inf`` for a failed run."""
    return math.inf if run["failed"] else run["curve"][-1][key]


def groups(runs):
    """The ``(method, learning_rate)`` pairs of ``runs``, in order of appearance."""
    return list(dict.fromkeys((r["method"], r["learning_rate"]) for r in runs))


def summarize(runs):
    """Table rows and summary (``{"method@lr": ...}``): medians (and ranges) over seeds at
    the common budget, one row per method and learning rate."""
    rows, summary = [], {}
    keys = ("train_squared_error", "train_cross_entropy", "test_squared_error", "passes")
    for method, learning_rate in groups(runs):
        mine = [r for r in runs if (r["method"], r["learning_rate"]) == (method, learning_rate)]
        values = {k: [at_budget(r, k) for r in mine] for k in keys}
        failures = sum(r["failed"] for r in mine)
        s = {k: {"median": float(np.median(v)), "min": float(np.min(v)),
                 "max": float(np.max(v))} for k, v in values.items()}
        s.update(method=method, learning_rate=learning_rate, failures=failures, runs=len(mine),
                 steps=float(np.median([r["steps"] for r in mine])))
        summary[f"{method}@{learning_rate:g}"] = s
        rows.append([
            LABELS[method], f"{learning_rate:g}",
            f"{s['train_squared_error']['median']:.2f} "
            f"({s['train_squared_error']['min']:.2f}-{s['train_squared_error']['max']:.2f})",
            f"{s['train_cross_entropy']['median']:.1f}",
            f"{s['test_squared_error']['median']:.2f}",
            f"{s['passes']['median']:.1f}", f"{s['steps']:.0f}", f"{failures}/{len(mine)}",
        ])
    return rows, summary


HEADER = ["method", "learning rate", "train squared error, median (range)",
          "train cross-entropy", "test squared error", "data passes", "steps", "failures"]


def plot(runs, path, title):
    """2 x 2 figure: squared error and cross-entropy against seconds and data passes, one
    colour per method and learning rate, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    colors = {group: f"C{i}" for i, group in enumerate(groups(runs))}
    for row, key in enumerate(("train_squared_error", "train_cross_entropy")):
        for col, x_key in enumerate(("seconds", "passes")):
            ax = axes[row, col]
            for (method, learning_rate), color in colors.items():
                mine = [r for r in runs if (r["method"], r["learning_rate"]) ==
                        (method, learning_rate)]
                for i, run in enumerate(mine):
                    ax.plot([p[x_key] for p in run["curve"]], [p[key] for p in run["curve"]],
                            color=color, alpha=0.8, marker=".",
                            label=f"{LABELS[method]}, lr {learning_rate:g}" if i == 0 else None)
            ax.set_yscale("log")
            if x_key == "passes":
                ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlim(left=0)
            ax.set_xlabel("training seconds (interleaved)" if x_key == "seconds"
                          else "passes through the training set")
            ax.set_ylabel("training " + key.split("_", 1)[1].replace("_", " ") + " per image")
            ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def title(settings):
    """The figure's title from a settings dictionary."""
    widths = "-".join(str(w) for w in [PIXELS] + list(settings["encoder"]))
    return (f"CURVES-like, {widths} autoencoder, {settings['num_train']} images, "
            f"{settings['budget_seconds']:g} s per run, {settings['seeds']} seed(s)")


def write_outputs(results, output_dir, figure_title):
    """``table.md``, ``curves.png`` and ``results.json`` (with its ``summary``) of the runs
    in ``results["runs"]``; prints the table. Returns ``results``."""
    os.makedirs(output_dir, exist_ok=True)
    rows, results["summary"] = summarize(results["runs"])
    reporting.print_table(HEADER, rows)
    with open(os.path.join(output_dir, "table.md"), "w") as f:
        f.write("| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER) + "\n")
        f.writelines("| " + " | ".join(r) + " |\n" for r in rows)
    plot(results["runs"], os.path.join(output_dir, "curves.png"), figure_title)
    return reporting.write_json(results, os.path.join(output_dir, "results.json"))


def reproduce(settings, output_dir):
    """Search, final runs, outputs; returns the results dictionary."""
    import keras

    keras.utils.set_random_seed(settings.data_seed)
    data = make_data(settings)
    best, trials = search(settings, data)
    runs = race([Run(method, best[method], seed, settings, data)
                 for seed in range(settings.seeds) for method in settings.methods],
                settings.budget_seconds, settings.evaluations)
    settings_dict = dataclasses.asdict(settings)
    settings_dict["grids"] = {k: list(v) for k, v in settings.grids}
    results = {"settings": settings_dict, "search": {"best": best, "trials": trials},
               "runs": [run.summary() for run in runs]}
    return write_outputs(results, output_dir, title(settings_dict))


def merge(paths, output_dir):
    """The runs of several ``results.json`` files in one table and figure (``--merge``)."""
    parts = []
    for path in paths:
        with open(path) as f:
            parts.append(json.load(f))
    results = {"merged": list(paths), "runs": [run for part in parts for run in part["runs"]]}
    return write_outputs(results, output_dir, title(parts[0]["settings"]) + ", merged")


def settings_from_flags(flag_values):
    """``QUICK`` under ``--quick``, else the ``Settings`` of the flags."""
    if flag_values.quick:
        return QUICK
    grids = tuple((m, tuple(float(v) for v in getattr(flag_values, f"{m}_grid")))
                  for m in METHODS)
    return Settings(
        num_train=flag_values.num_train, num_test=flag_values.num_test,
        data_seed=flag_values.data_seed,
        encoder=tuple(int(w) for w in flag_values.encoder), seeds=flag_values.seeds,
        search_seed=flag_values.search_seed, budget_seconds=flag_values.budget_seconds,
        search_budget_seconds=flag_values.search_budget_seconds,
        evaluations=flag_values.evaluations, grids=grids, batch_size=flag_values.batch_size,
        momentum=flag_values.momentum, hf_batch_size=flag_values.hf_batch_size,
        curvature_fraction=flag_values.curvature_fraction, damping=flag_values.damping,
        cg_max_iterations=flag_values.cg_max_iterations,
        preconditioner=flag_values.preconditioner, methods=tuple(flag_values.methods))


def main(argv):
    del argv
    if flags.FLAGS.merge:
        merge(flags.FLAGS.merge, flags.FLAGS.output_dir)
    else:
        reproduce(settings_from_flags(flags.FLAGS), flags.FLAGS.output_dir)


def define_flags():
    """Defines the flags (only when run as a script, so importing it defines none)."""
    d = Settings()
    flags.DEFINE_bool("quick", False, "CI smoke run: a 784-16-8-2 net, 64 images, ~1 s runs.")
    flags.DEFINE_string("output_dir", "/tmp/martens_curves", "Where results go.")
    flags.DEFINE_list("merge", [], "results.json files whose runs to table and plot "
                      "together (no training).")
    flags.DEFINE_integer("num_train", d.num_train, "Training images (paper: 20,000).")
    flags.DEFINE_integer("num_test", d.num_test, "Test images (paper: 10,000).")
    flags.DEFINE_integer("data_seed", d.data_seed, "Seed of the generated images.")
    flags.DEFINE_list("encoder", [str(w) for w in d.encoder], "Encoder widths, code last.")
    flags.DEFINE_integer("seeds", d.seeds, "Final runs per method (initial weights 0..n-1).")
    flags.DEFINE_integer("search_seed", d.search_seed, "Initial weights of the search runs.")
    flags.DEFINE_float("budget_seconds", d.budget_seconds, "Training seconds per final run.")
    flags.DEFINE_float("search_budget_seconds", d.search_budget_seconds,
                       "Training seconds per search run.")
    flags.DEFINE_integer("evaluations", d.evaluations, "Evaluations per final run.")
    flags.DEFINE_list("hessian_free_grid", [str(v) for v in d.grid("hessian_free")],
                      "HF step scales (learning rates) searched.")
    flags.DEFINE_list("adam_grid", [str(v) for v in d.grid("adam")], "Adam rates searched.")
    flags.DEFINE_list("sgd_momentum_grid", [str(v) for v in d.grid("sgd_momentum")],
                      "SGD+momentum rates searched.")
    flags.DEFINE_integer("batch_size", d.batch_size, "Mini-batch of Adam and SGD.")
    flags.DEFINE_float("momentum", d.momentum, "SGD momentum.")
    flags.DEFINE_integer("hf_batch_size", d.hf_batch_size, "HF gradient batch.")
    flags.DEFINE_float("curvature_fraction", d.curvature_fraction,
                       "Part of the HF batch for the Gauss-Newton products.")
    flags.DEFINE_float("damping", d.damping, "HF initial lambda (Martens' 45 / 784 pixels).")
    flags.DEFINE_integer("cg_max_iterations", d.cg_max_iterations, "CG cap (Martens: 250).")
    flags.DEFINE_list("methods", list(METHODS), "Methods to train (a subset of the three).")
    flags.DEFINE_bool("preconditioner", d.preconditioner,
                      "Martens' diagonal preconditioner (per-example gradients: slow).")


if __name__ == "__main__":
    define_flags()
    app.run(main)
