"""Martens & Sutskever (2011) on the pathological problems: the two training methods compared.

* ``hf`` -- Hessian-free with structural damping (``keras_diffusion.optimizers.HessianFree``,
  Gauss-Newton curvature, Levenberg-Marquardt ``lambda``, CG with Martens' stopping rule,
  backtracking and the Armijo line search; ``structural_damping`` ``mu`` on the hidden
  states of the recurrent layer ``"rnn"``; Pascanu 2014, sec. 4.3.2, eqs. 4.35-4.36).
  Large batches: the gradient on ``batch_size`` fresh sequences, the curvature on their
  leading ``curvature_fraction``.
* ``sgd`` -- SGD whose global gradient norm is clipped at ``clipnorm`` (Pascanu 2014,
  sec. 5.9.1, MSGD-C).

Both train the same network, :func:`models.rnn_builders.pathological_rnn` (one tanh layer
read out linearly at the target steps), as a ``keras_diffusion.Model`` on fresh sequences.

Example:

>>> from keras_diffusion.datasets import pathological
>>> task = pathological.PathologicalTask("addition", 20)
>>> config = MethodConfig("hf", batch_size=200, damping=1.0, structural_damping=1 / 30)
>>> model = build(task, config, units=16, seed=0)
"""

import dataclasses

import keras

import keras_diffusion
from keras_diffusion import validation
from keras_diffusion.optimizers import HessianFree
from models import rnn_builders

METHODS = ("hf", "sgd")
METHOD_NAMES = {"hf": "HF + structural damping", "sgd": "SGD + clipping"}


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """One method and its knobs (each method reads those that concern it).

    Args:
        method: ``"hf"`` or ``"sgd"``.
        batch_size: fresh sequences per step.
        damping: HF's initial Levenberg-Marquardt ``lambda``.
        structural_damping: HF's ``mu`` (Martens & Sutskever 2011: 1/30).
        curvature_fraction: HF's share of the batch for the curvature products.
        cg_max_iterations: HF's CG iteration cap.
        cg_epsilon: HF's relative-progress tolerance (Martens 2010: 5e-4; 0 runs CG to its
            cap).
        learning_rate: SGD's step size.
        clipnorm: SGD's global gradient-norm threshold.
    """

    method: str
    batch_size: int
    damping: float = 1.0
    structural_damping: float = 1.0 / 30.0
    curvature_fraction: float = 0.2
    cg_max_iterations: int = 50
    cg_epsilon: float = 5e-4
    learning_rate: float = 0.01
    clipnorm: float = 1.0

    def __post_init__(self):
        validation.one_of("method", self.method, METHODS)
        validation.positive_int("batch_size", self.batch_size)
        validation.positive("damping", self.damping)
        validation.nonnegative("structural_damping", self.structural_damping)
        validation.fraction("curvature_fraction", self.curvature_fraction)
        validation.positive_int("cg_max_iterations", self.cg_max_iterations)
        validation.nonnegative("cg_epsilon", self.cg_epsilon)
        validation.positive("learning_rate", self.learning_rate)
        validation.positive("clipnorm", self.clipnorm)

    def knobs(self):
        """The searched knobs of this method, by name."""
        if self.method == "hf":
            return {"damping": self.damping, "structural_damping": self.structural_damping}
        return {"learning_rate": self.learning_rate, "clipnorm": self.clipnorm}

    def optimizer(self):
        """A fresh optimizer of this configuration."""
        if self.method == "hf":
            return HessianFree(
                damping=self.damping,
                structural_damping=self.structural_damping,
                structural_layers=["rnn"],
                cg_max_iterations=self.cg_max_iterations,
                cg_epsilon=self.cg_epsilon,
                curvature_fraction=self.curvature_fraction,
            )
        return keras.optimizers.SGD(self.learning_rate, global_clipnorm=self.clipnorm)


def task_loss(task):
    """Mean squared error (addition, multiplication) or softmax cross-entropy on logits."""
    if task.regression:
        return "mse"
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def network(task, units, seed, init="smart_tanh"):
    """The uncompiled network (``rnn_builders.pathological_rnn``) with ``seed``'s weights."""
    return rnn_builders.pathological_rnn(task, units, init, seed=seed)


def build(task, config, units, seed, init="smart_tanh"):
    """The compiled ``keras_diffusion.Model`` of ``config`` for a ``PathologicalTask``.

    The network is :func:`network`. Neither method uses XLA: the addition and
    multiplication sequences change length from batch to batch (XLA would recompile).
    """
    net = network(task, units, seed, init)
    model = keras_diffusion.Model(net.inputs, net.outputs, name=f"martens_{config.method}")
    model.compile(optimizer=config.optimizer(), loss=task_loss(task), jit_compile=False)
    return model


def dataset(task, batch_size, seed):
    """Endless fresh ``(x, y)`` batches shaped for :func:`build`'s outputs."""
    data = task.dataset(batch_size, seed=seed)
    if task.regression:  # targets (n, 1) -> the model's (n, target_steps=1, 1)
        data = data.map(lambda x, y: (x, y[:, :, None]))
    return data
