"""Hidden-state probes: a recurrent layer's states as differentiable functions of the weights.

Two methods of Pascanu's thesis need the hidden states ``h[t]`` of a recurrent layer, not only
the model's outputs:

- structural damping (Martens & Sutskever 2011; thesis sec. 4.3.2, eqs. (4.35)-(4.36)) adds
  the Gauss-Newton matrix of a penalty on the change of the hidden states, so a curvature
  product needs ``J_h v`` and ``J_h^T u``, the Jacobian of the states with respect to the
  weights and its transpose;
- the norm-preserving regularizer Omega (sec. 5.8, eqs. (5.20)-(5.21)) needs the states
  ``h[k]``, the inputs ``x[k+1]`` and the back-propagated errors ``dL/dh[k+1]``.

:func:`capture` serves both. Inside ``with capture([layer, ...], tape=tape) as captured``,
every call of a listed layer records a :class:`StateRecord`:

- ``states``: ``h[1..T]``, shape ``(batch, T, units)``: computed from the weights, so
  differentiable with respect to them (a tape, ``ForwardAccumulator`` or
  ``keras_diffusion.curvature.linearize`` around the call gives ``J_h v``/``J_h^T u``);
- ``previous``: ``h[0..T-1]``, the state each step starts from;
- ``inputs``: ``x[1..T]``, the layer's input sequence;
- ``probe``: a zero tensor shaped like ``states`` that is added to the states inside the
  loop and watched by every tape given as ``tape=``; so ``tape.gradient(loss, record.probe)``
  is ``dL/dh[1..T]`` (the error back-propagation through time delivers at each step), from
  the same backward pass as the weight gradient.

``keras_diffusion.training.Closure.outputs_and_states`` evaluates a model's outputs and the
states of the given layers at any weights (its stateless scope), which is what a curvature
product of structural damping differentiates.

Supported layers declare ``hidden_state_probes = True`` and record through
:func:`requested` / :meth:`Capture.record`: :class:`~keras_diffusion.layers.DeepTransitionRNN`
(forward, unmasked). Any other layer given to :func:`capture` is a ``TypeError``. A capture
is local to the thread that opens it (each replica of ``tf.distribute.MirroredStrategy``
records its own share of the batch).

Example:

>>> import keras, numpy as np, tensorflow as tf, keras_diffusion as kd
>>> rnn = kd.layers.DeepTransitionRNN(kd.layers.DeepTransitionRNNCell(4), return_sequences=True)
>>> model = keras.Sequential([keras.Input((5, 2)), rnn, keras.layers.Dense(1)])
>>> x = np.ones((3, 5, 2), "float32")
>>> with tf.GradientTape() as tape:
...     with kd.probes.capture([rnn], tape=tape) as captured:
...         loss = tf.reduce_mean(model(x) ** 2)
>>> errors = tape.gradient(loss, captured[rnn].probe)   # dL/dh[t], shape (3, 5, 4)
"""

import collections
import contextlib
import threading

StateRecord = collections.namedtuple("StateRecord", ["states", "previous", "inputs", "probe"])
StateRecord.__doc__ = """One call of a probed layer: ``states`` ``h[1..T]``, ``previous``
``h[0..T-1]``, ``inputs`` ``x[1..T]`` (all batch-major) and the zero ``probe`` added to
``states`` (its gradient is ``dL/dh[1..T]``)."""

_ACTIVE = threading.local()


class Capture:
    """The records of one :func:`capture` block, looked up by layer: ``captured[layer]``."""

    def __init__(self, layers, tapes):
        self.layers = list(layers)
        self._tapes = list(tapes)
        self._records = {}

    def __contains__(self, layer):
        return id(layer) in self._records

    def __getitem__(self, layer):
        if not any(layer is listed for listed in self.layers):
            raise KeyError(f"Layer {getattr(layer, 'name', layer)!r} is not probed here.")
        if id(layer) not in self._records:
            raise KeyError(
                f"Layer {layer.name!r} was not called inside the capture block; call the "
                "model (or the layer) inside `with capture(...)`."
            )
        return self._records[id(layer)]

    def watch(self, tensor):
        """Watches ``tensor`` on every tape given to :func:`capture`."""
        for tape in self._tapes:
            tape.watch(tensor)

    def record(self, layer, states, previous, inputs, probe):
        """Stores the record of ``layer``'s call (used by the layer's implementation)."""
        if id(layer) in self._records:
            raise ValueError(
                f"Layer {layer.name!r} was called twice inside one capture block; probe a "
                "shared layer's calls in separate blocks."
            )
        self._records[id(layer)] = StateRecord(states, previous, inputs, probe)


def _stack():
    if not hasattr(_ACTIVE, "stack"):
        _ACTIVE.stack = []
    return _ACTIVE.stack


@contextlib.contextmanager
def capture(layers, tape=None):
    """Records the hidden states of ``layers`` while the block runs (module docstring).

    Args:
        layers: the layers to probe (each must support probes, e.g. a
            :class:`~keras_diffusion.layers.DeepTransitionRNN`).
        tape: a ``tf.GradientTape`` (or a list of them) that watches each record's
            ``probe``; ``None``: no tape (``states`` stay differentiable through any tape
            that watches the weights, but the probe's gradient is not available).

    Yields:
        A :class:`Capture`; after the call, ``captured[layer]`` is the layer's
        :class:`StateRecord`.
    """
    layers = list(layers)
    for layer in layers:
        if not getattr(type(layer), "hidden_state_probes", False):
            raise TypeError(
                f"Layer {getattr(layer, 'name', layer)!r} ({type(layer).__name__}) does not "
                "support hidden-state probes; build the recurrent layer as "
                "keras_diffusion.layers.DeepTransitionRNN(keras_diffusion.layers."
                "DeepTransitionRNNCell(...))."
            )
    tapes = [] if tape is None else (list(tape) if isinstance(tape, (list, tuple)) else [tape])
    captured = Capture(layers, tapes)
    stack = _stack()
    stack.append(captured)
    try:
        yield captured
    finally:
        stack.remove(captured)


def requested(layer):
    """The innermost active :class:`Capture` probing ``layer``, or ``None``.

    A supported layer calls this in its forward pass and, when it gets a capture, adds the
    capture's watched zero probe to its states and calls :meth:`Capture.record`.
    """
    for captured in reversed(_stack()):
        if any(layer is listed for listed in captured.layers):
            return captured
    return None
