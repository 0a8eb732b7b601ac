"""Trains any task with any model builder, optimizer and sigma schedule, and compares runs.

The defaults run the comparison of Mobahi (2016), sec. 7 / Figure 6: a 10-unit erf RNN on the
adding task (T = 10, 1000 training and 100 test sequences, ``tfds.load("adding_problem/
mobahi")``), trained once by diffusion (the diffused cost of sec. 4.3, sigma lowered to 0 by a
schedule, Algorithm 1) and once plainly (``sgd``: sigma = 0, no penalty), same architecture
and initial weights. After every epoch a run records its test error with the undiffused
network (sigma = 0): the mean squared error for regression, the error rate for
classification, the squared reconstruction error for the autoencoder.

Runs: every ``--methods`` entry (``diffusion``, ``sgd``) with every ``--optimizers`` entry
(Keras optimizers by name, ``annealed``, ``gauss_newton``: ``models/optimizers.py``), named
by the method, the optimizer, or both when both vary. Tasks (``--task``, ``models/tasks.py``):
adding, long_adding, the pathological tasks, digits, mnist1d, mnist, fashion_mnist, cifar10,
curves; models (``--model``, ``models/networks.py``): diffused_rnn, rnn, mlp.

Writes into ``--output_dir``:

* ``summary.txt`` / ``summary.json``: epochs each run needs to reach ``--target_error``,
  final test error, seconds; ``test_error.csv`` and ``test_error.png``: the curves;
* per run, ``<run>/``: ``logs/`` (TensorBoard: loss, metrics, test error, sigma, the
  optimizer's diagnostics and the curvature monitor, as keys of the fit logs),
  ``history.csv``, ``model.keras`` and ``backup/`` (resume with ``--resume`` after a kill).

Usage:
  python scripts/train.py --output_dir=/tmp/adding
  python scripts/train.py --flagfile=scripts/configs/curves_gauss_newton.cfg
  python scripts/train.py --task=digits --model=mlp --methods=sgd --optimizers=sgd,gauss_newton
  python scripts/train.py --schedule=staged --sigma_stages=1,0.5,0.25,0 --sigma_epochs=5
"""

import csv
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time

from absl import app, flags

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_diffusion  # noqa: E402
from keras_diffusion import validation  # noqa: E402
from keras_diffusion.datasets import pipelines  # noqa: E402
from models import builders, networks, optimizers, tasks  # noqa: E402

