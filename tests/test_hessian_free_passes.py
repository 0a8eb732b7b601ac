"""One forward pass per Hessian-free step (Martens 2010, sec. 4.2).

The train step's forward pass gives the loss and gradient, and stays recorded
(``Closure.linearization()``) for Martens' preconditioner and every Gauss-Newton product of
the CG solve: at the step's weights no other forward pass runs. Backtracking and the line
search evaluate the loss at OTHER weights (``loss_evaluations`` counts them). Counted with a
layer that counts its calls: eagerly a call is an executed pass; under ``tf.function`` (with
and without XLA, on one device and on 2 replicas) a call is a pass traced into the graph
(a product in a CG ``tf.while_loop`` body is traced once).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from closure_reference import CountingIdentity, data

import keras_diffusion as kd
from keras_diffusion.optimizers import HessianFree



def _model(strategy=None):
    with (strategy or tf.distribute.get_strategy()).scope():
        keras.utils.set_random_seed(2)
        counter = CountingIdentity()
        model = kd.Sequential([keras.Input((3,)), counter,
                               keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(2)])
    return model, counter


# "forward": a pass per product, one per CG iteration and one for the warm start's residual.
@pytest.mark.parametrize("product_mode, extra", [("auto", 0), ("recorded", 0), ("forward", 5)])
def test_an_eager_step_runs_one_forward_pass_at_its_weights(product_mode, extra):
    """Every device of Martens' step on (preconditioner, backtracking, damping, line search):
    1 pass + the loss evaluations at trial weights; "forward" adds one per CG iteration."""
    x, y, w = data()
    model, counter = _model()
    model.compile(HessianFree(damping=0.5, cg_max_iterations=4, cg_tol=0.0, cg_epsilon=0.0,
                              product_mode=product_mode), "mse", run_eagerly=True)
    for _ in range(2):
        counter.calls = 0
        model.train_on_batch(x, y, sample_weight=w)
        optimizer = model.optimizer
        assert int(optimizer.cg_iterations.numpy()) == 4
        evaluations = int(optimizer.loss_evaluations.numpy())
        assert evaluations >= 1  # backtracking evaluates at least the last CG iterate
        assert counter.calls == 1 + evaluations + extra


def _traced_passes(optimizer, strategy=None, jit_compile=False):
    """Forward passes traced by two epochs of fit (Keras traces more under a strategy)."""
    x, y, w = data(n=8)
    model, counter = _model(strategy)
    with (strategy or tf.distribute.get_strategy()).scope():
        model.compile(optimizer, "mse", jit_compile=jit_compile)
        model.optimizer.build(model.trainable_variables)  # else fit traces twice
    counter.calls = 0
    history = model.fit(x, y, sample_weight=w, batch_size=8, epochs=2, verbose=0).history
    assert np.all(np.isfinite(model.get_weights()[0]))
    return counter.calls, history


def _hessian_free(**kwargs):
    return HessianFree(damping=0.5, cg_max_iterations=3, backtracking=False,
                       adapt_damping=False, line_search=False, **kwargs)


# Keras cannot jit_compile a MirroredStrategy step on 2 CPU devices (even with SGD).
@pytest.mark.parametrize("jit_compile, replicas", [(False, 1), (True, 1), (False, 2)])
def test_a_compiled_step_traces_the_passes_of_a_gradient_step(jit_compile, replicas,
                                                               mirrored_strategy):
    """Without trial evaluations (no backtracking, damping rule or line search) the step's
    graph holds as many forward passes as SGD's (one per replica and trace),
    preconditioner and every CG product included."""
    strategy = mirrored_strategy if replicas == 2 else None
    sgd, _ = _traced_passes(keras.optimizers.SGD(0.1), strategy, jit_compile)
    passes, history = _traced_passes(_hessian_free(), strategy, jit_compile)
    assert passes == sgd and sgd >= replicas
    assert history["rejected_steps"][-1] == 0.0


def test_forward_mode_traces_a_pass_per_product():
    """The counting can fail: "forward" mode traces a pass into the CG loop body, and one
    for the warm start's residual."""
    sgd, _ = _traced_passes(keras.optimizers.SGD(0.1))
    passes, _ = _traced_passes(_hessian_free(product_mode="forward"))
    assert passes == sgd + 2
