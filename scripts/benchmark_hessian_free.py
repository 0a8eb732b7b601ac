r"""Times one Hessian-free step against one gradient, in TensorFlow and in JAX, from one run.

A Hessian-free step (Martens 2010; Pascanu 2014, thesis, Sec. 4.1.2 and 4.3.2) is the
gradient ``g`` plus a conjugate-gradient solve of ``(G + lambda I) d = -g`` with
Gauss-Newton products ``G v = J^T H_L J v``. For the networks of
``scripts/benchmark_curvature.py`` (MLP 784-1024-1024-10, LeNet-5, the recurrent net
unrolled and as a ``tf.while_loop``) with softmax cross-entropy on logits, it times, on the
same weights and batch:

* ``grad``: one gradient (``tf.function``; with ``jit_compile`` in the XLA columns);
* ``HF <mode>``: the gradient plus ``--cg_iterations`` CG iterations
  (``keras_diffusion.curvature.solvers.conjugate_gradient``, a ``tf.while_loop``) with the
  products of ``keras_diffusion.curvature.gauss_newton_operator.GaussNewtonOperator`` in
  each mode: ``recorded`` (one forward pass per step), ``forward`` and ``double_backward``
  (a forward pass per product);
* the same step in JAX (``jax.grad`` + ``jax.linearize``/``jax.linear_transpose`` products
  in a ``lax.while_loop`` CG, jitted): the side-by-side peer.

CG carries its vectors from one iteration to the next (the product's input changes every
iteration, so XLA cannot hoist it out of the loop) and runs all its iterations (``tol=0``).
Each HF time is printed as a ratio to the gradient of the same framework and mode and to
JAX's HF step. With ``--fit`` it also times ``keras_diffusion.optimizers.GaussNewton`` (the
same CG iterations) against ``keras.optimizers.SGD`` per batch of ``model.fit`` on the MLP.

    python scripts/benchmark_hessian_free.py                # the issue's sizes
    python scripts/benchmark_hessian_free.py --quick        # tiny sizes, seconds
    python scripts/benchmark_hessian_free.py --hf_steps     # HF steps: 10/100 CG, 1/2 replicas
"""

import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from scripts import benchmark_curvature

FLAGS = flags.FLAGS
TF_MODES = ("recorded", "forward", "double_backward")
DAMPING = 1e-2


def define_flags():
    """Defines the flags; called only when this file runs as a script (imports define none)."""
    flags.DEFINE_list("models", ["mlp", "lenet5", "rnn_unrolled", "rnn_loop"], "Networks to time.")
    flags.DEFINE_integer("batch_size", 128, "Batch size of the feed-forward nets.", lower_bound=1)
    flags.DEFINE_integer("rnn_batch_size", 32, "Batch size of the recurrent nets.", lower_bound=1)
    flags.DEFINE_integer("cg_iterations", 10, "CG iterations per HF step.", lower_bound=1)
    flags.DEFINE_integer("repeats", 10, "Timed calls per step (median reported).", lower_bound=1)
    flags.DEFINE_bool("jax", True, "Also time the JAX peer (needs `pip install jax`).")
    flags.DEFINE_bool("xla", True, "Also time the steps compiled with XLA (jit_compile).")
    flags.DEFINE_bool("fit", True, "Also time GaussNewton against SGD in model.fit (MLP).")
    flags.DEFINE_bool("quick", False, "Tiny networks and few repeats (a smoke run).")
    flags.DEFINE_bool(
        "distributed", False,
        "Instead: time the CG step of a closure on the MLP on 1 device and on 2 replicas "
        "(MirroredStrategy on 2 logical CPUs), at 10 and 100 CG iterations.",
    )
    flags.DEFINE_float("cg_tol", 1e-3, "CG residual tolerance of the --distributed timing.")
    flags.DEFINE_bool(
        "hf_steps", False,
        "Instead: time HessianFree steps in model.fit on the MLP at 10 and 100 CG "
        "iterations, on 1 device and on 2 replicas (MirroredStrategy on 2 logical CPUs).",
    )
    flags.DEFINE_integer("fit_steps", 10, "Timed batches per model.fit timing.", lower_bound=1)