METHODS = ("diffusion", "sgd")
SCHEDULES = ("linear", "geometric", "polynomial", "staged", "constant")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# The backup of --resume: Keras's, resuming at the epoch of the last backup (the pipeline's
# start_epoch follows it); kd.callbacks.BackupAndRestore would resume at the batch.
BackupAndRestore = keras.callbacks.BackupAndRestore


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One run: a method, an optimizer and their hyperparameters.

    ``method``: ``"sgd"`` trains the plain network (sigma = 0, no penalty; Mobahi's SGD
    baseline, whatever the optimizer); ``"diffusion"`` trains the diffused cost while
    ``schedule`` lowers sigma from ``sigma0`` (``keras_diffusion.callbacks``): ``linear``
    reaches 0 after ``sigma_epochs`` epochs; ``geometric`` multiplies by ``sigma_rate`` per
    epoch; ``polynomial`` is ``sigma0 / (1 + k)**sigma_gamma``; both snap to 0 below
    ``sigma_cutoff``; ``staged`` runs ``sigma_stages`` (ending at 0) for ``sigma_epochs``
    epochs each; ``constant`` keeps ``sigma0``. ``penalty`` is lambda (sec. 4.1).
    ``optimizer`` names an entry of ``models.optimizers.OPTIMIZERS``; ``learning_rate``
    ``None`` is its default.
    """

    method: str = "diffusion"
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    schedule: str = "linear"
    sigma0: float = 1.0
    sigma_epochs: int = 30
    sigma_rate: float = 0.9
    sigma_gamma: float = 1.0
    sigma_cutoff: float = 0.0
    sigma_stages: tuple = ()
    penalty: float = 1e-4
    sigma_floor: float = 0.01
    momentum: float = 0.0
    clipnorm: float = 0.0
    damping: float = 1e-3
    cg_max_iterations: int = 50

    def __post_init__(self):
        validation.one_of("method", self.method, METHODS)
        validation.one_of("optimizer", self.optimizer, tuple(optimizers.OPTIMIZERS))
        validation.one_of("schedule", self.schedule, SCHEDULES)
        self.hyperparameters()  # checks learning_rate, momentum, clipnorm, damping, ...
        validation.positive_int("sigma_epochs", self.sigma_epochs)
        for name in ("sigma0", "sigma_cutoff", "penalty", "sigma_gamma"):
            validation.nonnegative(name, getattr(self, name))
        validation.fraction("sigma_rate", self.sigma_rate)
        if self.sigma_stages:  # validated even where unused, naming the bad value
            keras_diffusion.callbacks.StagedSigma(list(self.sigma_stages), epochs_per_stage=1)

    def hyperparameters(self):
        return optimizers.Hyperparameters(
            learning_rate=self.learning_rate, momentum=self.momentum, clipnorm=self.clipnorm,
            sigma_floor=self.sigma_floor, damping=self.damping,
            cg_max_iterations=self.cg_max_iterations,
        )

    def sigma_callback(self):
        """The ``keras_diffusion.callbacks`` schedule of this method (None for SGD/constant)."""
        if self.method == "sgd" or self.schedule == "constant":
            return None
        callbacks = keras_diffusion.callbacks
        if self.schedule == "linear":
            return callbacks.LinearSigma(self.sigma0, duration=self.sigma_epochs)
        if self.schedule == "geometric":
            return callbacks.GeometricSigma(self.sigma0, self.sigma_rate, cutoff=self.sigma_cutoff)
        if self.schedule == "polynomial":
            return callbacks.PolynomialSigma(
                self.sigma0, self.sigma_gamma, cutoff=self.sigma_cutoff
            )
        stages = self.sigma_stages or (self.sigma0, self.sigma0 / 2, self.sigma0 / 4, 0.0)
        return callbacks.StagedSigma(list(stages), epochs_per_stage=self.sigma_epochs)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What is trained on, with which model, for how long, and how progress is measured.

    ``units``/``hidden``/``activation``/``init`` configure ``model`` (``models.networks``);
    ``task``/``length``/``num_train``/``num_test``/``image_size``/``data_dir``/``download``
    the data (``models.tasks``); ``seed`` both, and the shuffle order.
    """

    task: str = "adding"
    length: int = None
    epochs: int = 150
    batch_size: int = 50
    seed: int = 0
    model: str = "diffused_rnn"
    units: int = 10
    hidden: tuple = (100,)
    activation: str = "erf"
    init: str = "basic_tanh"
    target_error: float = 0.02
    stop_at_target: bool = False
    validation_fraction: float = 0.0
    num_train: int = None
    num_test: int = None
    image_size: tuple = None
    data_dir: str = None
    download: bool = False
    strategy: str = "default"
    worker_hosts: tuple = ()
    task_index: int = None
    tpu: str = None
    curvature_every: int = 0
    verbose: int = 1

    def __post_init__(self):
        validation.one_of("task", self.task, tasks.TASKS)
        check_strategy(self.strategy, self.worker_hosts, self.task_index, self.tpu)
        for name in ("epochs", "batch_size"):
            validation.positive_int(name, getattr(self, name))
        validation.integer("curvature_every", self.curvature_every)
        validation.positive("target_error", self.target_error)
        self.task_config().dataset_config()  # checks the length of the sequence tasks
        self.model_config()

    def task_config(self):
        return tasks.TaskConfig(
            self.task, length=self.length, num_train=self.num_train, num_test=self.num_test,
            seed=self.seed, validation_fraction=self.validation_fraction,
            image_size=self.image_size, data_dir=self.data_dir, download=self.download,
        )

    def model_config(self):
        return networks.ModelConfig(
            self.model, units=self.units, hidden=tuple(self.hidden),
            activation=self.activation, init=self.init, seed=self.seed,
        )

    def make_task(self):
        return load_task(self.task_config())


