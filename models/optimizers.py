"""The optimizer registry of ``scripts/train.py``: a name, a factory, a default step size.

Keras optimizers by their Keras names, and the package's: ``annealed`` (Mobahi sec. 5.2,
``keras_diffusion.optimizers.AnnealedStep``), ``gauss_newton`` (Pascanu sec. 4.3,
``GaussNewton``), ``hessian_free`` (Martens 2010, ``HessianFree``), ``saddle_free`` (Pascanu
sec. 4.5, ``SaddleFreeNewton``), ``gaussian_continuation`` (Adam with a learned perturbation
variance, ``GaussianContinuation``), ``entropy_sgd``, ``hj`` and ``heat`` (Chaudhari 2018
sec. 7). A new optimizer joins with one line::

    OPTIMIZERS["my_optimizer"] = Entry(lambda hp, model: MyOptimizer(hp.learning_rate), 0.1)

The factory receives the :class:`Hyperparameters` and the model (whose bandwidth
``annealed`` follows). Optimizers subclassing ``ClosureOptimizer`` need a
``keras_diffusion.Model``; ``train.py`` rebuilds the model as one for them.
"""

import dataclasses
from typing import Callable

import keras

from keras_diffusion import validation
from keras_diffusion.optimizers import (
    HEAT,
    HJ,
    AnnealedStep,
    ClosureOptimizer,
    EntropySGD,
    GaussianContinuation,
    GaussNewton,
    HessianFree,
    SaddleFreeNewton,
)

KERAS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "lion")


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """Optimizer hyperparameters (each optimizer reads those that concern it).

    ``learning_rate`` ``None`` is the optimizer's default (``Entry.learning_rate``);
    ``clipnorm`` (global gradient-norm clipping, 0: none) applies to the Keras optimizers.
    """

    learning_rate: float = None
    momentum: float = 0.0
    clipnorm: float = 0.0
    sigma_floor: float = 0.01
    damping: float = 1e-3
    cg_max_iterations: int = 50

    def __post_init__(self):
        if self.learning_rate is not None:
            validation.positive("learning_rate", self.learning_rate)
        validation.nonnegative("momentum", self.momentum)
        validation.nonnegative("clipnorm", self.clipnorm)
        validation.nonnegative("sigma_floor", self.sigma_floor)
        validation.positive("damping", self.damping)
        validation.positive_int("cg_max_iterations", self.cg_max_iterations)


@dataclasses.dataclass(frozen=True)
class Entry:
    """``factory(hyperparameters, model)`` and its default learning rate."""

    factory: Callable
    learning_rate: float


def _keras(name):
    def factory(hp, model):
        del model
        config = {"learning_rate": hp.learning_rate}
        if hp.clipnorm:
            config["global_clipnorm"] = hp.clipnorm
        if name == "sgd":
            config["momentum"] = hp.momentum
        return keras.optimizers.get({"class_name": name, "config": config})

    return factory


OPTIMIZERS = {name: Entry(_keras(name), 0.1 if name in ("sgd", "adagrad") else 1e-3)
              for name in KERAS}
OPTIMIZERS["annealed"] = Entry(
    lambda hp, model: AnnealedStep(hp.learning_rate, bandwidth=model, sigma_floor=hp.sigma_floor),
    0.1,
)
OPTIMIZERS["gauss_newton"] = Entry(
    lambda hp, model: GaussNewton(damping=hp.damping, cg_max_iterations=hp.cg_max_iterations,
                                  learning_rate=hp.learning_rate),
    1.0,
)
# HessianFree and SaddleFreeNewton adapt their damping from their own initial values
# (--damping is GaussNewton's fixed damping).
OPTIMIZERS["hessian_free"] = Entry(
    lambda hp, model: HessianFree(cg_max_iterations=hp.cg_max_iterations,
                                  learning_rate=hp.learning_rate),
    1.0,
)
OPTIMIZERS["saddle_free"] = Entry(
    lambda hp, model: SaddleFreeNewton(learning_rate=hp.learning_rate), 1.0
)
OPTIMIZERS["gaussian_continuation"] = Entry(
    lambda hp, model: GaussianContinuation(keras.optimizers.Adam(hp.learning_rate)), 1e-3
)
OPTIMIZERS["entropy_sgd"] = Entry(lambda hp, model: EntropySGD(hp.learning_rate), 0.1)
OPTIMIZERS["hj"] = Entry(lambda hp, model: HJ(hp.learning_rate), 0.1)
OPTIMIZERS["heat"] = Entry(lambda hp, model: HEAT(hp.learning_rate), 0.1)


def learning_rate(name, hp):
    """The learning rate optimizer ``name`` uses under ``hp``."""
    validation.one_of("optimizer", name, tuple(OPTIMIZERS))
    return OPTIMIZERS[name].learning_rate if hp.learning_rate is None else hp.learning_rate


def make(name, hp, model):
    """Optimizer ``name`` (a key of ``OPTIMIZERS``) for ``model``."""
    rate = learning_rate(name, hp)
    return OPTIMIZERS[name].factory(dataclasses.replace(hp, learning_rate=rate), model)


def needs_closure(optimizer):
    """Whether ``optimizer`` needs a ``keras_diffusion.Model`` (a closure train step)."""
    return isinstance(optimizer, ClosureOptimizer)
