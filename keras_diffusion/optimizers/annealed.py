"""The annealed normalized-gradient step of Mobahi (2016), sec. 5.2.

Gradient descent on the diffused cost ``g(x; sigma)`` sees only its first-order Taylor expansion,
which is accurate within a radius ``rho = eta * sigma`` of the current point (``eta =
sqrt(epsilon / c_f)``, Appendix C). Minimizing the linearization on that ball (eq. (7)) gives

    x <- x - eta * sigma * grad g(x) / ||grad g(x)||,

a step of length exactly ``eta * sigma`` along the negative gradient, with ``||.||`` the global
Euclidean norm over *all* trainable variables. As continuation lowers sigma (Algorithm 1,
``keras_diffusion.callbacks``) the step length anneals with it.

At sigma = 0 that step is zero and training would stop, so the step uses
``max(sigma, sigma_floor)``; ``sigma_floor`` (default 0.01) is the smallest step length
``eta * sigma_floor``; set it to 0 to follow sec. 5.2 literally.

A step whose gradient norm is not finite (NaN or inf anywhere) is rejected by the package's
non-finite guard (``keras_diffusion.optimizers.guard``): no variable changes and the
optimizer's ``rejected_steps`` counter goes up by one (read it with
``int(optimizer.rejected_steps.numpy())``). A zero gradient gives a zero step.

Diagnostics: ``rejected_steps`` and ``step_length`` (``learning_rate * max(sigma,
sigma_floor)``, 0 for a zero gradient) reach the ``fit`` logs with ``keras_diffusion.Model``,
or with ``keras_diffusion.optimizers.DiagnosticsLogger`` on a plain ``keras.Model``.

Saving: ``get_config`` stores the bandwidth, and a model compiled with ``AnnealedStep`` round
trips through ``.keras``, but Keras serializes the compile config after the model config, so
the restored optimizer holds its own copy of the Bandwidth rather than the restored model's.
Re-link it after loading: ``model.optimizer.set_bandwidth(model)``.
"""

import keras
import tensorflow as tf
from keras import ops

from keras_diffusion import bandwidth as bandwidth_lib
from keras_diffusion import compat, validation
from keras_diffusion.optimizers.state import OptimizerStateMixin, check_learning_rate


