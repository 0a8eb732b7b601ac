"""The norm-preserving regularizer Omega of Pascanu's thesis (sec. 5.8) and its weight schedule.

Omega prefers parameters for which the back-propagated error keeps its norm as it travels
back one step in time (eq. (5.20))::

    Omega = sum_k ( ||delta[k+1] dh[k+1]/dh[k]||^2 / ||delta[k+1]||^2 - 1 )^2,
    delta[k+1] = dL/dh[k+1]  (the error BPTT delivers at step k+1).

Its gradient is the "immediate" derivative of eq. (5.21): ``h[k]`` and ``delta[k+1]`` are
constants; only the one-step Jacobian ``dh[k+1]/dh[k]`` (and the pre-activation it is taken
at, computed from the constant ``h[k]``) depends on the weights. :func:`omega` implements
exactly this: it evaluates all steps at once (no time loop: the states are constants) with
a vector-Jacobian product of the cell's one-step map.

Use in training: wrap a model with :class:`NormPreservingModel`, naming the
:class:`~keras_diffusion.layers.DeepTransitionRNN` to regularize. Its train step runs one
BPTT that returns both the loss gradient and every ``delta[k+1]`` (through the zero probes of
``keras_diffusion.probes.capture``, added to the states), then adds ``weight(step) * dOmega/dtheta``. The weight follows
:class:`OmegaWeight`: constant (thesis synthetic tasks, alpha in {0.5 .. 4}) or the
``1 / (1 + max(0, t - start) / decay_steps)`` decay used on natural data (sec. 5.9.3).
Combine it with gradient-norm clipping (``global_clipnorm=`` of any Keras optimizer,
thesis sec. 5.7), which the thesis always uses together with Omega.

Example:

>>> import keras, keras_diffusion as kd
>>> rnn = kd.layers.DeepTransitionRNN(kd.layers.DeepTransitionRNNCell(50), return_sequences=True)
>>> inputs = keras.Input((None, 6))
>>> base = keras.Model(inputs, keras.layers.Dense(4)(rnn(inputs)))
>>> model = kd.regularizers.NormPreservingModel(base, rnn, weight=kd.regularizers.OmegaWeight(
...     0.05, decay_steps=2800))   # thesis sec. 5.9.3: alpha_t = 0.05 / (1 + t / 2800)
>>> model.compile(keras.optimizers.SGD(0.05, global_clipnorm=45.0), loss="mse")
"""

import math

import keras
import tensorflow as tf
from keras import ops, tree

from keras_diffusion import compat, probes
from keras_diffusion.optimizers import diagnostics
from keras_diffusion.layers.deep_transition import DeepTransitionRNN


