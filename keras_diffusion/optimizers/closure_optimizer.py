"""Base class of optimizers that take the loss as a function of the weights (a closure).

Second-order methods (Gauss-Newton, Hessian-free, Saddle-Free Newton, natural gradient;
Pascanu 2014, thesis Sec. 4.1, 4.3) evaluate the loss, gradient and curvature products at
several weights per batch, so Keras' ``apply_gradients(grads)`` interface does not fit them.
A ``ClosureOptimizer`` instead receives a ``keras_diffusion.training.Closure`` from the
train step of ``keras_diffusion.Model``/``Sequential`` (or any model with
``keras_diffusion.ClosureTrainingMixin``) and updates the weights itself.

Subclasses implement ``step(closure) -> loss``, keep what they adapt in variables created
in ``build`` (``OptimizerStateMixin.add_state``/``add_diagnostic``) and write the weights
only through ``assign_if_finite``: an update containing NaN/Inf (or computed from a
non-finite loss or curvature) is refused, the weights are kept, and ``rejected_steps``
counts the refusal (a diagnostic: the train step logs it).

``curvature_fraction`` (Martens 2010, sec. 4.2: the curvature mini-batch is a fraction of
the gradient mini-batch) is passed to the ``Closure`` the train step builds: its curvature
products use that leading part of each replica's batch.
"""

import keras

from keras_diffusion import validation
from keras_diffusion.optimizers.state import OptimizerStateMixin, check_learning_rate

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
class ClosureOptimizer(OptimizerStateMixin, keras.optimizers.Optimizer):
    """Optimizer driven by a closure instead of by gradients.

    Args:
        learning_rate: scale of the step ``step`` computes (subclasses document its use);
            a finite number > 0 or a schedule.
        curvature_fraction: the fraction of each batch the curvature products use, in
            ``(0, 1]`` (see ``Closure``).
        name: the optimizer's name.
        **kwargs: the other arguments of ``keras.optimizers.Optimizer``.

    Example:
    ```python
    class GradientDescent(ClosureOptimizer):
        def build(self, var_list):
            if self.built:
                return
            super().build(var_list)
            self.gradient_norm = self.add_diagnostic("gradient_norm")

        def step(self, closure):
            loss, grads = closure.value_and_gradient()
            lr = tf.cast(self.learning_rate, loss.dtype)
            new = [p - lr * g for p, g in zip(closure.params, grads)]
            self.gradient_norm.assign(tf.linalg.global_norm(grads))
            self.assign_if_finite(closure.variables, new, checks=[loss])
            return loss
    ```
    """

    def __init__(self, learning_rate=1.0, curvature_fraction=1.0, name=None, **kwargs):
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
        super().__init__(learning_rate=check_learning_rate(learning_rate), name=name, **kwargs)
        self.curvature_fraction = validation.fraction(
            "curvature_fraction", curvature_fraction, "E.g. 0.25 (Martens 2010 sec. 4.2)."
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

    def get_config(self):
        return {**super().get_config(), "curvature_fraction": self.curvature_fraction}