def _tf_steps(model, x, y, jit_compile, cg_iterations):
    """``{"grad": f, "recorded": f, ...}``: ``tf.function``s of the weights."""
    import keras
    import tensorflow as tf

    from keras_diffusion.curvature import forward, solvers
    from keras_diffusion.curvature.gauss_newton_operator import GaussNewtonOperator

    outputs_fn, _, gradient, hessian = benchmark_curvature.tf_problem(model, x, y)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def recorded_gradient(params):
        """The gradient from the one recorded pass the products reuse (as the closure)."""
        lin = forward.record(outputs_fn, params)
        with tf.GradientTape() as tape:
            tape.watch(lin.outputs)
            value = loss(y, lin.outputs)
        return lin.vjp(tape.gradient(value, lin.outputs)), lin

    def hf_step(mode):
        def step(params):
            if mode == "recorded":
                grads, recording = recorded_gradient(params)
            else:
                grads, recording = gradient(params), None
            operator = GaussNewtonOperator(outputs_fn, params, None, loss_hessian=hessian,
                                           mode=mode, recording=recording)
            return solvers.conjugate_gradient(
                operator, [-g for g in grads], damping=DAMPING, max_iterations=cg_iterations,
                tol=0.0, epsilon=0.0, save_iterates=False,
            ).x

        return step

    fns = {"grad": gradient, **{mode: hf_step(mode) for mode in TF_MODES}}
    return {k: tf.function(f, jit_compile=jit_compile) for k, f in fns.items()}


def _jax_steps(model, x, y, cg_iterations):
    """``{"grad": f, "hf": f}``: jitted JAX functions of the weights (a list of arrays)."""
    import jax
    import jax.numpy as jnp

    from models import curvature_nets

    forward = curvature_nets.jax_forward(model.name)
    x, y = jnp.asarray(x), jnp.asarray(y)
    tree = jax.tree_util.tree_map

    def outputs_fn(p):
        return forward(p, x)

    def loss_fn(p):
        return curvature_nets.jax_cross_entropy(outputs_fn(p), y)

    def dot(a, b):
        return sum(jnp.vdot(u, v) for u, v in zip(a, b))

    def hf(p):
        g = jax.grad(loss_fn)(p)
        logits, jvp = jax.linearize(outputs_fn, p)
        vjp = jax.linear_transpose(jvp, p)

        def matvec(v):
            (gv,) = vjp(curvature_nets.jax_cross_entropy_hessian(logits, jvp(v)))
            return tree(lambda a, b: a + DAMPING * b, gv, v)

        def body(state):
            i, xs, r, d, rr = state
            ad = matvec(d)
            alpha = rr / dot(d, ad)
            xs = tree(lambda a, b: a + alpha * b, xs, d)
            r = tree(lambda a, b: a - alpha * b, r, ad)
            rr_new = dot(r, r)
            d = tree(lambda a, b: a + rr_new / rr * b, r, d)
            return i + 1, xs, r, d, rr_new

        b = tree(jnp.negative, g)
        start = (0, tree(jnp.zeros_like, b), b, b, dot(b, b))
        return jax.lax.while_loop(lambda s: s[0] < cg_iterations, body, start)[1]

    return {"grad": jax.jit(jax.grad(loss_fn)), "hf": jax.jit(hf)}