def omega(step_fn, states, errors, inputs):
    """Omega of eq. (5.20) with the immediate-derivative semantics of eq. (5.21).

    Args:
        step_fn: ``step_fn(h, x) -> h_next``, the one-step transition, batched over the
            leading axis (e.g. ``lambda h, x: cell(x, [h])[0]``).
        states: ``h[k]``, shape ``(batch, T, units)``: the state each step starts from.
        errors: ``delta[k+1] = dL/dh[k+1]``, shape ``(batch, T, units)``.
        inputs: ``x[k+1]``, shape ``(batch, T, features)``: the input of that step.

    Returns:
        The scalar ``mean over the batch of sum over k of Omega_k``. Steps with a zero
        error (no loss depends on them) contribute 0. Its gradient with respect to the
        weights used by ``step_fn`` holds ``states``, ``errors`` (and ``inputs``) constant.
    """
    batch = ops.shape(states)[0]
    h = tf.stop_gradient(ops.reshape(states, (-1, states.shape[-1])))
    x = tf.stop_gradient(ops.reshape(inputs, (-1, inputs.shape[-1])))
    # ||delta J||^2 / ||delta||^2 = ||(delta / ||delta||) J||^2, computed from unit vectors in
    # float32 so that scaled (mixed-precision) errors cannot overflow.
    delta = tf.stop_gradient(ops.cast(ops.reshape(errors, (-1, errors.shape[-1])), "float32"))
    norm = ops.sqrt(ops.sum(ops.square(delta), axis=-1, keepdims=True))
    unit = delta / ops.where(norm > 0, norm, ops.ones_like(norm))
    with tf.GradientTape() as tape:
        tape.watch(h)
        h_next = step_fn(h, x)
    back = tape.gradient(h_next, h, output_gradients=ops.cast(unit, h_next.dtype))
    ratio = ops.sum(ops.square(ops.cast(back, "float32")), axis=-1)
    terms = ops.where(norm[:, 0] > 0, ops.square(ratio - 1.0), ops.zeros_like(ratio))
    return ops.sum(terms) / ops.cast(batch, terms.dtype)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class OmegaWeight:
    """Weight of Omega at optimizer step ``t``: ``initial / (1 + max(0, t - start) / decay_steps)``.

    ``decay_steps=None`` keeps it constant (thesis sec. 5.9.1 synthetic tasks). The thesis'
    natural-data schedules are ``OmegaWeight(0.05, decay_steps=2800)`` (character
    prediction, sec. 5.9.3); with ``decay_steps`` = steps per epoch, ``OmegaWeight(0.5, ...)``
    gives ``0.5 / (1 + epoch)``, the thesis' ``1/(2t)`` per-epoch schedule (t counted from 1).

    Args:
        initial: weight alpha at step 0 (>= 0).
        decay_steps: ``beta`` of the 1/t decay (> 0), or ``None`` for a constant weight.
        start: step ``t0`` at which the decay starts (>= 0).
    """

    def __init__(self, initial, decay_steps=None, start=0):
        if not (math.isfinite(initial) and initial >= 0):
            raise ValueError(f"initial Omega weight must be finite and >= 0, got {initial!r}.")
        if decay_steps is not None and not (math.isfinite(decay_steps) and decay_steps > 0):
            raise ValueError(
                f"decay_steps must be > 0 (or None for a constant weight), got {decay_steps!r}."
            )
        if not (math.isfinite(start) and start >= 0):
            raise ValueError(f"start must be a step >= 0, got {start!r}.")
        self.initial, self.decay_steps, self.start = float(initial), decay_steps, start

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.decay_steps is None:
            return ops.cast(self.initial, "float32") + 0.0 * step
        return self.initial / (1.0 + ops.maximum(0.0, step - self.start) / self.decay_steps)

    def get_config(self):
        return {"initial": self.initial, "decay_steps": self.decay_steps, "start": self.start}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class NormPreservingModel(keras.Model):
    """Trains ``model`` on its compiled loss plus ``weight(t) * Omega`` of one recurrent layer.

    The gradient added is the immediate derivative of eq. (5.21) [Pascanu 2014, sec. 5.8];
    ``delta[k+1] = dL/dh[k+1]`` comes from the same BPTT as the loss gradient (no extra
    pass through time), and Omega is evaluated with the cell in inference mode (no dropout).
    The logs report ``omega``, Omega at the current batch, and the optimizer's diagnostics
    (``keras_diffusion.optimizers.diagnostics``, e.g. ``AnnealedStep``'s ``rejected_steps``).
    Inference and saving use the wrapped ``model`` (``model.model``).

    Args:
        model: the Keras model to train.
        layer: a :class:`~keras_diffusion.layers.DeepTransitionRNN` inside ``model``, run
            forward and without a mask.
        weight: an :class:`OmegaWeight` or a number (constant weight).
    """

    def __init__(self, model, layer, weight=1.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(layer, DeepTransitionRNN):
            raise TypeError(
                f"NormPreservingModel regularizes a DeepTransitionRNN, got {layer!r}; build "
                "the recurrent layer as kd.layers.DeepTransitionRNN(kd.layers."
                "DeepTransitionRNNCell(...))."
            )
        if not any(inner is layer for inner in compat.flatten_layers(model, include_self=False)):
            raise ValueError(
                f"Layer {layer.name!r} is not part of model {model.name!r}; pass the "
                "DeepTransitionRNN that the model calls, e.g. model.get_layer(name)."
            )
        self.model = model
        self.layer = layer
        self.weight = weight if isinstance(weight, OmegaWeight) else OmegaWeight(weight)

    def get_config(self):
        """The wrapped model's config, the regularized layer's name and the weight schedule."""
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.model),
            "layer": self.layer.name,
            "weight": keras.saving.serialize_keras_object(self.weight),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        name = config.pop("layer")
        layer = next(
            (inner for inner in compat.flatten_layers(model, include_self=False)
             if inner.name == name),
            None,
        )
        if layer is None:
            raise ValueError(
                f"The NormPreservingModel config names layer {name!r}, which model "
                f"{model.name!r} does not contain."
            )
        weight = keras.saving.deserialize_keras_object(config.pop("weight"))
        return cls(model, layer, weight, **config)

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            with probes.capture([self.layer], tape=tape) as captured:
                y_pred = self(x, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            compat.loss_tracker(self).update_state(
                compat.unscale_loss_for_distribution(loss),
                sample_weight=ops.shape(tree.flatten(x)[0])[0],
            )
            loss = self.optimizer.scale_loss(loss)
        record = captured[self.layer]
        # Omega is invariant to the scale of the errors, so a loss scale does not change it.
        *grads, errors = tape.gradient(loss, variables + [record.probe])
        cell = self.layer.cell
        with tf.GradientTape() as omega_tape:
            value = omega(
                lambda h, u: cell(u, [h], training=False)[0],
                record.previous,
                errors,
                record.inputs,
            )
            scaled = self.optimizer.scale_loss(compat.scale_loss_for_distribution(value))
        omega_grads = omega_tape.gradient(scaled, variables)
        alpha = self.weight(self.optimizer.iterations)
        grads = [
            g if og is None else (og * ops.cast(alpha, og.dtype) if g is None else g + alpha * og)
            for g, og in zip(grads, omega_grads)
        ]
        self.optimizer.apply(grads, variables)
        logs = self.compute_metrics(x, y, y_pred, sample_weight)
        return {**logs, "omega": value, **diagnostics.read(self.optimizer)}
