r"""Times curvature products against a gradient, in TensorFlow and in JAX, from one run.

For an MLP (784-1024-1024-10), LeNet-5 and a recurrent net (length 100, 256 units; unrolled
and as a ``tf.while_loop``), with softmax cross-entropy on logits, it measures

* gradient, JVP, VJP, GGN-vector product and Hessian-vector product of
  ``keras_diffusion.curvature`` (each inside ``tf.function``, with and without
  ``jit_compile``): median wall time and peak memory of the CPU allocator;
* the same products written with ``jax.jvp`` / ``jax.vjp`` / ``jax.grad`` (jitted, CPU) on
  JAX twins of the same networks with the same weights and batch
  (``models/curvature_nets.py``): median wall time and XLA's temporary-buffer size.

Every time is printed as a ratio to the gradient of the same framework and mode, and the
TensorFlow time as a ratio to JAX's for the same product.

    python scripts/benchmark_curvature.py                 # the issue's sizes
    python scripts/benchmark_curvature.py --quick         # tiny sizes, seconds
"""

import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags; called only when this file runs as a script (imports define none)."""
    flags.DEFINE_list("models", ["mlp", "lenet5", "rnn_unrolled", "rnn_loop"], "Networks to time.")
    flags.DEFINE_integer("batch_size", 128, "Batch size of the feed-forward nets.", lower_bound=1)
    flags.DEFINE_integer("rnn_batch_size", 32, "Batch size of the recurrent nets.", lower_bound=1)
    flags.DEFINE_integer("repeats", 20, "Timed calls per product (median reported).", lower_bound=1)
    flags.DEFINE_bool("jax", True, "Also time the JAX twins (needs `pip install jax`).")
    flags.DEFINE_bool("quick", False, "Tiny networks and few repeats (a smoke run).")
    flags.DEFINE_string("csv", None, "Optional path to write the table as CSV.")


PRODUCTS = ("gradient", "jvp", "vjp", "ggn_vp", "hvp")


def keras_model(name, quick):
    """The benchmark network ``name`` (issue sizes, or tiny ones with ``quick``)."""
    from models import curvature_nets

    if name == "mlp":
        return curvature_nets.build_mlp((64, 32, 32, 10) if quick else (784, 1024, 1024, 10))
    if name == "lenet5":
        return curvature_nets.build_lenet5(image_size=12 if quick else 28)
    if name in ("rnn_unrolled", "rnn_loop"):
        length, units = (8, 16) if quick else (100, 256)
        return curvature_nets.build_rnn(length, units, unroll=name == "rnn_unrolled")
    raise app.UsageError(f"Unknown model {name!r}; choose from mlp, lenet5, rnn_unrolled, rnn_loop.")


def jax_available(requested):
    """Whether to time the JAX peer: requested (``--jax``) and installed."""
    if not requested:
        return False
    try:
        import jax  # noqa: F401
    except ImportError:
        print("JAX is not installed (pip install jax): timing TensorFlow only.")
        return False
    return True


def median_seconds(fn, repeats, block):
    """Median wall time of ``block(fn())`` over ``repeats`` calls, after two warm-up calls."""
    block(fn())  # warm-up: traces and compiles
    block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tf_problem(model, x, y):
    """``(outputs_fn, loss_fn, gradient, hessian)`` of softmax cross-entropy on ``(x, y)``.

    ``outputs_fn(params)`` are the logits, ``loss_fn(params)`` the mean loss,
    ``gradient(params)`` its gradient and ``hessian`` the analytic ``H_L`` in the logits.
    """
    import keras
    import tensorflow as tf

    from keras_diffusion.curvature import loss_hessians

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y = tf.constant(x), tf.constant(y)
    non_trainable = [v.value for v in model.non_trainable_variables]

    def outputs_fn(params):
        return model.stateless_call(params, non_trainable, x)[0]

    def loss_fn(params):
        return loss(y, outputs_fn(params))

    def gradient(params):
        with tf.GradientTape() as tape:
            tape.watch(params)
            value = loss_fn(params)
        return tape.gradient(value, params)

    return outputs_fn, loss_fn, gradient, loss_hessians.from_keras_loss(loss, y_true=y)


def _tf_products(model, x, y, jit_compile):
    """The five products as ``tf.function``s of (params, vector, cotangent)."""
    import tensorflow as tf

    from keras_diffusion import curvature

    outputs_fn, loss_fn, loss_gradient, hessian = tf_problem(model, x, y)

    def gradient(params, v, u):
        return loss_gradient(params)

    def jvp(params, v, u):
        return curvature.jvp(outputs_fn, params, v)[1]

    def vjp(params, v, u):
        return curvature.vjp(outputs_fn, params, u)

    def ggn_vp(params, v, u):
        return curvature.ggn_vp(outputs_fn, None, params, v, loss_hessian=hessian)

    def hvp(params, v, u):
        return curvature.hvp(loss_fn, params, v)

    fns = dict(gradient=gradient, jvp=jvp, vjp=vjp, ggn_vp=ggn_vp, hvp=hvp)
    return {k: tf.function(f, jit_compile=jit_compile) for k, f in fns.items()}


def _time_tf(model, x, y, jit_compile, repeats):
    import numpy as np
    import tensorflow as tf

    params = [tf.constant(v.numpy()) for v in model.trainable_variables]
    rng = np.random.default_rng(1)
    v = [tf.constant(rng.normal(size=p.shape).astype("float32")) for p in params]
    u = tf.constant(rng.normal(size=(x.shape[0], 10)).astype("float32"))
    block = lambda out: [t.numpy() for t in tf.nest.flatten(out)]  # noqa: E731
    rows = {}
    for name, fn in _tf_products(model, x, y, jit_compile).items():
        call = lambda fn=fn: fn(params, v, u)  # noqa: E731
        rows[name] = (median_seconds(call, repeats, block), _peak_bytes(call, block))
    return rows


def _peak_bytes(call, block):
    """Bytes the CPU allocator holds at its peak during ``call()`` beyond those held before.

    TensorFlow's executor serves small tensors outside the tracked allocator, so small
    networks can read 0 here (the ``--quick`` sizes without XLA do).
    """
    import tensorflow as tf

    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    block(call())
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def _time_jax(model, x, y, repeats):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from models import curvature_nets

    forward = curvature_nets.jax_forward(model.name)
    params = [jnp.asarray(v.numpy()) for v in model.trainable_variables]
    rng = np.random.default_rng(1)
    v = [jnp.asarray(rng.normal(size=p.shape).astype("float32")) for p in params]
    u = jnp.asarray(rng.normal(size=(x.shape[0], 10)).astype("float32"))
    x, y = jnp.asarray(x), jnp.asarray(y)

    def outputs_fn(p):
        return forward(p, x)

    def loss_fn(p):
        return curvature_nets.jax_cross_entropy(outputs_fn(p), y)

    def ggn_vp(p, v, u):
        logits, jv = jax.jvp(outputs_fn, (p,), (v,))
        hjv = curvature_nets.jax_cross_entropy_hessian(logits, jv)
        return jax.vjp(outputs_fn, p)[1](hjv)[0]

    fns = dict(
        gradient=lambda p, v, u: jax.grad(loss_fn)(p),
        jvp=lambda p, v, u: jax.jvp(outputs_fn, (p,), (v,))[1],
        vjp=lambda p, v, u: jax.vjp(outputs_fn, p)[1](u)[0],
        ggn_vp=ggn_vp,
        hvp=lambda p, v, u: jax.jvp(jax.grad(loss_fn), (p,), (v,))[1],
    )
    block = lambda out: jax.block_until_ready(out)  # noqa: E731
    rows = {}
    for name, fn in fns.items():
        jitted = jax.jit(fn)
        seconds = median_seconds(lambda jitted=jitted: jitted(params, v, u), repeats, block)
        memory = jitted.lower(params, v, u).compile().memory_analysis()
        rows[name] = (seconds, getattr(memory, "temp_size_in_bytes", float("nan")))
    return rows


def _format_table(results):
    header = (
        f"{'model':<13}{'product':<9}{'TF ms':>9}{'/grad':>7}{'peak MB':>9}"
        f"{'XLA ms':>9}{'/grad':>7}{'peak MB':>9}{'JAX ms':>9}{'/grad':>7}{'tmp MB':>8}"
        f"{'TF/JAX':>8}{'XLA/JAX':>8}"
    )
    lines = [header, "-" * len(header)]
    for model, modes in results.items():
        for product in PRODUCTS:
            cells = []
            for mode in ("tf", "xla", "jax"):
                if mode not in modes:
                    cells.append(f"{'-':>9}{'-':>7}{'-':>9}")
                    continue
                seconds, memory = modes[mode][product]
                ratio = seconds / modes[mode]["gradient"][0]
                cells.append(f"{seconds * 1e3:>9.2f}{ratio:>7.2f}{memory / 2**20:>9.1f}")
            if "jax" in modes:
                jax_s = modes["jax"][product][0]
                cells.append(
                    f"{modes['tf'][product][0] / jax_s:>8.2f}{modes['xla'][product][0] / jax_s:>8.2f}"
                )
            lines.append(f"{model:<13}{product:<9}" + "".join(cells))
    return "\n".join(lines)


def run(model_names, batch_size, rnn_batch_size, repeats, use_jax, quick):
    """Times every product; returns ``{model: {mode: {product: (seconds, bytes)}}}``."""
    from models import curvature_nets

    results = {}
    for name in model_names:
        model = keras_model(name, quick)
        batch = rnn_batch_size if name.startswith("rnn") else batch_size
        x, y = curvature_nets.random_batch(model, batch)
        results[name] = {
            "tf": _time_tf(model, x, y, False, repeats),
            "xla": _time_tf(model, x, y, True, repeats),
        }
        if use_jax:
            results[name]["jax"] = _time_jax(model, x, y, repeats)
    return results


def main(argv):
    del argv
    use_jax = jax_available(FLAGS.jax)
    quick = FLAGS.quick
    repeats = min(FLAGS.repeats, 3) if quick else FLAGS.repeats
    results = run(FLAGS.models, FLAGS.batch_size, FLAGS.rnn_batch_size, repeats, use_jax, quick)
    table = _format_table(results)
    print(table)
    if FLAGS.csv:
        with open(FLAGS.csv, "w") as f:
            f.write("model,mode,product,seconds,peak_bytes\n")
            for model, modes in results.items():
                for mode, rows in modes.items():
                    for product, (seconds, peak) in rows.items():
                        f.write(f"{model},{mode},{product},{seconds},{peak}\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
