"""``Model``/``Sequential`` whose ``train_step`` hands closure optimizers a ``Closure``.

With an ordinary Keras optimizer the train step is ``keras.Model.train_step`` itself (same
numbers, bit for bit), plus the optimizer's published diagnostics if it has any (e.g.
``AnnealedStep``'s ``rejected_steps``). With a ``keras_diffusion.optimizers.ClosureOptimizer``
(Gauss-Newton, Hessian-free, ...; Pascanu 2014, thesis Sec. 4.3) it

1. binds the batch in a ``Closure`` (freezing the non-trainable state, see its docstring),
   with the optimizer's ``curvature_fraction``;
2. runs ``closure.forward_pass()``: the forward pass at the current weights as Keras does
   (non-trainable state such as BatchNorm statistics and seed generators updated once per
   step), recorded so that the optimizer's loss and gradient at the current weights reuse
   it; its loss feeds the loss tracker;
3. calls ``optimizer.minimize_closure(closure)``, which updates the weights;
4. updates the compiled metrics with the predictions of step 2 (before the update, as Keras)
   and merges the optimizer's diagnostics (``keras_diffusion.optimizers.diagnostics``:
   ``rejected_steps``, damping, CG iterations, ...) into the logs.

Under a ``mixed_float16`` policy ``compile`` wraps the optimizer in a
``keras.optimizers.LossScaleOptimizer``; the train step calls the closure optimizer inside it
directly (the loss scale stays unused): the closure computes in float32 (see ``Closure``), so
its gradients and products need no loss scaling.
"""

import keras
import tensorflow as tf

from keras_diffusion import compat
from keras_diffusion.optimizers import diagnostics
from keras_diffusion.optimizers.closure_optimizer import ClosureOptimizer
from keras_diffusion.training.closure import Closure


class ClosureTrainingMixin:
    """Mixin giving a Keras model the closure train step; put it BEFORE ``keras.Model``.

    Example:
    ```python
    class MyModel(keras_diffusion.ClosureTrainingMixin, keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

    model = MyModel()
    model.compile(optimizer=keras_diffusion.optimizers.GaussNewton(damping=1e-2), loss="mse")
    model.fit(x, y)
    ```
    """

    def make_closure(self, x, y=None, sample_weight=None, curvature_fraction=1.0):
        """A ``Closure`` over the batch ``(x, y, sample_weight)`` at the current weights."""
        return Closure(self, x, y, sample_weight, curvature_fraction=curvature_fraction)

    def train_step(self, data):
        optimizer = diagnostics.unwrap(self.optimizer)  # see the module docstring
        if not isinstance(optimizer, ClosureOptimizer):
            logs = super().train_step(data)
            return {**logs, **diagnostics.read(self.optimizer)}
        if not all(layer.built for layer in compat.flatten_layers(self)):
            # A subclassed model traced without a strategy is still unbuilt here; the
            # closure needs its variables before the first forward pass.
            compat.symbolic_build(self, data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        closure = self.make_closure(x, y, sample_weight, optimizer.curvature_fraction)
        y_pred, loss = closure.forward_pass()
        batch_size = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        compat.loss_tracker(self).update_state(
            compat.unscale_loss_for_distribution(loss), sample_weight=batch_size
        )
        optimizer.minimize_closure(closure)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return {**logs, **diagnostics.read(optimizer)}


@keras.saving.register_keras_serializable(package="keras_diffusion")
class Model(ClosureTrainingMixin, keras.Model):
    """``keras.Model`` (functional or subclassed) with the closure train step.

    Identical to ``keras.Model`` with ordinary optimizers; see ``ClosureTrainingMixin``.

    Example:
    ```python
    inputs = keras.Input((3,))
    model = keras_diffusion.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras_diffusion.optimizers.GaussNewton(), loss="mse")
    ```
    """


@keras.saving.register_keras_serializable(package="keras_diffusion")
class Sequential(ClosureTrainingMixin, keras.Sequential):
    """``keras.Sequential`` with the closure train step (see ``ClosureTrainingMixin``).

    Example:
    ```python
    model = keras_diffusion.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras_diffusion.optimizers.GaussNewton(), loss="mse")
    ```
    """