def check_strategy(strategy, worker_hosts=(), task_index=None, tpu=None):
    """Errors in the strategy settings, naming the flag and the fix (no strategy is made).

    ``multi_worker``: ``worker_hosts`` (``host:port`` of every worker, the same list on
    each) with this worker's ``task_index``, or neither and a ``TF_CONFIG`` environment
    variable. ``tpu``: ``tpu`` names the TPU for ``TPUClusterResolver`` (``local`` on a TPU
    VM; default ``local``). Other strategies take none of them.
    """
    validation.one_of("strategy", strategy, STRATEGIES)
    if strategy != "multi_worker" and (worker_hosts or task_index is not None):
        raise ValueError(
            f"--worker_hosts/--task_index configure --strategy=multi_worker, got "
            f"--strategy={strategy!r}; drop them or use --strategy=multi_worker."
        )
    if strategy != "tpu" and tpu:
        raise ValueError(f"--tpu={tpu!r} needs --strategy=tpu, got --strategy={strategy!r}.")
    if strategy != "multi_worker":
        return
    if not worker_hosts:
        if task_index is not None:
            raise ValueError("--task_index needs --worker_hosts=HOST:PORT,HOST:PORT,...")
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy=multi_worker needs the cluster: --worker_hosts=HOST:PORT,... and "
                "--task_index=I (this worker's position in the list), or a TF_CONFIG "
                "environment variable."
            )
        return
    for host in worker_hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(
                f"--worker_hosts entries must be HOST:PORT, got {host!r} in {list(worker_hosts)}."
            )
    if task_index is None:
        raise ValueError(
            f"--worker_hosts needs --task_index, this worker's position in {list(worker_hosts)}."
        )
    validation.integer("task_index", task_index)
    if task_index >= len(worker_hosts):
        raise ValueError(
            f"--task_index={task_index} is beyond the {len(worker_hosts)} --worker_hosts "
            f"{list(worker_hosts)}; use 0 to {len(worker_hosts) - 1}."
        )