@keras.saving.register_keras_serializable(package="keras_diffusion")
class AnnealedStep(OptimizerStateMixin, keras.optimizers.Optimizer):
    """Normalized gradient step of length ``learning_rate * sigma`` (Mobahi 2016, sec. 5.2).

    Args:
        learning_rate: ``eta``, the step length per unit of sigma; a float or a
            ``keras.optimizers.schedules.LearningRateSchedule``.
        bandwidth: where sigma comes from: a ``keras_diffusion.Bandwidth`` (read at every step,
            so a sigma schedule callback anneals the step), a Keras model holding exactly one
            distinct Bandwidth, or a number (a constant sigma).
        sigma_floor: the step uses ``max(sigma, sigma_floor)``, so training at sigma = 0 still
            moves by ``learning_rate * sigma_floor``; finite and >= 0.
        name: optimizer name.
        **kwargs: other ``keras.optimizers.Optimizer`` arguments (``weight_decay``,
            ``clipvalue``, ``use_ema``, ...). Gradient clipping runs before the
            normalization.

    Example:

    >>> model = models.builders.build_adding_rnn(method="diffusion", sigma=1.0)
    >>> optimizer = AnnealedStep(0.1, bandwidth=model)
    >>> model.compile(optimizer=optimizer, loss="mse")
    >>> model.fit(x, y, callbacks=[keras_diffusion.callbacks.LinearSigma(1.0, duration=20)])
    """

    def __init__(
        self,
        learning_rate=0.1,
        bandwidth=1.0,
        sigma_floor=0.01,
        name="annealed_step",
        **kwargs,
    ):
        super().__init__(learning_rate=check_learning_rate(learning_rate), name=name, **kwargs)
        self._source = _SigmaSource(bandwidth)
        self.sigma_floor = validation.nonnegative(
            "sigma_floor", sigma_floor, "(0 follows sec. 5.2 literally)"
        )

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.step_length = self.add_diagnostic("step_length")

    def get_bandwidth(self):
        """The sigma source: a ``keras_diffusion.Bandwidth`` or a constant float."""
        return self._source.target

    def set_bandwidth(self, bandwidth):
        """Changes the sigma source (a Bandwidth, a model holding one, or a number).

        E.g. re-link an optimizer restored by ``keras.saving.load_model`` to the restored
        model: ``model.optimizer.set_bandwidth(model)``. (A method, not a property: ``.keras``
        saving walks an optimizer's attributes and would save the model's Bandwidth again.)
        """
        self._source = _SigmaSource(bandwidth)

    def sigma(self):
        """The sigma the next step uses, before the floor: a float32 scalar tensor."""
        source = self.get_bandwidth()
        if isinstance(source, bandwidth_lib.Bandwidth):
            return source.value
        return ops.convert_to_tensor(source, "float32")

    def step_directions(self, grads):
        """Returns ``(directions, norm)`` with ``directions = sigma_eff * g / ||g||``.

        ``norm`` is the global norm of ``grads`` (non-finite when any gradient is; the
        guard then refuses the step). A zero gradient gives zero directions.
        """
        norm = tf.linalg.global_norm(grads)
        sigma = ops.maximum(self.sigma(), self.sigma_floor)
        scale = tf.where(norm > 0, sigma / tf.where(norm > 0, norm, 1.0), 0.0)
        return [g * ops.cast(scale, g.dtype) for g in grads], norm

    def _global_update_step(self, grads, trainable_variables, learning_rate):
        # Needs every gradient at once for the global norm, so it replaces Keras's
        # per-variable path (installed as its all-gradients hook below): all-reduce across
        # replicas (a no-op outside tf.distribute), normalize, then write through the
        # package's non-finite guard.
        variables = [
            v.value if isinstance(v, keras.Variable) else v for v in trainable_variables
        ]
        reduced = compat.all_reduce_sum_gradients(self, list(zip(grads, variables)))
        directions, norm = self.step_directions([g for g, _ in reduced])
        new = [
            v - d * ops.cast(learning_rate, v.dtype) for v, d in zip(variables, directions)
        ]
        length = ops.cast(learning_rate, "float32") * ops.maximum(self.sigma(), self.sigma_floor)
        self.step_length.assign(tf.where(norm > 0, length, 0.0))
        self.assign_if_finite(variables, new, checks=[norm])

    def get_config(self):
        config = super().get_config()
        config.update(bandwidth=self.get_bandwidth(), sigma_floor=self.sigma_floor)
        return config


setattr(AnnealedStep, compat.BACKEND_UPDATE_STEP, AnnealedStep._global_update_step)


class _SigmaSource:
    """Holds the optimizer's Bandwidth out of sight of ``.keras`` saving.

    The Bandwidth's variable belongs to the model and is saved with it; were the optimizer to
    expose the layer as an attribute, saving would walk it as optimizer state.
    """

    __slots__ = ("target",)

    def __init__(self, bandwidth):
        self.target = _resolve_bandwidth(bandwidth)


def _resolve_bandwidth(bandwidth):
    if isinstance(bandwidth, bandwidth_lib.Bandwidth):
        return bandwidth
    if isinstance(bandwidth, keras.Model):
        found = bandwidth_lib.bandwidths(bandwidth)
        if len(found) != 1:
            raise ValueError(
                f"Model {bandwidth.name!r} holds {len(found)} distinct bandwidths; "
                "AnnealedStep needs exactly one: pass the keras_diffusion.Bandwidth to use."
            )
        return found[0]
    if isinstance(bandwidth, dict):  # a serialized Bandwidth, from get_config
        return bandwidth_lib.resolve(bandwidth)
    try:
        return bandwidth_lib.check_sigma(bandwidth)
    except (TypeError, ValueError):
        raise ValueError(
            "bandwidth must be a keras_diffusion.Bandwidth, a model holding one, or a "
            f"constant sigma >= 0, got {bandwidth!r}."
        ) from None