def _time(steps, params, repeats, block):
    """Median seconds of every step, timed round-robin (one call of each per repeat, after
    two warm-up calls each), so that a change of the machine's load hits all alike."""
    for f in steps.values():
        block(f(params))
        block(f(params))
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, f in steps.items():
            start = time.perf_counter()
            block(f(params))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def run_model(name, batch_size, cg_iterations, repeats, use_jax, quick, use_xla=True):
    """Times and solutions for one network: ``({column: {step: seconds}}, {column: x})``.

    Columns are ``"tf"``, ``"xla"`` and ``"jax"``; the solutions are the ``recorded`` HF
    step of TensorFlow and the JAX step, as flat numpy vectors, for checking.
    """
    import numpy as np
    import tensorflow as tf

    from models import curvature_nets

    model = benchmark_curvature.keras_model(name, quick)
    x, y = curvature_nets.random_batch(model, batch_size)
    weights = [v.numpy() for v in model.trainable_variables]
    params = [tf.constant(w) for w in weights]
    tf_block = lambda out: [t.numpy() for t in tf.nest.flatten(out)]  # noqa: E731
    times, solutions = {}, {}
    for column, jit in (("tf", False), ("xla", True))[:2 if use_xla else 1]:
        steps = _tf_steps(model, x, y, jit, cg_iterations)
        times[column] = _time(steps, params, repeats, tf_block)
        solutions[column] = np.concatenate([np.ravel(t) for t in steps["recorded"](params)])
    if use_jax:
        import jax

        steps = _jax_steps(model, x, y, cg_iterations)
        block = jax.block_until_ready
        times["jax"] = _time(steps, [jax.numpy.asarray(w) for w in weights], repeats, block)
        solutions["jax"] = np.concatenate(
            [np.ravel(t) for t in steps["hf"]([jax.numpy.asarray(w) for w in weights])]
        )
    return times, solutions


def _batch_timer():
    """A Keras callback recording the wall time of every training batch in ``seconds``."""
    import keras

    class BatchTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seconds = []

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return BatchTimer()


def _fit_seconds(make_optimizer, quick, batch_size, steps, jit_compile=False, strategy=None):
    """Median seconds per batch of ``model.fit`` on the MLP with ``make_optimizer()``, and
    the optimizer (under ``strategy``'s scope when given)."""
    import keras
    import tensorflow as tf

    import keras_diffusion as kd
    from models import curvature_nets

    with (strategy or tf.distribute.get_strategy()).scope():
        keras.utils.set_random_seed(0)
        template = benchmark_curvature.keras_model("mlp", quick)
        model = kd.Sequential([keras.Input(template.input_shape[1:])] + template.layers)
        model.compile(
            optimizer=make_optimizer(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
    x, y = curvature_nets.random_batch(model, batch_size * (steps + 2))
    timer = _batch_timer()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=[timer],
              shuffle=False)
    return statistics.median(timer.seconds[2:]), model.optimizer  # the first two trace


def time_fit(quick, batch_size, cg_iterations, steps, jit_compile):
    """Median seconds per batch of ``model.fit`` on the MLP: ``{"gauss_newton": s, "sgd": s}``."""
    import keras

    from keras_diffusion.optimizers import GaussNewton

    optimizers = {
        "gauss_newton": lambda: GaussNewton(damping=DAMPING, cg_max_iterations=cg_iterations,
                                            cg_tol=0.0),
        "sgd": lambda: keras.optimizers.SGD(0.01),
    }
    return {
        name: _fit_seconds(make, quick, batch_size, steps, jit_compile)[0]
        for name, make in optimizers.items()
    }


def time_hf_steps(quick, batch_size, caps, steps, strategy=None):
    """Seconds per ``HessianFree`` step in ``model.fit`` on the MLP, 1 device and 2 replicas.

    Returns ``{(replicas, cap): (seconds, cg_iterations)}`` and ``{replicas: SGD seconds}``
    (the gradient step of the same fit, for the ratio). Every CG iteration up to ``cap``
    runs (``cg_tol=0``, ``cg_epsilon=0``); Martens' devices keep their defaults except the
    preconditioner (off: its per-example gradients of the 1.9M weights at batch 128 would
    take 1 GB). ``strategy``: the 2-replica strategy (default: a new MirroredStrategy on
    2 logical CPUs, which `main` sets up).
    """
    import keras
    import tensorflow as tf

    from keras_diffusion.optimizers import HessianFree

    strategies = {1: None, 2: strategy or tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])}
    hf, sgd = {}, {}
    for replicas, strategy in strategies.items():
        sgd[replicas] = _fit_seconds(lambda: keras.optimizers.SGD(0.01), quick, batch_size,
                                     steps, strategy=strategy)[0]
        for cap in caps:
            seconds, optimizer = _fit_seconds(
                lambda cap=cap: HessianFree(damping=DAMPING, cg_max_iterations=cap, cg_tol=0.0,
                                            cg_epsilon=0.0, preconditioner=None),
                quick, batch_size, steps, strategy=strategy)
            hf[(replicas, cap)] = (seconds, int(optimizer.cg_iterations.numpy()))
    return hf, sgd


