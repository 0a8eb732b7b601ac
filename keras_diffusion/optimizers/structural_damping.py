"""Structural damping of recurrent nets (Martens & Sutskever 2011; Pascanu 2014, sec. 4.3.2).

Hessian-free on a recurrent net adds to the objective a penalty on how much a step changes
the hidden states, ``mu * lambda * D(h(theta + d), h(theta))``, with ``lambda`` the
Levenberg-Marquardt damping and ``mu`` a constant (Martens & Sutskever 2011 use
``mu = 1/30``). With the squared distance ``D = (1/N) sum_i 1/2 ||h_i(theta + d) -
h_i(theta)||^2`` (summed over time steps and units of the marked layers, averaged over the
``N`` examples) its Gauss-Newton matrix is ``G_sd = J_h^T J_h / N`` (eq. 4.35, the Hessian
of ``D`` in the states being ``I / N``), and the damped curvature product is

    (G + mu lambda G_sd) v = J^T H_L J v + (mu lambda / N) J_h^T J_h v        (eq. 4.36)

computed from ONE linearization of ``(outputs, states)(theta)`` (the hidden-state probes:
``Closure.outputs_and_states``): one JVP gives ``J v`` and ``J_h v`` together, one VJP maps
``(H_L J v, (mu lambda / N) J_h v)`` back to the weights.
"""

import tensorflow as tf

from keras_diffusion import compat
from keras_diffusion.curvature import forward, products

STRUCTURAL_DAMPING = 1.0 / 30.0  # mu of Martens & Sutskever (2011).


def resolve_layers(model, names):
    """The layers of ``model`` (searched recursively) named ``names``, in that order."""
    layers = {layer.name: layer for layer in compat.flatten_layers(model)}
    missing = [n for n in names if n not in layers]
    if missing:
        raise ValueError(
            f"structural_layers names {missing} that model {model.name!r} does not have; "
            f"its layers are {sorted(layers)}. Pass the names of its recurrent layers "
            "(e.g. a keras_diffusion.layers.DeepTransitionRNN)."
        )
    return [layers[n] for n in names]


def structural_ggn_vp(closure, layers, weight):
    """``v -> (G + weight * G_sd) v`` on the closure's global curvature batch (eq. 4.36).

    Args:
        closure: a ``keras_diffusion.training.Closure`` (its curvature sub-batch is used).
        layers: recurrent layers of the model supporting ``keras_diffusion.probes``.
        weight: ``mu * lambda``, a scalar.

    Returns:
        A matvec callable on lists of tensors shaped like ``closure.params``, all-reduced
        across replicas like ``closure.ggn_vp`` (weight regularizers included).
    """
    c = closure.curvature
    loss_hessian = c.loss_hessian()
    if loss_hessian is None:
        raise ValueError(
            "Structural damping needs a compiled loss with an analytic output Hessian (one "
            "output with mean squared error or a cross-entropy with from_logits=True); got "
            f"the loss of model {closure.model.name!r}. Use structural_damping=0.0 otherwise."
        )
    params = closure.params
    first = next(t for t in tf.nest.flatten(c.x) if t is not None)
    count = closure.all_reduce(tf.cast(tf.shape(first)[0], params[0].dtype))
    scale = tf.cast(weight, params[0].dtype) / count
    regularized = any(getattr(v, "regularizer", None) is not None for v in closure.variables)

    def matvec(vectors):
        lin = forward.linearize(lambda p: c.outputs_and_states(layers, p), params, vectors)
        outputs = tf.nest.map_structure(
            lambda o: tf.stop_gradient(forward.to_float32(o)), lin.outputs[0]
        )
        jv, jhv = tf.nest.map_structure(forward.to_float32, lin.jvp)
        cotangents = (loss_hessian(outputs, jv), [scale * j for j in jhv])
        total = closure.all_reduce(lin.vjp(cotangents))
        if regularized:
            reg = products.hvp(closure.regularization, params, vectors)
            total = [t + r for t, r in zip(total, reg)]
        return total

    return matvec
