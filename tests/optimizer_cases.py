"""Every package optimizer in a tiny configuration, and the tiny model they train.

Shared by the mixed-precision tests (``test_mixed_precision_optimizers.py``) and the XLA step
tests (``test_xla_steps.py``). The model is ``Dense(4) -> DiffusedActivation(tanh) -> Dense(1)``
on 3 inputs; the optimizers take few inner iterations (CG, Lanczos, Entropy-SGD's ``L``) so that
one step traces and runs in about a second.
"""

import keras
import numpy as np

import keras_diffusion as kd
from keras_diffusion.optimizers import (
    HEAT,
    HJ,
    AnnealedStep,
    EntropySGD,
    GaussianContinuation,
    GaussNewton,
    HessianFree,
    SaddleFreeNewton,
)

# Entropy-SGD, HJ and HEAT move the weights every INNER_STEPS steps (their outer step).
INNER_STEPS = 2

OPTIMIZERS = {
    "annealed_step": lambda model: AnnealedStep(0.1, bandwidth=model),
    "gauss_newton": lambda model: GaussNewton(damping=0.1, cg_max_iterations=3),
    "hessian_free": lambda model: HessianFree(cg_max_iterations=3),
    "saddle_free_newton": lambda model: SaddleFreeNewton(lanczos_num_steps=4, line_search_steps=2),
    "gaussian_continuation": lambda model: GaussianContinuation(keras.optimizers.SGD(0.1)),
    "entropy_sgd": lambda model: EntropySGD(0.1, num_inner_steps=INNER_STEPS),
    "hj": lambda model: HJ(0.1, num_inner_steps=INNER_STEPS),
    "heat": lambda model: HEAT(0.1, num_inner_steps=INNER_STEPS),
}


def build_model(policy="float32", seed=0):
    """The tiny diffused network under dtype policy ``policy`` (weights fixed by ``seed``)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(seed)
        return kd.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(4),
                kd.layers.DiffusedActivation("tanh", bandwidth=0.3),
                keras.layers.Dense(1),
            ]
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)


def data(n=16, seed=0):
    """Inputs ``(n, 3)`` and targets ``tanh(x_0)``, float32."""
    x = np.random.default_rng(seed).normal(size=(n, 3)).astype("float32")
    return x, np.tanh(x[:, :1])


def compiled(name, policy="float32", jit_compile=False, **compile_kwargs):
    """``build_model(policy)`` compiled with optimizer ``name`` and mean squared error."""
    model = build_model(policy)
    model.compile(OPTIMIZERS[name](model), "mse", jit_compile=jit_compile, **compile_kwargs)
    return model
