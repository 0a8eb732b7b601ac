r"""Per-step cost of EntropySGD, HJ and HEAT over plain SGD on the same model, in one run.

Every train step of ``keras_diffusion.optimizers.EntropySGD``/``HJ``/``HEAT`` evaluates ONE
mini-batch gradient, as an SGD step does (the ``L`` gradient evaluations of an outer step are
``L`` train steps; ``gradient_evaluations`` counts them), so the time per train step compared
with SGD's is the overhead per gradient evaluation. It consists of the train step's forward
pass at the anchor ``x`` (the closure train step logs the anchor's loss and keeps BatchNorm's
statistics on ``x``, see ``keras_diffusion/optimizers/local_entropy.py``) and the update
arithmetic on ``x, y, <y>, z``. The table gives, for each optimizer, the median time per step,
its ratio to SGD's (Nesterov momentum 0.9, ``keras.optimizers.SGD``), and the ratio with the
measured time of one forward pass (``training=True``) subtracted. Times are process CPU time
with one TensorFlow thread (``--threads``), so that other jobs on the machine do not distort
the ratios.

The model is mnistfc (Chaudhari et al. 2018, sec. 8.2.1: 784 -> drop -> [fc 1024 -> ReLU -> BN
-> drop] x 2 -> fc 10) on random data, batch 128.

    python scripts/benchmark_local_entropy.py            # mnistfc, batch 128
    python scripts/benchmark_local_entropy.py --quick    # tiny sizes, seconds
"""

import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
OPTIMIZERS = ("sgd", "entropy_sgd", "hj", "heat")


def define_flags():
    """Defines the flags; called only when this file runs as a script."""
    flags.DEFINE_bool("quick", False, "Tiny network and few steps (a smoke run).")
    flags.DEFINE_integer("width", 1024, "Hidden units (mnistfc: 1024).", lower_bound=1)
    flags.DEFINE_integer("inputs", 784, "Input size (MNIST: 784).", lower_bound=1)
    flags.DEFINE_integer("batch_size", 128, "Batch size (paper: 128).", lower_bound=1)
    flags.DEFINE_integer("steps", 50, "Train steps per timed repeat.", lower_bound=1)
    flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).", lower_bound=1)
    flags.DEFINE_bool("jit_compile", False, "Compile the train steps with XLA.")
    flags.DEFINE_integer("threads", 1, "TensorFlow intra- and inter-op threads.", lower_bound=1)


def _optimizer(name):
    import keras

    from keras_diffusion import optimizers

    if name == "sgd":
        return keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)
    return {"entropy_sgd": optimizers.EntropySGD, "hj": optimizers.HJ, "heat": optimizers.HEAT}[
        name
    ](0.01, gamma=0.1 if name != "heat" else 1e-4)


def _model(inputs, width):
    from scripts import reproduce_chaudhari_table1

    return reproduce_chaudhari_table1.build_mnistfc(inputs, width)


def _median(fn, repeats):
    fn()  # warm-up: traces and compiles
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def run(inputs, width, batch_size, steps, repeats, optimizers=OPTIMIZERS, jit_compile=False):
    """``{name: seconds per step}`` for ``optimizers`` (with ``"sgd"``) and ``"forward"``."""
    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size * steps, inputs)).astype("float32")
    y = rng.integers(0, 10, size=batch_size * steps).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache().repeat()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    seconds = {}
    for name in dict.fromkeys(("sgd",) + tuple(optimizers)):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        model = _model(inputs, width)
        model.compile(optimizer=_optimizer(name), loss=loss, jit_compile=jit_compile)

        model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)  # builds train_function
        iterator = iter(data)

        def train(model=model, iterator=iterator):
            for _ in range(steps):
                logs = model.train_function(iterator)
            float(logs["loss"])  # waits for the last step

        seconds[name] = _median(train, repeats) / steps
        if name == "sgd":
            forward = tf.function(
                lambda b, model=model: model(b, training=True), jit_compile=jit_compile
            )
            batches = [tf.constant(x[i * batch_size:(i + 1) * batch_size]) for i in range(steps)]

            def forwards(forward=forward, batches=batches):
                for b in batches:
                    forward(b).numpy()

            seconds["forward"] = _median(forwards, repeats) / steps
    return seconds


def table(seconds):
    """Markdown rows: ms per step, ratio to SGD, ratio without the anchor's forward pass."""
    sgd, forward = seconds["sgd"], seconds["forward"]
    lines = [
        "| optimizer | ms / step | / SGD | / SGD without the forward pass at x |",
        "|---|---|---|---|",
        f"| forward pass only | {1e3 * forward:.2f} | {forward / sgd:.2f} | |",
    ]
    for name in (n for n in OPTIMIZERS if n in seconds):
        extra = "" if name == "sgd" else f"{(seconds[name] - forward) / sgd:.2f}"
        ratio = seconds[name] / sgd
        lines.append(f"| {name} | {1e3 * seconds[name]:.2f} | {ratio:.2f} | {extra} |")
    return "\n".join(lines)


def main(argv):
    del argv
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    quick = FLAGS.quick
    seconds = run(
        inputs=64 if quick else FLAGS.inputs,
        width=16 if quick else FLAGS.width,
        batch_size=16 if quick else FLAGS.batch_size,
        steps=5 if quick else FLAGS.steps,
        repeats=1 if quick else FLAGS.repeats,
        jit_compile=FLAGS.jit_compile,
    )
    print(table(seconds))


if __name__ == "__main__":
    define_flags()
    app.run(main)