@functools.lru_cache(maxsize=1)
def make_strategy(strategy, worker_hosts=(), task_index=None, tpu=None):
    """The ``tf.distribute`` strategy of the flags, made once per process.

    ``MultiWorkerMirroredStrategy`` must be made before TensorFlow runs any op (``main``
    makes it first) and only once: every run of a comparison shares it.
    """
    check_strategy(strategy, worker_hosts, task_index, tpu)
    if strategy == "default":
        return tf.distribute.get_strategy()
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if strategy == "multi_worker":
        resolver = None
        if worker_hosts:
            resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
                tf.train.ClusterSpec({"worker": list(worker_hosts)}),
                task_type="worker", task_id=task_index,
            )
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    tpu = tpu or "local"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, OSError, tf.errors.OpError) as error:
        raise ValueError(
            f"--strategy=tpu found no TPU at --tpu={tpu!r}: {str(error).splitlines()[0]} "
            "On a TPU VM use --tpu=local, elsewhere the TPU's name or grpc://HOST:PORT; "
            "without a TPU use --strategy=default or --strategy=mirrored."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def worker_output_dir(output_dir, strategy):
    """``output_dir`` on the chief; ``output_dir/worker_<task id>`` on the other workers of a
    multi-worker run (each writes its own logs, backup and model, as the chief's)."""
    if strategy.extended.should_checkpoint:
        return output_dir
    return os.path.join(output_dir, f"worker_{strategy.cluster_resolver.task_id}")


@functools.lru_cache(maxsize=8)
def load_task(task_config):
    """``models.tasks.make_task``, once per configuration and process."""
    return tasks.make_task(task_config)


def check_run(run, spec):
    """Errors a run would meet, raised before any training (task, model and method)."""
    pathological = keras_diffusion.datasets.pathological
    task_config = run.task_config()
    steps = task_config.pathological_task().target_steps if run.task in pathological.TASKS else 1
    sequence = run.task in ("adding", "long_adding") + pathological.TASKS
    networks.check_compatible(run.model_config(), run.task, sequence, steps)
    if spec.method == "diffusion" and run.model not in networks.DIFFUSED:
        raise ValueError(
            f"--methods=diffusion needs a model with a bandwidth {networks.DIFFUSED}, got "
            f"--model={run.model!r}; use --methods=sgd."
        )


class ErrorCurve(keras.callbacks.Callback):
    """Logs the test error after every epoch, with the undiffused network (sigma = 0).

    ``arrays``: ``[(x, y), ...]`` (``Task.arrays[split]``); ``error``: ``Task.error``. One
    compiled forward function per input length instead of ``model.predict``, which costs
    more than a training epoch here. The value goes into ``logs[key]`` (History,
    TensorBoard, CSV) and ``self.errors``. Training stops once the error is <= ``stop_at``
    (if given) or not finite (a diverged run).
    """

    def __init__(self, arrays, error, key="test_error", stop_at=None):
        super().__init__()
        self.arrays, self.error_fn, self.key, self.stop_at = arrays, error, key, stop_at
        self.errors = []
        self._forward = None

    def error(self):
        if self._forward is None:
            model = self.model
            self._forward = tf.function(lambda x: model(x, training=False))
        with builders.undiffused(self.model):
            predictions = [self._forward(x).numpy() for x, _ in self.arrays]
        targets = np.concatenate([y for _, y in self.arrays])
        return self.error_fn(np.concatenate(predictions), targets)

    def on_epoch_end(self, epoch, logs=None):
        error = self.error()
        self.errors.append(error)
        if logs is not None:
            logs[self.key] = error
        if not math.isfinite(error) or (self.stop_at is not None and error <= self.stop_at):
            self.model.stop_training = True


def build_model(run, spec, task, steps_per_epoch=1, distributed=False):
    """The compiled model of ``spec`` for ``task`` (build it in the strategy's scope).

    ``distributed``: compiled for several replicas, where neither XLA (``jit_compile``) nor
    several steps per execution run with a distributed dataset (TF 2.21 / Keras 3.15:
    "You must feed a value for placeholder tensor").
    """
    model = networks.build(run.model_config(), task, spec.method, spec.sigma0, spec.penalty)
    optimizer = optimizers.make(spec.optimizer, spec.hyperparameters(), model)
    closure = optimizers.needs_closure(optimizer)
    if closure:
        model = keras_diffusion.Model(model.inputs, model.outputs, name=model.name)
    # One compiled call runs a whole epoch: the per-step dispatch of fit would dominate.
    model.compile(
        optimizer=optimizer,
        loss=task.loss(),
        metrics=["accuracy"] if task.kind == "classification" else None,
        jit_compile=not (closure or distributed),
        steps_per_execution=1 if distributed else steps_per_epoch,
    )
    return model


def _resume_epoch(backup_dir):
    """The epoch Keras's BackupAndRestore resumes at (0 without a backup)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["epoch"])


def _truncate_csv(path, epochs):
    """Keeps the header and the first ``epochs`` rows of a History CSV (the epochs a backup
    holds), so a resumed run appends where its backup ends."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(rows[: epochs + 1]) + "\n")


def _logged_errors(path, key):
    with open(path) as f:
        return [float(row[key]) for row in csv.DictReader(f)]


def train_method(run, spec, split="test", run_dir=None, resume=False, callbacks=(),
                 strategy=None):
    """Trains one run; returns its per-epoch error on ``split`` as a numpy array.

    Training uses the training split (its first part when ``run.validation_fraction > 0``,
    then ``split="validation"`` measures the error for hyperparameter search). With
    ``run_dir`` it writes TensorBoard logs, ``history.csv``, ``model.keras`` and a backup
    there; ``resume`` continues from the backup (the returned curve then covers all epochs,
    read back from ``history.csv``). ``callbacks`` run after the script's own; ``strategy``
    (a ``tf.distribute.Strategy``) replaces the one ``run.strategy`` names.
    """
    check_run(run, spec)
    keras.utils.set_random_seed(run.seed)
    task = run.make_task()
    strategy = strategy or make_strategy(run.strategy, run.worker_hosts, run.task_index, run.tpu)
    distributed = strategy.num_replicas_in_sync > 1 or run.strategy != "default"
    steps = pipelines.steps_per_epoch(task.num_train, run.batch_size, drop_remainder=distributed)
    extra, start_epoch = list(callbacks), 0
    if run_dir is not None:
        backup = os.path.join(run_dir, "backup")
        if not resume:
            shutil.rmtree(run_dir, ignore_errors=True)
        start_epoch = _resume_epoch(backup)
        _truncate_csv(os.path.join(run_dir, "history.csv"), start_epoch)
    batches = functools.partial(
        pipelines.batches, task.train, run.batch_size, training=True, seed=run.seed,
        start_epoch=start_epoch, drop_remainder=distributed,
        same_length=task.config.name in ("addition", "multiplication"),
    )
    with strategy.scope():
        model = build_model(run, spec, task, steps, distributed)
    if distributed:
        data = strategy.distribute_datasets_from_function(
            lambda context: batches(input_context=context)
        )
    else:
        data = batches()
    curve = ErrorCurve(task.arrays[split], task.error, key=f"{split}_error",
                       stop_at=run.target_error if run.stop_at_target else None)
    callbacks = [c for c in (spec.sigma_callback(), curve) if c is not None]
    if run.curvature_every:
        x, y = next(iter(pipelines.batches(task.train, run.batch_size)))
        callbacks.append(keras_diffusion.CurvatureMonitor((x, y), every=run.curvature_every))
    if run_dir is not None:  # after every callback that writes into the logs
        callbacks += [
            keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False),
            keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
            BackupAndRestore(backup),
        ]
    callbacks += extra
    model.fit(data, epochs=run.epochs, steps_per_epoch=steps, callbacks=callbacks,
              verbose=run.verbose, shuffle=False)  # the pipeline shuffles, seeded per epoch
    if run_dir is None:
        return np.array(curve.errors)
    model.save(os.path.join(run_dir, "model.keras"))
    return np.array(_logged_errors(os.path.join(run_dir, "history.csv"), f"{split}_error"))


