r"""What one train step of each optimizer communicates, and its time, on 1 and 2 replicas and
1 and 2 workers.

Every all-reduce of ``tf.distribute`` goes through ``strategy.extended.reduce_to`` or
``strategy.extended.batch_reduce_to`` (``ReplicaContext.all_reduce``, ``strategy.reduce``,
Keras's gradient all-reduce and log averaging, the guard's verdict, the closure's products).
`CommunicationCounter` wraps both methods of one strategy and adds, AT RUN TIME (in variables,
so a reduction inside a ``tf.while_loop`` counts once per iteration), the number of tensors
reduced and their bytes (one replica's copy: the payload each replica contributes).

Configurations (``--configs``): ``single`` (one device, nothing to reduce), ``mirrored``
(``MirroredStrategy`` on 2 logical CPU devices of this process), ``multi_worker``
(``MultiWorkerMirroredStrategy``, 2 processes of this script on loopback, one CPU replica
each; started by this script). Each optimizer trains the same MLP (``--inputs`` ->
``--width`` tanh -> 1, mse) on random data of global batch ``--batch_size``; after
``--warmup`` steps (tracing), ``--steps`` steps are timed and counted (not the reductions
of ``fit``'s start and of the epoch's end: the symbolic build's batch, the metrics' reads). Times are wall-clock on
a shared CPU machine: compare rows of one run, not runs.

    python scripts/benchmark_communication.py                 # the README table
    python scripts/benchmark_communication.py --quick         # a smoke run (CI)
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_diffusion as kd  # noqa: E402
from keras_diffusion import optimizers as kdo  # noqa: E402
from scripts import reporting  # noqa: E402

FLAGS = flags.FLAGS
OPTIMIZERS = ("sgd", "annealed", "gauss_newton", "hessian_free", "saddle_free",
              "gaussian_continuation", "entropy_sgd", "hj", "heat")
CONFIGS = ("single", "mirrored", "multi_worker")


def define_flags():
    """Defines the flags; called only when this file runs as a script."""
    flags.DEFINE_list("optimizers", list(OPTIMIZERS), f"Optimizers, of {OPTIMIZERS}.")
    flags.DEFINE_list("configs", list(CONFIGS), f"Configurations, of {CONFIGS}.")
    flags.DEFINE_bool("quick", False, "Tiny sizes and few steps (a smoke run).")
    flags.DEFINE_integer("inputs", 32, "Input features.", lower_bound=1)
    flags.DEFINE_integer("width", 64, "Hidden units.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 64, "Global batch size (even).", lower_bound=2)
    flags.DEFINE_integer("steps", 20, "Timed and counted steps.", lower_bound=1)
    flags.DEFINE_integer("warmup", 3, "Steps before (tracing).", lower_bound=1)
    flags.DEFINE_string("output", None, "Also write the results as JSON here.")
    flags.DEFINE_bool("explain", False, "Also print every reduce call as traced.")
    # Internal: a worker process of the multi_worker configuration.
    flags.DEFINE_list("worker_hosts", [], "Internal: the multi_worker cluster.")
    flags.DEFINE_integer("task_index", None, "Internal: this worker's index.")
    flags.DEFINE_string("worker_output", None, "Internal: where the chief writes JSON.")


class CommunicationCounter:
    """Counts, at run time, the tensors all-reduced by ``strategy`` and their bytes.

    Wraps ``strategy.extended.reduce_to`` and ``batch_reduce_to`` of this strategy object
    (public methods every all-reduce of ``tf.distribute`` goes through). ``reductions``
    counts tensors (a batch reduce of ``n`` tensors counts ``n``, even where TensorFlow
    packs them into fewer collectives), ``bytes`` their size on one replica. Make it outside
    ``strategy.scope()`` (its counters are plain variables); ``close()`` (or leaving a
    ``with`` block) restores the strategy's methods.
    """

    def __init__(self, strategy):
        self._strategy = strategy
        self.reductions = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.bytes = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.traced = []  # per reduce call, as traced: the reduced tensors' dtypes and shapes
        extended = strategy.extended
        reduce_to, batch_reduce_to = extended.reduce_to, extended.batch_reduce_to

        def counted_reduce_to(reduce_op, value, destinations, options=None):
            self._count(tf.nest.flatten(value))
            return reduce_to(reduce_op, value, destinations, options)

        def counted_batch_reduce_to(reduce_op, value_destination_pairs, options=None):
            self._count([v for value, _ in value_destination_pairs for v in tf.nest.flatten(value)])
            return batch_reduce_to(reduce_op, value_destination_pairs, options)

        extended.reduce_to = counted_reduce_to
        extended.batch_reduce_to = counted_batch_reduce_to
        self._originals = (reduce_to, batch_reduce_to)

    def close(self):
        """Gives the strategy its own methods back (traced functions keep the counting)."""
        extended = self._strategy.extended
        extended.reduce_to, extended.batch_reduce_to = self._originals

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _count(self, values):
        size = tf.constant(0, tf.int64)
        shapes = []
        for value in values:
            local = self._strategy.experimental_local_results(value)[0]
            local = tf.convert_to_tensor(local)
            size += tf.cast(tf.size(local), tf.int64) * local.dtype.size
            shapes.append(f"{local.dtype.name}{list(local.shape)}")
        self.traced.append(shapes)
        self.reductions.assign_add(len(values))
        self.bytes.assign_add(size)

    def reset(self):
        self.reductions.assign(0)
        self.bytes.assign(0)

    def read(self):
        return int(self.reductions.numpy()), int(self.bytes.numpy())


def make_optimizer(name):
    if name == "sgd":
        return keras.optimizers.SGD(0.01, momentum=0.9)
    makers = {
        "annealed": lambda: kdo.AnnealedStep(0.05, bandwidth=0.5),
        "gauss_newton": lambda: kdo.GaussNewton(damping=1.0, cg_max_iterations=10, cg_tol=1e-6),
        "hessian_free": lambda: kdo.HessianFree(cg_max_iterations=10, line_search_max_steps=3),
        "saddle_free": lambda: kdo.SaddleFreeNewton(lanczos_num_steps=5, line_search_steps=3),
        "gaussian_continuation": lambda: kdo.GaussianContinuation(
            keras.optimizers.Adam(0.001), variance=1e-2, seed=1),
        "entropy_sgd": lambda: kdo.EntropySGD(0.01, num_inner_steps=5, gamma=0.1, seed=1),
        "hj": lambda: kdo.HJ(0.01, num_inner_steps=5),
        "heat": lambda: kdo.HEAT(0.01, num_inner_steps=5, seed=1),
    }
    return makers[name]()


def parameter_count(inputs, width):
    return inputs * width + width + width + 1


def measure(strategy, name, inputs, width, batch_size, warmup, steps):
    """``{"reductions", "bytes", "seconds"}`` per step of optimizer ``name`` under ``strategy``."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    # One replica communicates nothing (the default strategy's reductions are no-ops).
    counter = CommunicationCounter(strategy) if strategy.num_replicas_in_sync > 1 else None
    with strategy.scope():
        model = kd.Sequential([keras.Input((inputs,)), keras.layers.Dense(width, "tanh"),
                               keras.layers.Dense(1)])
        model.compile(make_optimizer(name), "mse", jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size * 4, inputs)).astype("float32")
    y = np.tanh(x[:, :1]).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = data.with_options(options)
    timer = _StepTimer(counter, warmup, warmup + steps)
    model.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
    if counter:
        counter.close()
    reductions, nbytes = timer.counts
    return {"reductions": reductions / steps, "bytes": nbytes / steps,
            "seconds": timer.seconds / steps, "traced": counter.traced if counter else []}


