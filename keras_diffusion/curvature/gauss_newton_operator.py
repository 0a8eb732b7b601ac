"""The Gauss-Newton matrix of one batch as an operator, linearized once for many products.

A CG solve of Hessian-free optimization (Martens 2010, sec. 4; Pascanu 2014, thesis,
Sec. 4.1.2 and 4.3.2) multiplies the generalized Gauss-Newton matrix ``G = J^T H_L J``
(Eq. 4.33-4.34) by a new vector at every iteration, always at the same weights. The forward
pass of the network, and so ``J``, is the same for all of them: `GaussNewtonOperator`
records it once and reuses it for every product:

* ``"recorded"``: one forward pass on a persistent tape when the operator is built (or one
  recorded elsewhere, ``recording``: ``Closure.linearization()`` is the train step's); each
  product runs ``J v`` by differentiating the recorded linear map ``u -> J^T u`` in ``u``
  (`forward.record`), ``H_L`` analytically (`loss_hessians`) and ``J^T`` by reverse mode
  through the same tape: two backward-like passes, no forward pass;
* ``"forward"``: every product recomputes the forward pass with a ``ForwardAccumulator``
  (``J v``) on a tape (``J^T``), i.e. `products.ggn_vp` (falling back to double-backward
  where forward mode fails);
* ``"double_backward"``: every product recomputes the forward pass and takes ``J v`` by
  double-backward;
* ``"auto"``: the fastest for the model's `structure` in
  ``scripts/benchmark_hessian_free.py`` (`choose_mode`, `FASTEST`; README, Benchmarks).

All modes give the same products (to float32 rounding) and run eagerly, inside
``tf.function``, in ``tf.while_loop`` bodies (the solvers) and with ``jit_compile=True``.
"""

import keras

from keras_diffusion import compat, validation
from keras_diffusion.curvature import forward, products

MODES = ("auto", "recorded", "forward", "double_backward")
# The fastest mode of an HF step per network structure, measured without XLA (Keras's
# default on CPU) by scripts/benchmark_hessian_free.py (README, Benchmarks; a test checks
# the README's table against this rule): the MLP ("dense"), LeNet-5 ("convolution"), the
# recurrent net unrolled ("dense": a straight-line graph) and in a tf.while_loop.
FASTEST = {"dense": "recorded", "convolution": "recorded", "while_loop": "recorded"}
DEFAULT_MODE = "recorded"  # without a model to inspect
_RECOMPUTE = {"forward": "auto", "double_backward": "double_backward"}
_CONVOLUTIONS = tuple(
    getattr(keras.layers, name)
    for name in ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
                 "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
                 "SeparableConv2D")
)


def structure(model):
    """The structure of ``model`` that the ``"auto"`` mode is chosen by (`FASTEST`).

    ``"while_loop"`` if a recurrent layer runs its time loop as a ``tf.while_loop`` (a
    layer with a ``cell`` and ``unroll=False``, e.g. ``keras.layers.SimpleRNN``,
    ``keras_diffusion.layers.DeepTransitionRNN``), else ``"convolution"`` if it has a
    convolution layer, else ``"dense"`` (unrolled recurrent nets included).
    """
    layers = compat.flatten_layers(model)
    if any(hasattr(layer, "cell") and not getattr(layer, "unroll", True) for layer in layers):
        return "while_loop"
    if any(isinstance(layer, _CONVOLUTIONS) for layer in layers):
        return "convolution"
    return "dense"


def check_mode(mode, name="mode"):
    """Returns ``mode`` if it is one of `MODES`, else raises naming the argument ``name``."""
    return validation.one_of(
        name, mode, MODES, 'Use "auto" (the measured fastest) unless timing modes.'
    )


def choose_mode(mode, model=None):
    """The product mode ``mode`` names for ``model``.

    ``"auto"`` resolves to the measured fastest for the model's `structure` (`FASTEST`), or
    to `DEFAULT_MODE` without a model; other modes are returned as given.
    """
    mode = check_mode(mode)
    if mode != "auto":
        return mode
    return DEFAULT_MODE if model is None else FASTEST[structure(model)]


class GaussNewtonOperator:
    """``v -> J^T H_L J v`` at fixed ``params`` (Pascanu 2014, Eq. 4.33-4.34).

    Args:
        outputs_fn: callable ``outputs_fn(params) -> tensor or nest`` (the model outputs).
        params: list of tensors, the point of linearization.
        loss_fn: callable ``loss_fn(outputs) -> scalar`` whose output-Hessian is ``H_L``;
            may be ``None`` when ``loss_hessian`` is given.
        loss_hessian: ``None`` or an analytic ``(outputs, u) -> H_L u`` (a nest of them for
            several outputs), e.g. ``loss_hessians.from_keras_loss(loss, y_true)``.
        mode: ``"auto"``, ``"recorded"``, ``"forward"`` or ``"double_backward"`` (module
            docstring). ``"recorded"`` runs the forward pass here, once, unless
            ``recording`` is given.
        recording: ``None`` or a ``forward.RecordedLinearization`` of ``outputs_fn`` at
            ``params`` recorded elsewhere (e.g. ``Closure.linearization()``, the train
            step's forward pass) for the ``"recorded"`` mode to reuse: then the operator
            runs no forward pass at all.

    Calling the operator on a list of tensors shaped like ``params`` returns ``G v`` (a list
    in the params' dtypes), exactly `products.ggn_vp` at ``params``.

    Example:
    ```python
    gauss_newton = GaussNewtonOperator(outputs_fn, params, None, loss_hessian=hessian)
    step = solvers.conjugate_gradient(gauss_newton, neg_grad, damping=1e-3).x
    ```
    """

    def __init__(self, outputs_fn, params, loss_fn=None, loss_hessian=None, mode="auto",
                 recording=None):
        self.mode = choose_mode(mode)
        self._params = forward.as_list(params, "params")
        self._outputs_fn = outputs_fn
        self._hessian = products.output_hessian(loss_fn, loss_hessian)
        self._recording = None
        if self.mode == "recorded":
            self._recording = recording or forward.record(outputs_fn, self._params)

    def __call__(self, vectors):
        if self._recording is None:
            return products.ggn_vp(
                self._outputs_fn, None, self._params, vectors, mode=_RECOMPUTE[self.mode],
                loss_hessian=self._hessian,
            )
        lin = self._recording
        return products.gauss_newton_product(lin, lin.jvp_of(vectors), self._hessian)
