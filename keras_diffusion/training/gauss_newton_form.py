"""Whether a model's compiled loss has a Gauss-Newton form (Pascanu 2014, sec. 4.3.2).

The generalized Gauss-Newton matrix ``G = J^T H_L J`` is a useful curvature (positive
semi-definite, Eq. 4.33-4.34) only when the loss is convex in the model's outputs with a
non-zero Hessian there, and it is the matching Fisher metric (Eq. 4.39-4.42) when the outputs
are the natural parameters (logits) of the loss. Three kinds of losses break this:

- piecewise-linear losses (mean absolute error, hinge, ...): ``H_L = 0`` almost everywhere,
  so ``G`` is zero and a Gauss-Newton step is the damped gradient step ``-g / lambda``;
- losses on probabilities (a cross-entropy with ``from_logits=False`` after a softmax or
  sigmoid layer, KL divergence): the softmax sits inside ``J``, ``H_L`` blows up near 0/1 and
  ``G`` is not the Fisher matrix;
- non-convex losses (cosine similarity, a concave custom loss): ``H_L`` is indefinite, and
  conjugate gradient on an indefinite ``G`` is meaningless.

:func:`check` refuses the Keras losses of the second kind, cosine similarity, and a
piecewise-linear loss that is the model's only loss, naming the fix; it warns about a
piecewise-linear loss next to others (its output contributes nothing to ``G``) and about
losses it cannot classify (custom losses, Huber, log-cosh, ...),
whose ``G`` uses the autodiff output Hessian and is PSD only if the loss is convex.
"""

import warnings

import keras

from keras_diffusion import compat

_PIECEWISE_LINEAR = (
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "hinge",
    "categorical_hinge",
)
_NOT_CONVEX = ("cosine_similarity",)
# Squared errors: H_L is constant and positive semi-definite (G is exact with the autodiff H_L).
_SQUARED_ERRORS = ("mean_squared_error", "SequenceSquaredError")
_LOGIT_CROSS_ENTROPIES = (
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
)
_PROBABILITY_LOSSES = _LOGIT_CROSS_ENTROPIES + (
    "binary_focal_crossentropy",
    "categorical_focal_crossentropy",
    "kl_divergence",
)
_FIX = (
    "Use mean squared error, or a cross-entropy with from_logits=True on a model whose last "
    "layer outputs logits (e.g. keras.losses.SparseCategoricalCrossentropy(from_logits=True) "
    "and no softmax)"
)


def _entries(loss):
    """The single losses of a ``compile(loss=...)`` argument (a loss, list or dict)."""
    if isinstance(loss, dict):
        return [entry for value in loss.values() for entry in _entries(value)]
    if isinstance(loss, (list, tuple)):
        return [entry for value in loss for entry in _entries(value)]
    return [] if loss is None else [loss]


def _describe(loss):
    """``(function name, from_logits)`` of one Keras loss (string, function or object)."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, compat.LossFunctionWrapper):
        return loss.fn.__name__, bool(loss.get_config().get("from_logits", False))
    return getattr(loss, "__name__", type(loss).__name__), False


def check(model, optimizer_name):
    """Raises ``ValueError`` if ``model``'s compiled loss has no Gauss-Newton form.

    Warns (``UserWarning``) for losses it cannot classify. ``optimizer_name`` goes into the
    messages.
    """
    entries = _entries(getattr(model, "loss", None))
    if not entries:
        raise ValueError(
            f"{optimizer_name} needs a compiled loss: its Gauss-Newton matrix is built from "
            f"it (add_loss terms are not part of G). Call model.compile(loss=...). {_FIX}."
        )
    described = [_describe(loss) for loss in entries]
    linear = [name for name, _ in described if name in _PIECEWISE_LINEAR]
    if len(linear) == len(described):
        raise ValueError(
            f"{optimizer_name} cannot use the loss {linear[0]!r}: it is piecewise linear in "
            f"the outputs, so its Gauss-Newton matrix is zero. {_FIX}."
        )
    for name, from_logits in described:
        if name in _PIECEWISE_LINEAR:
            warnings.warn(
                f"{optimizer_name}: the loss {name!r} is piecewise linear in the outputs and "
                "adds nothing to the Gauss-Newton matrix (only its gradient counts).",
                stacklevel=3,
            )
            continue
        if name in _NOT_CONVEX:
            raise ValueError(
                f"{optimizer_name} cannot use the loss {name!r}: it is not convex in the "
                f"outputs, so its Gauss-Newton matrix is indefinite. {_FIX}."
            )
        if name in _PROBABILITY_LOSSES and not (from_logits and name in _LOGIT_CROSS_ENTROPIES):
            raise ValueError(
                f"{optimizer_name} cannot use the loss {name!r} on probabilities "
                f"(from_logits=False): its Gauss-Newton matrix is not the Fisher matrix and "
                f"is ill-conditioned near 0 and 1. {_FIX}."
            )
        if name not in _SQUARED_ERRORS and name not in _LOGIT_CROSS_ENTROPIES:
            warnings.warn(
                f"{optimizer_name}: the loss {name!r} has no known Gauss-Newton form; its "
                "Gauss-Newton matrix uses the autodiff Hessian of the loss in the outputs, "
                "which is positive semi-definite only if the loss is convex in the outputs "
                f"(a concave loss makes the steps meaningless). {_FIX}.",
                stacklevel=3,
            )