def epochs_to_reach(errors, target):
    """The first epoch (1-based) whose error is <= ``target``, or None if none is."""
    hits = np.flatnonzero(np.asarray(errors) <= target)
    return int(hits[0]) + 1 if hits.size else None


def run_names(specs):
    """Each run's name: its method, its optimizer, or ``method-optimizer`` if both vary."""
    methods = {s.method for s in specs}
    names = {s.optimizer for s in specs}
    if len(names) == 1:
        return [s.method for s in specs]
    if len(methods) == 1:
        return [s.optimizer for s in specs]
    return [f"{s.method}-{s.optimizer}" for s in specs]


def train_and_evaluate(run, specs, output_dir, resume=False):
    """Trains every run of ``specs`` and writes the summary, curves and plot.

    Returns:
        ``{name: {"epochs_to_target": int | None, "final_test_error": float,
        "test_errors": [...], "seconds": float, "hyperparameters": {...}}}``.
    """
    for spec in specs:  # every flag error before any training
        check_run(run, spec)
    os.makedirs(output_dir, exist_ok=True)
    results = {}
    for name, spec in zip(run_names(specs), specs):
        print(f"== {name}: {spec}")
        start = time.time()
        errors = train_method(run, spec, run_dir=os.path.join(output_dir, name), resume=resume)
        results[name] = {
            "epochs_to_target": epochs_to_reach(errors, run.target_error),
            "final_test_error": float(errors[-1]),
            "test_errors": errors.tolist(),
            "seconds": time.time() - start,
            "hyperparameters": dataclasses.asdict(spec),
        }
    summary = summary_table(results, run)
    print(summary)
    with open(os.path.join(output_dir, "summary.txt"), "w") as f:
        f.write(summary + "\n")
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump({"run": dataclasses.asdict(run), "results": results}, f, indent=1)
    write_curves(results, os.path.join(output_dir, "test_error.csv"))
    plot_curves(results, run, os.path.join(output_dir, "test_error.png"))
    return results


def _title(run):
    length = f" (T = {run.length})" if run.length else ""
    return f"Task {run.task}{length}, model {run.model}, batch size {run.batch_size}"


