"""Loop drivers shared by the iterative solvers and spectral estimators.

Every algorithm of `solvers` and `spectra` is written once, as a loop state (a named tuple of
tensors), a ``cond`` and a ``body`` on that state; `run_loop` runs it either as a
``tf.while_loop`` (the default: a graph of constant size) or unrolled as straight-line graph
code (``unroll=True``).

Why unroll: inside a replica context of ``tf.distribute.MirroredStrategy`` (e.g. a train step
of ``model.fit``) a cross-replica all-reduce goes through ``merge_call``, which TensorFlow
forbids inside ``tf.while_loop`` and ``tf.cond``. A matvec or ``dot`` that all-reduces (e.g.
``keras_diffusion.training.Closure.ggn_vp`` when ``closure.distributed``) can then only run
from straight-line code. The unrolled driver calls ``body`` exactly ``max_iterations`` times
and, once ``cond`` is false, freezes the state with `select` (``tf.where``) instead of
leaving the loop, so it returns the state the ``tf.while_loop`` returns, bit for bit, while
every all-reduce is executed unconditionally (as all replicas must). The graph grows linearly
with ``max_iterations`` and iterations after the stop still cost one evaluation of ``body``.

Example:

```python
State = collections.namedtuple("State", ["i", "total"])

def cond(s):
    return s.total < 10.0

def body(s):
    return State(s.i + 1, s.total + tf.cast(s.i, tf.float32))

start = State(tf.constant(0), tf.constant(0.0))
run_loop(cond, body, start, 20)               # State(i=5, total=10.0)
run_loop(cond, body, start, 20, unroll=True)  # State(i=5, total=10.0)
```
"""

import tensorflow as tf


def run_loop(cond, body, state, max_iterations, unroll=False):
    """Runs ``state = body(state)`` while ``cond(state)``, at most ``max_iterations`` times.

    Args:
        cond: callable on the state returning a scalar boolean tensor.
        body: callable on the state returning the next state (same structure, dtypes and
            shapes).
        state: a nest of tensors, typically a named tuple (``tf.while_loop`` keeps it).
        max_iterations: Python int, the most evaluations of ``body``; the unrolled driver
            evaluates ``body`` exactly this many times.
        unroll: ``False`` runs a ``tf.while_loop``; ``True`` unrolls the loop in Python with
            a stopped flag freezing the state (needed when ``body`` all-reduces across
            replicas inside a replica context, see the module docstring).

    Returns:
        The final state, with the structure of ``state``.
    """
    if not unroll:
        # The state travels as the single loop variable, so cond and body receive it whole.
        (state,) = tf.while_loop(
            cond, lambda s: (body(s),), (state,), maximum_iterations=max_iterations
        )
        return state
    for _ in range(max_iterations):
        state = select(cond(state), body(state), state)
    return state


def select(pred, if_true, if_false):
    """``tf.where(pred, a, b)`` over matching nested structures, for a scalar ``pred``.

    Unlike ``tf.cond`` both structures are computed, so any collective inside them runs
    unconditionally; it may therefore sit in replica context and in unrolled loops.
    """
    return tf.nest.map_structure(lambda a, b: tf.where(pred, a, b), if_true, if_false)
