r"""Times a Saddle-Free Newton Krylov step against a gradient, in TensorFlow and in JAX.

The Krylov step of ``keras_diffusion.optimizers.SaddleFreeNewton`` (Dauphin et al. 2014,
sec. 6; Pascanu 2014, thesis sec. 4.5): the gradient, ``k`` Lanczos steps of the Hessian
from it with full reorthogonalization, the eigendecomposition of the ``k x k`` tridiagonal
matrix and the damped step ``-V (|T| + lambda I)^-1 V^T g``. In TensorFlow it is the
optimizer's own code (``saddle_free_basis.curvature_basis`` on a ``Closure``, inside
``tf.function``, with and without ``jit_compile``); the JAX peer writes the same algorithm
with ``jax.jvp(jax.grad)`` Hessian-vector products and ``lax.fori_loop`` (jitted), on the JAX
twin of the same network with the same weights and batch (``models/curvature_nets.py``).
The line search (a few loss evaluations) is left out of both. Every time is printed as a
ratio to the gradient of the same framework and mode, measured in the same run.

    python scripts/benchmark_saddle_free.py                  # MLP 784-1024-1024-10, k = 10, 20, 50
    python scripts/benchmark_saddle_free.py --quick          # tiny sizes, seconds
"""

import os
import sys

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from scripts import benchmark_curvature

FLAGS = flags.FLAGS
DAMPING = 1e-3


def define_flags():
    """Defines the flags; called only when this file runs as a script (imports define none)."""
    flags.DEFINE_list("models", ["mlp"], "Networks to time (those of benchmark_curvature).")
    flags.DEFINE_list("num_steps", ["10", "20", "50"], "Krylov dimensions k.")
    flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
    flags.DEFINE_integer("repeats", 5, "Timed calls per step (median reported).", lower_bound=1)
    flags.DEFINE_bool("jax", True, "Also time the JAX peer (needs `pip install jax`).")
    flags.DEFINE_bool("quick", False, "Tiny network, k = 4 and 2 repeats (a smoke run).")


def tf_steps(model, x, y, num_steps, jit_compile):
    """``{"gradient": fn, k: fn}``: the gradient and the Krylov steps as ``tf.function``s."""
    import keras
    import tensorflow as tf

    from keras_diffusion.optimizers import saddle_free_basis as sfb
    from keras_diffusion.optimizers import saddle_free_damping as sfd
    from keras_diffusion.training import Closure

    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = tf.constant(x), tf.constant(y)

    def gradient():
        return Closure(model, x, y).gradient()

    def krylov(k):
        closure = Closure(model, x, y)
        grads = closure.gradient()
        basis = sfb.curvature_basis(closure, grads, "krylov", "abs", k)
        coefficients = tf.linalg.matvec(basis.rows, sfb.flatten(grads))
        return sfd.damped_step(basis.rows, basis.eigenvalues, coefficients, DAMPING)

    fns = {"gradient": gradient}
    fns.update({k: (lambda k=k: krylov(k)) for k in num_steps})
    return {name: tf.function(fn, jit_compile=jit_compile) for name, fn in fns.items()}