def time_distributed(quick, batch_size, caps, tol, repeats):
    """Seconds of one CG step (gradient + solve) of a ``Closure`` on the MLP.

    Returns ``{(replicas, cap, driver): (seconds, iterations)}`` for 1 device and 2
    replicas (needs 2 logical CPUs, `main` sets them): ``driver`` ``"while_loop"`` solves
    with ``closure.gauss_newton_operator()`` (on 2 replicas: once across replicas, stopping
    early), ``"unrolled"`` with a plain all-reducing matvec and ``unroll=True`` (what a
    closure solver did before: every iteration up to the cap is paid).
    """
    import keras
    import tensorflow as tf

    import keras_diffusion as kd
    from keras_diffusion.curvature import solvers
    from models import curvature_nets

    out = {}
    strategies = {1: tf.distribute.get_strategy(),
                  2: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])}
    for replicas, strategy in strategies.items():
        with strategy.scope():
            model = kd.Sequential(
                [keras.Input(benchmark_curvature.keras_model("mlp", quick).input_shape[1:])]
                + benchmark_curvature.keras_model("mlp", quick).layers
            )
            model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x, y = curvature_nets.random_batch(model, batch_size)
        dataset = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors((x, y)).unbatch().batch(batch_size)
        )
        x_dist, y_dist = next(iter(dataset))
        drivers = ("while_loop", "unrolled") if replicas > 1 else ("while_loop",)
        for cap in caps:
            for driver in drivers:

                def replica_step(x, y, cap=cap, driver=driver):
                    closure = kd.Closure(model, x, y)
                    grads = closure.gradient()
                    operator = closure.gauss_newton_operator()
                    matvec = operator if driver == "while_loop" else lambda v: operator(v)
                    result = solvers.conjugate_gradient(
                        matvec, [-g for g in grads], damping=DAMPING, max_iterations=cap,
                        tol=tol, epsilon=0.0, save_iterates=False, dot=closure.dot,
                        unroll=closure.distributed,
                    )
                    return result.num_iterations, result.x

                step = tf.function(lambda x, y, f=replica_step: strategy.run(f, args=(x, y)))
                block = lambda out: [  # noqa: E731
                    t.numpy() for t in tf.nest.flatten(strategy.experimental_local_results(out))
                ]
                seconds = benchmark_curvature.median_seconds(
                    lambda: step(x_dist, y_dist), repeats, block
                )
                iterations = strategy.experimental_local_results(step(x_dist, y_dist)[0])[0]
                out[(replicas, cap, driver)] = (seconds, int(iterations))
    return out


def format_hf_steps(hf, sgd, batch_size):
    """The markdown table of `time_hf_steps`."""
    lines = [f"HessianFree step in model.fit on the MLP (batch {batch_size}, preconditioner "
             "off, all CG iterations run):",
             "| replicas | CG iterations | HF step ms | SGD step ms | HF / SGD |",
             "|---|---|---|---|---|"]
    for (replicas, cap), (seconds, iterations) in hf.items():
        lines.append(f"| {replicas} | {iterations} | {seconds * 1e3:.1f} | "
                     f"{sgd[replicas] * 1e3:.1f} | {seconds / sgd[replicas]:.1f} |")
    return "\n".join(lines)


