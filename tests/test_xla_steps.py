"""Every optimizer's train step compiles with XLA and holds no host-side Python (TPU-ready).

A TPU runs the train step as one XLA program: every op must have an XLA kernel, and a
``tf.py_function``/``tf.numpy_function`` (host-side Python) cannot be part of it. For each
package optimizer, under float32 and under ``mixed_bfloat16`` (the TPU policy):

1. ``model.compile(jit_compile=True, steps_per_execution=2)`` keeps XLA on (Keras falls back
   to ``jit_compile=False`` for models it deems unsupported) and ``fit`` runs finite steps;
2. the step Keras compiles (``strategy.run(model.train_step)`` in a ``tf.function`` with
   ``jit_compile=True``) is traced again here: no op of its graph, nor of any function of its
   library (``tf.while_loop``/``tf.cond`` bodies), is a Python callback;
3. XLA compiles that step to HLO (``experimental_get_compiler_ir``), which it cannot do for
   ops without an XLA kernel.
"""

import numpy as np
import pytest
import tensorflow as tf
from optimizer_cases import OPTIMIZERS, compiled, data

# The ops tf.py_function, tf.numpy_function and the old tf.compat.v1.py_func create.
HOST_PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def graph_op_types(graph):
    """The op types of ``graph`` and of every function in its library."""
    definition = graph.as_graph_def()
    types = {node.op for node in definition.node}
    for function in definition.library.function:
        types |= {node.op for node in function.node_def}
    return types


def test_the_op_scan_sees_python_callbacks_inside_loops():
    @tf.function(jit_compile=False)
    def with_callback(x):
        return tf.while_loop(
            lambda i, y: i < 2,
            lambda i, y: (i + 1, tf.ensure_shape(tf.numpy_function(np.sin, [y], tf.float32), ())),
            (0, x),
        )

    types = graph_op_types(with_callback.get_concrete_function(tf.constant(1.0)).graph)
    assert types & HOST_PYTHON_OPS


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_train_step_compiles_with_xla_without_host_python(name, policy):
    x, y = data()
    model = compiled(name, policy, jit_compile=True, steps_per_execution=2)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert model.jit_compile is True
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["rejected_steps"] == [0.0]

    @tf.function(jit_compile=True)
    def step(batch):
        return model.distribute_strategy.run(model.train_step, args=(batch,))

    batch = (tf.constant(x[:8]), tf.constant(y[:8]))
    types = graph_op_types(step.get_concrete_function(batch).graph)
    assert not types & HOST_PYTHON_OPS
    hlo = step.experimental_get_compiler_ir(batch)(stage="hlo")
    assert "ENTRY" in hlo