def summary_table(results, run):
    lines = [
        f"{_title(run)}, seed {run.seed}: epochs to reach test error {run.target_error}",
        "| run | epochs to target | final test error | seconds |",
        "|---|---|---|---|",
    ]
    for name, result in results.items():
        reached = result["epochs_to_target"]
        reached = f"> {len(result['test_errors'])}" if reached is None else str(reached)
        lines.append(
            f"| {name} | {reached} | {result['final_test_error']:.4f} | "
            f"{result['seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_curves(results, path):
    names = list(results)
    longest = max(len(results[m]["test_errors"]) for m in names)
    with open(path, "w") as f:
        f.write("epoch," + ",".join(names) + "\n")
        for epoch in range(longest):
            row = [
                f"{results[m]['test_errors'][epoch]:.6g}"
                if epoch < len(results[m]["test_errors"])
                else ""
                for m in names
            ]
            f.write(f"{epoch + 1}," + ",".join(row) + "\n")


def plot_curves(results, run, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
    for name, result in results.items():
        errors = result["test_errors"]
        axes.plot(range(1, len(errors) + 1), errors, label=name)
    axes.axhline(
        run.target_error, color="gray", linestyle="--", label=f"target {run.target_error}"
    )
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("test error (sigma = 0)")
    axes.set_title(_title(run))
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags, in one place; ``configs_from_flags`` validates them (never mutated).

    Called only when this file runs as a script, so importing ``scripts.train`` (e.g. from
    ``reproduce_mobahi_figure6.py``, which has flags of its own) defines no flags.
    """
    flags.DEFINE_enum("task", "adding", tasks.TASKS, "Task (models/tasks.py).")
    flags.DEFINE_integer("length", None, "Sequence length T (default: the task's).")
    flags.DEFINE_integer("num_train", None, "Generated training examples (default: builder's).")
    flags.DEFINE_integer("num_test", None, "Generated test examples (default: builder's).")
    flags.DEFINE_list("image_size", [], "Downscale images to HEIGHT,WIDTH (e.g. 10,10).")
    flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's).")
    flags.DEFINE_bool("download", False, "Download a missing real data set (needs network).")
    flags.DEFINE_enum("model", "diffused_rnn", networks.MODELS, "Model (models/networks.py).")
    flags.DEFINE_integer("units", 10, "Hidden units of the recurrent models.")
    flags.DEFINE_list("hidden", ["100"], "Hidden widths of --model=mlp.")
    flags.DEFINE_string("activation", "erf", "Hidden activation (diffused_rnn, mlp).")
    flags.DEFINE_string("init", "basic_tanh", "Initialization of --model=rnn.")
    flags.DEFINE_list("methods", list(METHODS), "diffusion and/or sgd (the plain network).")
    flags.DEFINE_list("optimizers", ["sgd"], "Optimizers to compare (models/optimizers.py).")
    flags.DEFINE_float("learning_rate", None, "Learning rate (default: each optimizer's).")
    flags.DEFINE_float("momentum", 0.0, "sgd momentum.")
    flags.DEFINE_float("clipnorm", 0.0, "Global gradient-norm clipping (0: none).")
    flags.DEFINE_float("damping", 1e-3, "gauss_newton: Tikhonov damping.")
    flags.DEFINE_integer("cg_max_iterations", 50, "gauss_newton: CG iterations per step.")
    flags.DEFINE_float("sigma_floor", 0.01, "annealed: the step uses max(sigma, sigma_floor).")
    flags.DEFINE_enum("schedule", "linear", SCHEDULES, "Sigma schedule of diffusion.")
    flags.DEFINE_float("sigma0", 1.0, "Initial sigma.")
    flags.DEFINE_integer("sigma_epochs", 30, "linear: epochs to reach 0; staged: epochs per stage.")
    flags.DEFINE_float("sigma_rate", 0.9, "geometric: factor per epoch.")
    flags.DEFINE_float("sigma_gamma", 1.0, "polynomial: exponent.")
    flags.DEFINE_float("sigma_cutoff", 0.0, "geometric/polynomial: sigma is 0 below this value.")
    flags.DEFINE_list(
        "sigma_stages", [], "staged: sigma_0 > ... > 0 (default sigma0 * (1, 1/2, 1/4, 0))."
    )
    flags.DEFINE_float("penalty", 1e-4, "lambda of sec. 4.1 (diffusion only).")
    flags.DEFINE_integer("epochs", 150, "Training epochs per run.")
    flags.DEFINE_integer("batch_size", 50, "Global minibatch size (10 and 50 in Figure 6).")
    flags.DEFINE_integer("seed", 0, "Seed of the data, initial weights and shuffling.")
    flags.DEFINE_float("target_error", 0.02, "Test error whose first epoch is reported.")
    flags.DEFINE_bool("stop_at_target", False, "Stop a run once it reaches --target_error.")
    flags.DEFINE_enum(
        "strategy", "default", list(STRATEGIES),
        "tf.distribute strategy: default (one device), mirrored (every local GPU), "
        "multi_worker (MultiWorkerMirroredStrategy: --worker_hosts and --task_index, or "
        "TF_CONFIG; start the same command on every worker), tpu (TPUStrategy, --tpu).",
    )
    flags.DEFINE_list(
        "worker_hosts", [],
        "multi_worker: HOST:PORT of every worker, the same list on each (builds the cluster "
        "instead of TF_CONFIG).",
    )
    flags.DEFINE_integer("task_index", None, "multi_worker: this worker's index in --worker_hosts.")
    flags.DEFINE_string(
        "tpu", None, "tpu: the TPU for TPUClusterResolver (default 'local', a TPU VM; or a "
        "name or grpc://HOST:PORT).",
    )
    flags.DEFINE_integer("curvature_every", 0, "CurvatureMonitor every N epochs (0: off).")
    flags.DEFINE_bool("resume", False, "Continue the runs from their backups in --output_dir.")
    flags.DEFINE_integer("verbose", 1, "Keras fit verbosity (1: progress bar).")
    flags.DEFINE_string("output_dir", "/tmp/keras_diffusion_adding", "Where results are written.")


def _numbers(flag, values, kind):
    try:
        return tuple(kind(v) for v in values)
    except ValueError:
        raise ValueError(f"--{flag} must list {kind.__name__} numbers, got {values!r}.") from None


def configs_from_flags():
    """The validated ``(RunConfig, [MethodSpec, ...])`` described by the flags."""
    image_size = _numbers("image_size", FLAGS.image_size, int) or None
    run = RunConfig(
        task=FLAGS.task, length=FLAGS.length, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
        seed=FLAGS.seed, model=FLAGS.model, units=FLAGS.units,
        hidden=_numbers("hidden", FLAGS.hidden, int), activation=FLAGS.activation,
        init=FLAGS.init, target_error=FLAGS.target_error, stop_at_target=FLAGS.stop_at_target,
        num_train=FLAGS.num_train, num_test=FLAGS.num_test, image_size=image_size,
        data_dir=FLAGS.data_dir, download=FLAGS.download, strategy=FLAGS.strategy,
        worker_hosts=tuple(FLAGS.worker_hosts), task_index=FLAGS.task_index, tpu=FLAGS.tpu,
        curvature_every=FLAGS.curvature_every, verbose=FLAGS.verbose,
    )
    for flag, choices in (("methods", METHODS), ("optimizers", tuple(optimizers.OPTIMIZERS))):
        if not FLAGS[flag].value:
            raise ValueError(f"--{flag} must name at least one of {choices}.")
        for value in FLAGS[flag].value:
            validation.one_of(f"--{flag} entry", value, choices)
    specs = [
        MethodSpec(
            method=method, learning_rate=FLAGS.learning_rate, optimizer=optimizer,
            schedule=FLAGS.schedule, sigma0=FLAGS.sigma0, sigma_epochs=FLAGS.sigma_epochs,
            sigma_rate=FLAGS.sigma_rate, sigma_gamma=FLAGS.sigma_gamma,
            sigma_cutoff=FLAGS.sigma_cutoff,
            sigma_stages=_numbers("sigma_stages", FLAGS.sigma_stages, float),
            penalty=FLAGS.penalty, sigma_floor=FLAGS.sigma_floor, momentum=FLAGS.momentum,
            clipnorm=FLAGS.clipnorm, damping=FLAGS.damping,
            cg_max_iterations=FLAGS.cg_max_iterations,
        )
        for method in FLAGS.methods
        for optimizer in FLAGS.optimizers
    ]
    for spec in specs:
        check_run(run, spec)
    return run, specs


def main(argv):
    del argv
    tfds.disable_progress_bar()  # data sets are generated on first use: keep the log readable
    try:
        run, specs = configs_from_flags()
        # Before any other TensorFlow op (multi_worker configures the collectives).
        strategy = make_strategy(run.strategy, run.worker_hosts, run.task_index, run.tpu)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    output_dir = worker_output_dir(FLAGS.output_dir, strategy)
    train_and_evaluate(run, specs, output_dir, resume=FLAGS.resume)


if __name__ == "__main__":
    define_flags()
    app.run(main)