def format_table(results):
    """The table of ``{model: times}`` (see `run_model`): ms and ratios."""
    columns = [c for c in ("tf", "xla", "jax") if any(c in t for t in results.values())]
    header = f"{'model':<13}{'step':<17}" + "".join(
        f"{c.upper() + ' ms':>10}{'/grad':>7}" for c in columns
    ) + "".join(f"{c.upper() + '/JAX':>9}" for c in columns if c != "jax" and "jax" in columns)
    lines = [header, "-" * len(header)]
    for model, times in results.items():
        jax_hf = times.get("jax", {}).get("hf")
        for step in ("grad",) + TF_MODES:
            cells = []
            for c in columns:
                name = "hf" if c == "jax" and step != "grad" else step
                if c == "jax" and step not in ("grad", "recorded"):
                    cells.append(f"{'-':>10}{'-':>7}")
                    continue
                seconds = times[c][name]
                cells.append(f"{seconds * 1e3:>10.2f}{seconds / times[c]['grad']:>7.2f}")
            for c in columns:
                if c == "jax" or jax_hf is None:
                    continue
                jax_s = times["jax"]["grad"] if step == "grad" else jax_hf
                cells.append(f"{times[c][step] / jax_s:>9.2f}")
            label = "grad" if step == "grad" else f"HF {step}"
            lines.append(f"{model:<13}{label:<17}" + "".join(cells))
    return "\n".join(lines)


def main(argv):
    del argv
    use_jax = benchmark_curvature.jax_available(FLAGS.jax)
    quick = FLAGS.quick
    repeats = min(FLAGS.repeats, 3) if quick else FLAGS.repeats
    if FLAGS.distributed or FLAGS.hf_steps:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        two = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, two)
    if FLAGS.hf_steps:
        steps = 2 if quick else FLAGS.fit_steps
        hf, sgd = time_hf_steps(quick, FLAGS.batch_size, (10, 100), steps)
        print(format_hf_steps(hf, sgd, FLAGS.batch_size))
        return
    if FLAGS.distributed:
        timings = time_distributed(quick, FLAGS.batch_size, (10, 100), FLAGS.cg_tol, repeats)
        print(f"CG step on the MLP (batch {FLAGS.batch_size}, cg_tol {FLAGS.cg_tol}):")
        for (replicas, cap, driver), (seconds, iterations) in timings.items():
            print(f"  replicas={replicas} cap={cap:<4} {driver:<11} {seconds * 1e3:9.2f} ms "
                  f"({iterations} CG iterations)")
        return
    results = {}
    for name in FLAGS.models:
        batch = FLAGS.rnn_batch_size if name.startswith("rnn") else FLAGS.batch_size
        results[name] = run_model(name, batch, FLAGS.cg_iterations, repeats, use_jax, quick,
                                  FLAGS.xla)[0]
    print(f"One HF step = gradient + {FLAGS.cg_iterations} CG iterations (damping {DAMPING}).")
    print(format_table(results))
    if FLAGS.fit:
        for jit in (False, True):
            fit = time_fit(quick, FLAGS.batch_size, FLAGS.cg_iterations, 3 if quick else FLAGS.fit_steps, jit)
            print(
                f"model.fit on the MLP, jit_compile={jit}: GaussNewton "
                f"{fit['gauss_newton'] * 1e3:.2f} ms, SGD {fit['sgd'] * 1e3:.2f} ms per batch, "
                f"ratio {fit['gauss_newton'] / fit['sgd']:.2f}"
            )


if __name__ == "__main__":
    define_flags()
    app.run(main)
