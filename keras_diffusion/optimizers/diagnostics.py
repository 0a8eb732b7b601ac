"""The one channel from an optimizer's per-step diagnostics to the ``fit`` logs.

An optimizer of the package declares its diagnostics in ``build`` with
``OptimizerStateMixin.add_diagnostic`` (damping, reduction ratio rho, CG iterations and stop
reason, step length, rejected steps, gradient evaluations, ...). :func:`read` returns them as
float32 scalars keyed by name, for any optimizer (``{}`` for optimizers without
diagnostics, e.g. Keras's own; a ``LossScaleOptimizer`` is looked through).

Loss scaling. Under ``mixed_float16`` Keras wraps the optimizer in a
``keras.optimizers.LossScaleOptimizer``. For a gradient optimizer (``AnnealedStep``, SGD, ...)
that wrapper refuses a step whose scaled gradients are not finite (a float16 overflow) before
the package's guard sees it, and halves its loss scale: :func:`read` then also publishes
``loss_scale`` (the current scale), so a skipped step shows in the logs as a halving. A closure
optimizer computes in float32 and never uses the scale, so none is published for it.

Two ways bring them into the logs, so that the progress bar, ``History``, ``CSVLogger`` and
``TensorBoard`` show them:

- ``keras_diffusion.Model`` / ``Sequential`` (or ``ClosureTrainingMixin``): the train step
  merges :func:`read` into its logs, for closure optimizers and gradient optimizers such as
  ``AnnealedStep`` alike. The value logged for an epoch is the one after its last step.
- a plain ``keras.Model``: pass :class:`DiagnosticsLogger` to ``fit``, listed BEFORE
  ``CSVLogger``/``TensorBoard`` (Keras hands the same logs dict to the callbacks in order;
  the progress bar and ``History`` come last and see the entries).
"""

import keras
import tensorflow as tf

from keras_diffusion.optimizers.closure_optimizer import ClosureOptimizer


def unwrap(optimizer):
    """The optimizer doing the work: the inner optimizer of a ``LossScaleOptimizer``."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def read(optimizer):
    """``{name: float32 scalar tensor}`` of ``optimizer``'s published diagnostics."""
    inner = unwrap(optimizer)
    variables = dict(getattr(inner, "diagnostics", None) or {})
    if inner is not optimizer and optimizer.built and not isinstance(inner, ClosureOptimizer):
        variables["loss_scale"] = optimizer.dynamic_scale  # see the module docstring
    return {name: tf.cast(v.value, "float32") for name, v in variables.items()}


class DiagnosticsLogger(keras.callbacks.Callback):
    """Adds the optimizer's diagnostics to the batch and epoch logs of a plain ``keras.Model``.

    Not needed with ``keras_diffusion.Model``/``Sequential``, whose train step already logs
    them. List it before ``CSVLogger`` and ``TensorBoard``.

    Example:
    ```python
    model = keras.Model(inputs, outputs)
    model.compile(keras_diffusion.optimizers.AnnealedStep(0.1, bandwidth=model), "mse")
    history = model.fit(x, y, callbacks=[keras_diffusion.optimizers.DiagnosticsLogger(),
                                         keras.callbacks.CSVLogger("log.csv")])
    history.history["rejected_steps"]
    ```
    """

    def _add(self, logs):
        if logs is not None:
            logs.update({k: float(v) for k, v in read(self.model.optimizer).items()})

    def on_train_batch_end(self, batch, logs=None):
        self._add(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._add(logs)
