"""The non-finite guard of every optimizer of the package: an update with NaN/Inf never lands.

An optimizer computes its new weights (from a gradient, a conjugate-gradient solve, a line
search ...) and hands them to :func:`assign_if_finite` with the scalars they were computed
from (loss, curvature, step size). If anything is non-finite the weights are kept and the
optimizer's ``rejected_steps`` counter goes up by one.

Distribution. Under ``tf.distribute`` the decision is taken once, in ONE cross-replica merge
(as ``keras.optimizers.LossScaleOptimizer`` does): the step is accepted only if it is finite
on every replica, and then every replica's copy of every variable is written; otherwise no
copy is. A merge sees only its own worker's replicas: with several workers
(``MultiWorkerMirroredStrategy``) the count of non-finite replicas is all-reduced across
workers (one scalar), so a NaN on one worker rejects the step on all of them. The values
themselves are expected to be replicated (computed from all-reduced gradients/products, as
``Closure`` and ``AnnealedStep`` do), so the copies stay identical.
The update is a select (``tf.where``), not a ``tf.cond``: it works under ``jit_compile``.
"""

import keras
import tensorflow as tf

from keras_diffusion import compat


def all_finite(tensors):
    """A boolean scalar: whether every entry of every tensor in ``tensors`` is finite."""
    flags = [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(t))) for t in tensors]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def assign_if_finite(optimizer, variables, values, checks=()):
    """Writes ``values`` into ``variables`` unless any of them or of ``checks`` is non-finite.

    Args:
        optimizer: a package optimizer (``OptimizerStateMixin``): its ``rejected_steps``
            counts refusals and its strategy is the one the variables live under.
        variables: the Keras variables to write.
        values: their new values (replicated across replicas), one tensor per variable.
        checks: further tensors that must be finite for the step to be accepted.

    Returns:
        A boolean scalar tensor, whether the step was accepted (on every replica).
    """
    values = [tf.convert_to_tensor(v) for v in values]
    if len(values) != len(variables):
        raise ValueError(
            f"assign_if_finite needs one value per variable: got {len(values)} values for "
            f"{len(variables)} variables."
        )
    finite = all_finite(values + list(checks))
    tf_vars = [v.value if isinstance(v, keras.Variable) else v for v in variables]
    counter = optimizer.rejected_steps
    counter = counter.value if isinstance(counter, keras.Variable) else counter

    def write(var, value, accept):
        return var.assign(tf.where(accept, tf.cast(value, var.dtype), var))

    def merge(distribution, tf_vars, values, finite):
        local = distribution.experimental_local_results(finite)
        if len(local) < distribution.num_replicas_in_sync:  # replicas on other workers
            rejected = tf.cast(tf.logical_not(finite), tf.float32)
            accept = distribution.reduce(tf.distribute.ReduceOp.SUM, rejected, axis=None) == 0
        else:
            accept = tf.reduce_all(tf.stack(local))
        for var, value in zip(tf_vars, values):
            distribution.extended.update(var, write, args=(value, accept), group=False)
        distribution.extended.update(
            counter, lambda c: c.assign_add(tf.cast(~accept, c.dtype)), group=False
        )
        return accept

    accept = compat.maybe_merge_call(
        merge, compat.optimizer_strategy(optimizer), tf_vars, values, finite
    )
    return accept