class _StepTimer(keras.callbacks.Callback):
    """Times and counts steps ``warmup + 1 .. total`` of one epoch: the counter is reset
    after step ``warmup`` and read after step ``total`` (before the epoch's end reads the
    metrics)."""

    def __init__(self, counter, warmup, total):
        super().__init__()
        self.counter, self.warmup, self.total = counter, warmup, total
        self.start = self.seconds = None
        self.counts = (0, 0)

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.warmup:
            if self.counter:
                self.counter.reset()
            self.start = time.perf_counter()
        elif batch + 1 == self.total:
            self.seconds = time.perf_counter() - self.start
            if self.counter:
                self.counts = self.counter.read()


def run_all(strategy, config, settings, optimizers):
    return {
        name: dict(measure(strategy, name, **settings), config=config,
                   replicas=strategy.num_replicas_in_sync)
        for name in optimizers
    }


def free_ports(count):
    """``count`` distinct TCP ports free on localhost now (for a loopback cluster)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(argv_flags):
    """Starts 2 worker processes of this script; returns the chief's results."""
    hosts = ",".join(f"localhost:{port}" for port in free_ports(2))
    with tempfile.TemporaryDirectory() as directory:
        output = os.path.join(directory, "chief.json")
        processes = [
            subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), *argv_flags,
                 f"--worker_hosts={hosts}", f"--task_index={i}", f"--worker_output={output}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for i in range(2)
        ]
        for process in processes:
            out, _ = process.communicate()
            if process.returncode:
                raise RuntimeError(f"A multi_worker worker failed:\n{out[-3000:]}")
        with open(output) as f:
            return json.load(f)