def jax_steps(model, x, y, num_steps):
    """The JAX peer: ``{"gradient": fn, k: fn}`` of the flat weights, jitted."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from models import curvature_nets

    forward = curvature_nets.jax_forward(model.name)
    params = [jnp.asarray(v.numpy()) for v in model.trainable_variables]
    flat, unravel = ravel_pytree(params)
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loss(theta):
        logp = jax.nn.log_softmax(forward(unravel(theta), x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    grad = jax.grad(loss)

    def krylov(theta, k):
        g = grad(theta)

        def hvp(v):
            return jax.jvp(grad, (theta,), (v,))[1]

        def body(j, carry):
            basis, alphas, betas, v, v_prev, beta = carry
            w = hvp(v) - beta * v_prev
            alpha = jnp.dot(w, v)
            basis = basis.at[j].set(v)
            for _ in range(2):  # full reorthogonalization, twice (classical Gram-Schmidt)
                w = w - basis.T @ (basis @ w)
            beta_next = jnp.linalg.norm(w)
            return (basis, alphas.at[j].set(alpha), betas.at[j].set(beta_next),
                    w / beta_next, v, beta_next)

        start = (jnp.zeros((k, theta.size)), jnp.zeros(k), jnp.zeros(k), g / jnp.linalg.norm(g),
                 jnp.zeros_like(g), jnp.zeros(()))
        basis, alphas, betas, *_ = jax.lax.fori_loop(0, k, body, start)
        t = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
        values, vectors = jnp.linalg.eigh(t)
        rows = vectors.T @ basis
        return -rows.T @ ((rows @ g) / (jnp.abs(values) + DAMPING))

    fns = {"gradient": jax.jit(grad)}
    fns.update({k: jax.jit(lambda theta, k=k: krylov(theta, k)) for k in num_steps})
    flat = jnp.asarray(np.asarray(flat))
    return {name: (lambda fn=fn: fn(flat)) for name, fn in fns.items()}


def run(model_names, num_steps, batch_size, repeats, use_jax, quick):
    """``{model: {mode: {"gradient"|k: seconds}}}`` for modes tf, xla (and jax)."""
    import jax
    import numpy as np

    from models import curvature_nets

    results = {}
    for name in model_names:
        model = benchmark_curvature.keras_model(name, quick)
        x, y = curvature_nets.random_batch(model, batch_size)
        block = lambda out: [np.asarray(t) for t in (out if isinstance(out, list) else [out])]  # noqa: E731
        results[name] = {}
        for mode, jit in (("tf", False), ("xla", True)):
            fns = tf_steps(model, x, y, num_steps, jit)
            results[name][mode] = {
                step: benchmark_curvature.median_seconds(fn, repeats, block)
                for step, fn in fns.items()
            }
        if use_jax:
            fns = jax_steps(model, x, y, num_steps)
            results[name]["jax"] = {
                step: benchmark_curvature.median_seconds(fn, repeats, jax.block_until_ready)
                for step, fn in fns.items()
            }
    return results


def format_table(results):
    """One line per model and k: times, ratios to the gradient, TF/JAX ratios."""
    modes = ("tf", "xla", "jax")
    header = f"{'model':<8}{'k':>4}" + "".join(
        f"{m.upper() + ' ms':>11}{'/grad':>8}" for m in modes
    ) + f"{'TF/JAX':>8}{'XLA/JAX':>9}"
    lines = [header, "-" * len(header)]
    for model, timings in results.items():
        for step in timings["tf"]:
            if step == "gradient":
                continue
            cells = []
            for mode in modes:
                if mode not in timings:
                    cells.append(f"{'-':>11}{'-':>8}")
                    continue
                seconds = timings[mode][step]
                cells.append(f"{seconds * 1e3:>11.2f}{seconds / timings[mode]['gradient']:>8.1f}")
            if "jax" in timings:
                jax_s = timings["jax"][step]
                cells.append(f"{timings['tf'][step] / jax_s:>8.2f}"
                             f"{timings['xla'][step] / jax_s:>9.2f}")
            lines.append(f"{model:<8}{step:>4}" + "".join(cells))
    return "\n".join(lines)


def main(argv):
    del argv
    use_jax = benchmark_curvature.jax_available(FLAGS.jax)
    num_steps = [4] if FLAGS.quick else [int(k) for k in FLAGS.num_steps]
    repeats = min(FLAGS.repeats, 2) if FLAGS.quick else FLAGS.repeats
    batch_size = min(FLAGS.batch_size, 16) if FLAGS.quick else FLAGS.batch_size
    results = run(FLAGS.models, num_steps, batch_size, repeats, use_jax, FLAGS.quick)
    print(format_table(results))


if __name__ == "__main__":
    define_flags()
    app.run(main)
