"""The model builders of ``scripts/train.py``: one registry, any task of ``models.tasks``.

* ``diffused_rnn`` -- Mobahi's sec. 7 network (``builders.build_adding_rnn``) for sequence
  tasks read at the final step: diffused erf units, a shared bandwidth, so ``method =
  "diffusion"`` trains the diffused cost under a sigma schedule.
* ``rnn`` -- Pascanu's sec. 5.9.1 network (``rnn_builders.pathological_rnn``), sequence tasks.
* ``mlp`` -- a multilayer perceptron on flattened inputs whose hidden units are
  ``keras_diffusion.layers.DiffusedActivation`` sharing one bandwidth (Mobahi sec. 3: the
  diffused network; sigma = 0 is the plain MLP); with widths ``(400, 200, 100, 50, 25, 6,
  25, 50, 100, 200, 400)`` and the ``curves`` task it is the deep autoencoder of Hinton &
  Salakhutdinov (2006) / Martens (2010).

``build(name, task, config)`` returns an uncompiled functional ``keras.Model`` whose output
matches the task's targets.
"""

import dataclasses

import keras

import keras_diffusion
from keras_diffusion import validation
from keras_diffusion.layers import DiffusedActivation
from models import builders, rnn_builders

MODELS = ("diffused_rnn", "rnn", "mlp")
DIFFUSED = ("diffused_rnn", "mlp")  # models with a bandwidth: method "diffusion" applies


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (each builder reads those that concern it).

    Args:
        name: one of ``MODELS``.
        units: hidden units of the recurrent models.
        hidden: hidden widths of ``mlp``.
        activation: hidden activation of ``diffused_rnn`` and ``mlp``.
        init: ``rnn`` initialization (``rnn_builders.PATHOLOGICAL_INITS``).
        seed: seed of the initial weights.
    """

    name: str = "diffused_rnn"
    units: int = 10
    hidden: tuple = (100,)
    activation: str = "erf"
    init: str = "basic_tanh"
    seed: int = 0

    def __post_init__(self):
        validation.one_of("model", self.name, MODELS)
        validation.positive_int("units", self.units)
        for width in self.hidden:
            validation.positive_int("hidden entry", width)
        validation.one_of("init", self.init, rnn_builders.PATHOLOGICAL_INITS)
        keras_diffusion.activations.check_activation(self.activation)


def check_compatible(config, task_name, sequence, target_steps):
    """Raises ``ValueError`` when model ``config.name`` cannot train the task."""
    if config.name in ("diffused_rnn", "rnn") and not sequence:
        raise ValueError(
            f"--model={config.name} reads sequences; task {task_name!r} has none: use "
            "--model=mlp."
        )
    if config.name == "diffused_rnn" and target_steps != 1:
        raise ValueError(
            f"--model=diffused_rnn reads one final output; task {task_name!r} has "
            f"{target_steps} target steps: use --model=rnn."
        )


def mlp(input_shape, hidden, num_outputs, activation="erf", sigma=1.0, seed=0):
    """Flatten, then ``Dense(h) -> DiffusedActivation`` per width of ``hidden`` (one shared
    bandwidth starting at ``sigma``), then a linear ``Dense(num_outputs)``."""
    bandwidth = keras_diffusion.Bandwidth(sigma, name="sigma")
    inputs = keras.Input(input_shape)
    h = keras.layers.Flatten()(inputs)
    for i, width in enumerate(hidden):
        h = keras.layers.Dense(
            width, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i)
        )(h)
        h = DiffusedActivation(activation, bandwidth=bandwidth)(h)
    outputs = keras.layers.Dense(
        num_outputs, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + len(hidden))
    )(h)
    return keras.Model(inputs, outputs, name="mlp")


def build(config, task, method="diffusion", sigma=1.0, penalty=1e-4):
    """The ``config.name`` model for ``task`` (a ``models.tasks.Task``), uncompiled.

    ``method="sgd"`` fixes sigma at 0 (no penalty): the plain network, same initial weights.
    """
    check_compatible(config, task.config.name, task.sequence, task.target_steps)
    if method == "sgd":
        sigma, penalty = 0.0, 0.0
    if config.name == "diffused_rnn":
        return builders.build_adding_rnn(
            method, units=config.units, activation=config.activation, sigma=sigma,
            penalty=penalty, length=task.input_shape[0], seed=config.seed,
            input_dim=task.input_shape[-1], num_outputs=task.num_outputs,
        )
    if config.name == "mlp":
        return mlp(task.input_shape, config.hidden, task.num_outputs, config.activation,
                   sigma, config.seed)
    net = rnn_builders.pathological_rnn(task, config.units, config.init, seed=config.seed)
    if task.kind == "classification":
        return net
    flat = keras.layers.Reshape((task.target_steps * task.num_outputs,))(net.output)
    return keras.Model(net.input, flat, name=net.name)