def print_results(results, parameters):
    print(f"MLP with {parameters} weights ({parameters * 4} bytes of float32 gradient); per step:")
    reporting.print_table(
        ["optimizer", "config", "replicas", "all-reduced tensors", "bytes reduced", "step ms"],
        [[name, row["config"], row["replicas"], f"{row['reductions']:.1f}",
          f"{row['bytes']:.0f}", f"{1000 * row['seconds']:.1f}"]
         for name, rows in results.items() for row in rows],
    )


def check_flags(optimizers, configs, batch_size):
    """Raises ValueError naming a bad flag value and the choices."""
    for flag, values, choices in (("optimizers", optimizers, OPTIMIZERS),
                                  ("configs", configs, CONFIGS)):
        if not values or any(v not in choices for v in values):
            raise ValueError(f"--{flag} entries must be of {choices}, got {values}.")
    if batch_size % 2:
        raise ValueError(f"--batch_size must be even (2 replicas), got {batch_size}.")


def main(argv):
    del argv
    try:
        check_flags(FLAGS.optimizers, FLAGS.configs, FLAGS.batch_size)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    quick = dict(inputs=4, width=8, batch_size=8, warmup=1, steps=2)
    settings = quick if FLAGS.quick else dict(
        inputs=FLAGS.inputs, width=FLAGS.width, batch_size=FLAGS.batch_size,
        warmup=FLAGS.warmup, steps=FLAGS.steps)

    if FLAGS.worker_hosts:  # a worker of the multi_worker configuration
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": FLAGS.worker_hosts}), task_type="worker",
            task_id=FLAGS.task_index)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        results = run_all(strategy, "multi_worker", settings, FLAGS.optimizers)
        if FLAGS.task_index == 0:
            with open(FLAGS.worker_output, "w") as f:
                json.dump(results, f)
        return

    # Two logical CPU devices for the mirrored configuration, before TensorFlow starts.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    by_config = {}
    if "multi_worker" in FLAGS.configs:  # first: the workers run while nothing else does
        forwarded = [f"--optimizers={','.join(FLAGS.optimizers)}"]
        by_config["multi_worker"] = run_workers(forwarded + [f"--{k}={v}" for k, v in settings.items()])
    if "single" in FLAGS.configs:
        by_config["single"] = run_all(tf.distribute.get_strategy(), "single", settings, FLAGS.optimizers)
    if "mirrored" in FLAGS.configs:
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        by_config["mirrored"] = run_all(mirrored, "mirrored", settings, FLAGS.optimizers)
    results = {
        name: [by_config[c][name] for c in CONFIGS if c in by_config]
        for name in FLAGS.optimizers
    }
    parameters = parameter_count(settings["inputs"], settings["width"])
    print_results(results, parameters)
    if FLAGS.explain:
        for name, rows in results.items():
            for row in rows:
                print(f"{name} {row['config']}: reduce calls as traced:")
                for call in row["traced"]:
                    print("   ", ", ".join(call))
    reporting.write_json({"parameters": parameters, "settings": settings, "results": results},
                         FLAGS.output)


if __name__ == "__main__":
    define_flags()
    app.run(main)
