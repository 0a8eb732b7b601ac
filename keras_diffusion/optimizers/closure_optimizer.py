"""Base class of optimizers that take the loss as a function of the weights (a closure).

Second-order methods (Gauss-Newton, Hessian-free, Saddle-Free Newton, natural gradient;
Pascanu 2014, thesis Sec. 4.1, 4.3) evaluate the loss, gradient and curvature products at
several weights per batch, so Keras' ``apply_gradients(grads)`` interface does not fit them.
A ``ClosureOptimizer`` instead receives a ``keras_diffusion.training.Closure`` from the
train step of ``keras_diffusion.Model``/``Sequential`` (or any model with
``keras_diffusion.ClosureTrainingMixin``) and updates the weights itself.

Subclasses implement ``step(closure) -> loss`` and write weights only through
``assign_if_finite``: an update containing NaN/Inf (or computed from a non-finite loss or
curvature) is refused, the weights are kept, and ``rejected_steps`` counts the refusal (the
train step logs it).
"""

import keras
import tensorflow as tf

_FIX = (
    "compile a keras_diffusion.Model / keras_diffusion.Sequential, or add "
    "keras_diffusion.ClosureTrainingMixin before keras.Model in your model's bases"
)
_GRADIENT_OPTIONS = (
    "weight_decay",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "gradient_accumulation_steps",
)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ClosureOptimizer(keras.optimizers.Optimizer):
    """Optimizer driven by a closure instead of by gradients.

    Args:
        learning_rate: scale of the step ``step`` computes (subclasses document its use).
        name: the optimizer's name.
        **kwargs: the other arguments of ``keras.optimizers.Optimizer``.

    Example:
    ```python
    class GradientDescent(ClosureOptimizer):
        def step(self, closure):
            loss, grads = closure.value_and_gradient()
            lr = tf.cast(self.learning_rate, loss.dtype)
            new = [p - lr * g for p, g in zip(closure.params, grads)]
            self.assign_if_finite(closure.variables, new, checks=[loss])
            return loss
    ```
    """

    def __init__(self, learning_rate=1.0, name=None, **kwargs):
        unsupported = {
            k: v
            for k, v in kwargs.items()
            if k in _GRADIENT_OPTIONS and v not in (None, False)
        }
        if unsupported:
            raise ValueError(
                f"{type(self).__name__} does not support the gradient-transform options "
                f"{unsupported} (they act in apply_gradients, which closure optimizers do not "
                "use). Remove them; add weight decay as a kernel_regularizer instead."
            )
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.rejected_steps = self.add_variable(
            shape=(),
            dtype="int64",
            initializer="zeros",
            aggregation="only_first_replica",
            name="rejected_steps",
        )

    def step(self, closure):
        """Update ``closure.variables`` using ``closure``; return the loss (a scalar).

        Subclasses implement this and write the weights with ``assign_if_finite``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement step(closure) -> loss."
        )

    def minimize_closure(self, closure):
        """Run one ``step`` on ``closure`` and count the iteration; return the loss."""
        if not self.built:
            self.build(closure.variables)
        loss = self.step(closure)
        self.iterations.assign_add(1)
        return loss

    def assign_if_finite(self, variables, values, checks=()):
        """Assign ``values`` to ``variables`` unless any of them or of ``checks`` is non-finite.

        Args:
            variables: the Keras variables to write (e.g. ``closure.variables``).
            values: their new values, a list of tensors, replicated across replicas.
            checks: further tensors (loss, curvature, step size) that must be finite.

        Returns:
            A boolean scalar tensor: whether the update was accepted. A refused update keeps
            the weights and adds one to ``rejected_steps``.
        """
        values = [tf.convert_to_tensor(v) for v in values]
        finite = tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(t)) for t in list(values) + list(checks)]
        )
        self.rejected_steps.assign_add(tf.cast(tf.logical_not(finite), "int64"))
        tf_vars = [v.value if isinstance(v, keras.Variable) else v for v in variables]

        def update(var, value, accept):
            return var.assign(tf.where(accept, tf.cast(value, var.dtype), var))

        def merge_fn(distribution, tf_vars, values, accept):
            for var, value in zip(tf_vars, values):
                distribution.extended.update(
                    var, update, args=(value, accept), group=False
                )

        tf.__internal__.distribute.interim.maybe_merge_call(
            merge_fn, self._distribution_strategy, tf_vars, values, finite
        )
        return finite

    def apply(self, grads, trainable_variables=None):
        raise TypeError(
            f"{type(self).__name__} is a closure optimizer: it needs the loss as a function "
            "of the weights, which keras.Model.train_step does not give. To use it, "
            f"{_FIX}."
        )

    def apply_gradients(self, grads_and_vars):
        return self.apply(None)

    def update_step(self, gradient, variable, learning_rate):
        return self.apply(None)
