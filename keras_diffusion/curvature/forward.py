"""Jacobian-vector (R operator) and vector-Jacobian (L operator) products.

Pascanu (2014, thesis), Sec. 4.1.1 "L and R operators": ``R{f, theta, v} = J v`` is the
directional derivative of ``f`` at ``theta`` along ``v`` (forward mode) and
``L{f, theta, u} = J^T u`` is back-propagation of ``u`` (reverse mode). Every curvature
product in :mod:`keras_diffusion.curvature.products` is built from these two.

Three modes compute ``J v``:

* ``"forward"``: ``tf.autodiff.ForwardAccumulator`` (one extra forward pass).
* ``"double_backward"``: the VJP of a VJP. ``g(u) = J^T u`` is linear in ``u``, so the
  gradient of ``<g(u), v>`` with respect to ``u`` is ``J v``. It works through
  ``tf.while_loop`` (Keras RNNs without ``unroll=True``, ``tf.scan``) where
  ``ForwardAccumulator`` fails when traced into a graph.
* ``"auto"`` tries ``"forward"`` and, on failure, retries ``"double_backward"``, for that
  call only (under ``tf.function`` the attempt happens once, while tracing).

To decide once for many calls, pass a :class:`ProductMode` instead of a string: it starts as
``"auto"`` and remembers a fallback for its own lifetime (a ``Closure`` holds one), so
nothing is remembered process-wide.

Half-precision (``mixed_float16`` / ``mixed_bfloat16``) outputs are cast to float32 and
vectors are returned in the parameters' dtype. Use :func:`float32_policy` to make a
mixed-precision model *compute* in float32 while the products run.
"""

import contextlib

import keras
import tensorflow as tf

from keras_diffusion import compat, validation
from keras_diffusion.curvature import linear_operator as lo

MODES = ("auto", "forward", "double_backward")

# What ForwardAccumulator raises on graphs it cannot differentiate (while loops): a
# ValueError ("Tried to take gradients ... of a variable without handle data"), a
# LookupError (no forward gradient registered) or NotImplementedError.
_FORWARD_ERRORS = (ValueError, LookupError, NotImplementedError, TypeError)
_HALF = (tf.float16, tf.bfloat16)


def check_mode(mode):
    """Returns ``mode`` if it is one of :data:`MODES` or a :class:`ProductMode`, else raises."""
    if isinstance(mode, ProductMode):
        return mode
    return validation.one_of("mode", mode, MODES, _MODE_HINT)


_MODE_HINT = 'Use "auto" unless you need a specific one.'


class ProductMode:
    """A product mode that remembers, for its own lifetime, that forward mode failed.

    Pass it as ``mode`` to :func:`jvp`, :func:`linearize` or the products of
    :mod:`keras_diffusion.curvature.products`. Starting from ``"auto"``, the first product
    whose forward mode fails falls back to ``"double_backward"`` and switches ``mode`` to
    ``"double_backward"``, so later products skip the failing attempt. Its holder (e.g. a
    ``Closure``) decides how long the choice lasts.

    Args:
        mode: the initial mode, one of :data:`MODES`.

    Example:
    >>> choice = ProductMode()
    >>> gv = ggn_vp(outputs_fn, loss_fn, params, v, mode=choice)  # may fall back once
    >>> choice.mode                     # "forward" mode never failed: still "auto"
    'auto'
    """

    def __init__(self, mode="auto"):
        self.mode = validation.one_of("mode", mode, MODES, _MODE_HINT)

    def __repr__(self):
        return f"ProductMode({self.mode!r})"


def run_with_mode(mode, forward_impl, backward_impl):
    """Runs ``forward_impl()`` or ``backward_impl()`` according to ``mode``.

    In ``"auto"`` mode a failing forward product (eagerly or while tracing a
    ``tf.function``) is retried with ``backward_impl``; a :class:`ProductMode` in ``"auto"``
    then switches to ``"double_backward"``.
    """
    choice = mode if isinstance(mode, ProductMode) else None
    mode = check_mode(mode).mode if choice is not None else check_mode(mode)
    if mode == "forward":
        return forward_impl()
    if mode == "double_backward":
        return backward_impl()
    try:
        return forward_impl()
    except _FORWARD_ERRORS as forward_error:
        try:
            result = backward_impl()
        except Exception as backward_error:
            raise backward_error from forward_error
        if choice is not None:
            choice.mode = "double_backward"
        return result


def as_list(tensors, name):
    """``tensors`` (a tensor/variable or a list/tuple of them) as a list of tensors."""
    if isinstance(tensors, (list, tuple)):
        items = list(tensors)
    else:
        items = [tensors]
    return [lo.to_tensor(t, f"{name}[{i}]") for i, t in enumerate(items)]


def check_vectors(params, vectors, name="vectors"):
    """Validates ``vectors`` against ``params`` and casts them to the params' dtypes.

    Raises:
        ValueError: naming the first length or shape mismatch.
    """
    if len(vectors) != len(params):
        raise ValueError(
            f"{name} must hold one tensor per parameter: received {len(vectors)} {name} "
            f"for {len(params)} params."
        )
    out = []
    for i, (p, v) in enumerate(zip(params, vectors)):
        if not p.shape.is_compatible_with(v.shape):
            raise ValueError(
                f"{name}[{i}] has shape {v.shape} but params[{i}] has shape {p.shape}; "
                f"pass {name} shaped like params."
            )
        out.append(tf.cast(v, p.dtype))
    return out


def to_float32(x):
    """Casts a half-precision tensor to float32; other tensors are returned unchanged."""
    return tf.cast(x, tf.float32) if x.dtype in _HALF else x


class Linearization:
    """Outputs of ``fn`` at ``params``, ``J v`` and the VJP ``u -> J^T u`` of that evaluation.

    Built by :func:`linearize`. ``vjp`` reuses the recorded forward pass, so a Gauss-Newton
    product costs one forward-with-JVP pass plus one backward pass.
    """

    def __init__(self, outputs, jvp_out, tape, params, sources=None):
        self.outputs = outputs
        self.jvp = jvp_out
        self._tape = tape
        self._params = params
        self._sources = params if sources is None else sources

    def vjp(self, cotangents):
        """``J^T cotangents`` as a list matching ``params`` (in the params' dtypes)."""
        flat_out = tf.nest.flatten(self.outputs)
        flat_cot = tf.nest.flatten(cotangents)
        flat_cot = [tf.cast(c, o.dtype) for c, o in zip(flat_cot, flat_out)]
        return _zero_filled(self._tape.gradient(
            flat_out, self._sources, output_gradients=flat_cot,
        ), self._params)


def _zero_filled(grads, params):
    """Gradients cast to the params' dtypes, zeros where unconnected (``None``)."""
    return [
        tf.zeros_like(p) if g is None else tf.cast(tf.convert_to_tensor(g), p.dtype)
        for g, p in zip(grads, params)
    ]


def _linearize_forward(fn, params, tangents):
    tape = tf.GradientTape(persistent=True)
    with tape:
        tape.watch(params)
        with tf.autodiff.ForwardAccumulator(params, tangents) as acc:
            outputs = fn(params)
        jv = tf.nest.map_structure(
            lambda o: acc.jvp(o, unconnected_gradients=tf.UnconnectedGradients.ZERO),
            outputs,
        )
    return Linearization(outputs, jv, tape, params)


class RecordedLinearization(Linearization):
    """A :class:`Linearization` whose ``jvp_of(v)`` reuses the recorded forward pass.

    Built by :func:`record`, or by :func:`from_tape` on a pass recorded elsewhere (the train
    step's, ``Closure.forward_pass``). ``J^T u`` is reverse mode through the persistent tape
    of the one forward pass; ``J v`` differentiates that linear map ``u -> J^T u`` in ``u``
    (the gradient of ``<J^T u, v>`` in ``u`` is ``J v``, Pascanu 2014, Sec. 4.1.1), through
    a second persistent tape holding the symbolic backward pass. Neither product re-runs the
    forward pass, so a solver calls both once per iteration at the cost of two
    backward-like passes (Martens 2010, sec. 4.2: the forward pass is shared by every CG
    iteration of a step). Works inside ``tf.while_loop`` bodies, ``tf.function`` and
    ``jit_compile``.
    """

    def __init__(self, outputs, tape, params, sources=None):
        super().__init__(outputs, None, tape, params, sources)
        flat_out = tf.nest.flatten(outputs)
        # Built here, in straight-line code: every product (e.g. in a solver's while-loop
        # body) reuses these tensors. Under tf.function the zero-dummy backward pass itself
        # is pruned (only its derivative in the dummies is ever used).
        self._outer = tf.GradientTape(persistent=True)
        with self._outer:
            self._dummies = [tf.zeros_like(o) for o in flat_out]
            self._outer.watch(self._dummies)
            transposed = self._tape.gradient(flat_out, self._sources,
                                             output_gradients=self._dummies)
        self._connected = [t is not None for t in transposed]
        self._transposed = [t for t in transposed if t is not None]

    def jvp_of(self, tangents):
        """``J v`` for ``tangents`` shaped like ``params``, structured like the outputs."""
        tangents = check_vectors(self._params, as_list(tangents, "tangents"), "tangents")
        jv = self._outer.gradient(
            self._transposed,
            self._dummies,
            output_gradients=[t for t, c in zip(tangents, self._connected) if c],
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        return tf.nest.pack_sequence_as(self.outputs, jv)

    def example_vjps(self, cotangents):
        """``J_i^T u_i`` for every example ``i`` (axis 0 of every output), stacked.

        ``cotangents`` is structured like the outputs; row ``i`` of each is ``u_i``. Returns
        a list like ``params`` of ``(n, *param.shape)`` tensors: the per-example
        back-propagation of ``<u_i, outputs_i>`` through the recorded pass, vectorized over
        the examples (``tf.vectorized_map``), with no forward pass of its own.
        """
        flat_out = tf.nest.flatten(self.outputs)
        flat_cot = [tf.stop_gradient(tf.cast(c, o.dtype))
                    for c, o in zip(tf.nest.flatten(cotangents), flat_out)]
        with self._tape:  # a persistent tape resumes recording
            per_example = tf.add_n([
                tf.reduce_sum(tf.reshape(c * o, [tf.shape(o)[0], -1]), axis=1)
                for c, o in zip(flat_cot, flat_out)
            ])

        def row(i):  # as GradientTape.jacobian, which cannot take variable handles
            with self._tape:
                one = tf.gather(per_example, i)
            return _zero_filled(self._tape.gradient(one, self._sources), self._params)

        return tf.vectorized_map(row, tf.range(tf.shape(per_example)[0]))


def from_tape(tape, outputs, params, sources=None):
    """A :class:`RecordedLinearization` of a forward pass already recorded on ``tape``.

    Args:
        tape: a persistent ``tf.GradientTape`` that recorded ``outputs``.
        outputs: a tensor or nest of tensors computed on ``tape``.
        params: list of tensors, the values of the sources (shapes and dtypes of ``J^T u``).
        sources: what ``tape`` differentiates with respect to (default ``params``), e.g.
            the variables' handles (``variable.handle``, read where the pass ran: under a
            distribution strategy the replica's own copy) when the pass read variables.

    Returns:
        ``record``'s linearization, without running the forward pass again.
    """
    return RecordedLinearization(outputs, tape, as_list(params, "params"), sources)


def record(fn, params):
    """Runs ``fn(params)`` once and keeps what ``J v`` and ``J^T u`` need (no tangent yet).

    Args:
        fn: callable taking the list ``params`` and returning a tensor or a nest of tensors.
        params: list of tensors.

    Returns:
        A :class:`RecordedLinearization`: ``outputs``, ``jvp_of(v)`` and ``vjp(u)``.

    Example:
    >>> lin = record(lambda p: p[0] * p[0], [tf.constant([1.0, 2.0])])
    >>> lin.jvp_of([tf.ones(2)]).numpy()
    array([2., 4.], dtype=float32)
    """
    params = as_list(params, "params")
    tape = tf.GradientTape(persistent=True)
    with tape:
        tape.watch(params)
        outputs = fn(params)
    return RecordedLinearization(outputs, tape, params)


def _linearize_double_backward(fn, params, tangents):
    lin = record(fn, params)
    lin.jvp = lin.jvp_of(tangents)
    return lin


def linearize(fn, params, tangents, mode="auto"):
    """Evaluates ``fn(params)`` with its JVP along ``tangents`` and keeps the VJP.

    Args:
        fn: callable taking the list ``params`` and returning a tensor or a nest of tensors.
        params: list of tensors.
        tangents: list of tensors shaped like ``params``.
        mode: ``"auto"``, ``"forward"``, ``"double_backward"`` or a :class:`ProductMode`
            (module docstring).

    Returns:
        A :class:`Linearization` with ``outputs``, ``jvp`` (structured like the outputs)
        and ``vjp(cotangents)``.
    """
    params = as_list(params, "params")
    tangents = check_vectors(params, as_list(tangents, "tangents"), "tangents")
    return run_with_mode(
        mode,
        lambda: _linearize_forward(fn, params, tangents),
        lambda: _linearize_double_backward(fn, params, tangents),
    )


def jvp(fn, params, tangents, mode="auto"):
    """Jacobian-vector product ``J v`` (Pascanu 2014, Sec. 4.1.1, the R operator).

    Args:
        fn: callable ``fn(params) -> tensor or nest``, e.g.
            ``lambda p: model.stateless_call(p, non_trainable, x)[0]``.
        params: list of tensors (Keras variables are read through ``.value``).
        tangents: list of tensors shaped like ``params``.
        mode: ``"auto"`` (forward mode, double-backward where forward mode fails),
            ``"forward"``, ``"double_backward"`` or a :class:`ProductMode`.

    Returns:
        ``(outputs, jvp_out)`` where ``jvp_out`` has the structure of ``outputs``
        (half-precision results are cast to float32).

    Example:
    >>> w = tf.constant([[1.0, 2.0]])
    >>> out, jv = jvp(lambda p: tf.reduce_sum(p[0] ** 2), [w], [tf.ones_like(w)])
    >>> float(jv)
    6.0
    """
    lin = linearize(fn, params, tangents, mode)
    return tf.nest.map_structure(to_float32, (lin.outputs, lin.jvp))


def vjp(fn, params, cotangents):
    """Vector-Jacobian product ``J^T u`` (Pascanu 2014, Sec. 4.1.1, the L operator).

    Args:
        fn: callable ``fn(params) -> tensor or nest``.
        params: list of tensors.
        cotangents: tensor or nest structured like ``fn(params)``.

    Returns:
        List of tensors matching ``params``.

    Example:
    >>> w = tf.constant([1.0, 2.0])
    >>> vjp(lambda p: p[0] * 3.0, [w], tf.ones(2))[0].numpy()
    array([3., 3.], dtype=float32)
    """
    params = as_list(params, "params")
    tape = tf.GradientTape()
    with tape:
        tape.watch(params)
        outputs = fn(params)
    try:
        tf.nest.assert_same_structure(outputs, cotangents)
    except (ValueError, TypeError) as e:
        raise ValueError(
            "cotangents must have the structure of fn(params); "
            f"received {tf.nest.map_structure(lambda t: t.shape, cotangents)} for outputs "
            f"{tf.nest.map_structure(lambda t: t.shape, outputs)}."
        ) from e
    flat_cot = [tf.convert_to_tensor(c) for c in tf.nest.flatten(cotangents)]
    for i, (o, c) in enumerate(zip(tf.nest.flatten(outputs), flat_cot)):
        if not o.shape.is_compatible_with(c.shape):
            raise ValueError(
                f"cotangents entry {i} has shape {c.shape} but output {i} of fn(params) has "
                f"shape {o.shape}; pass cotangents shaped like the outputs."
            )
    return Linearization(outputs, None, tape, params).vjp(cotangents)


@contextlib.contextmanager
def float32_policy(*models):
    """Temporarily makes every layer of ``models`` compute in float32.

    Mixed-precision policies (``mixed_float16``, ``mixed_bfloat16``) keep float32
    variables but compute in half precision; curvature products of such a model then carry
    half-precision rounding. Inside this context the layers compute in float32, so the
    products match those of the float32 model to float32 accuracy.

    Example:
    >>> with float32_policy(model):
    ...     hv = ggn_vp(outputs_fn, loss_fn, params, v)
    """
    saved = []
    for model in models:
        for layer in compat.flatten_layers(model):
            saved.append((layer, layer.dtype_policy))
            layer.dtype_policy = keras.DTypePolicy(layer.variable_dtype)
    try:
        yield
    finally:
        for layer, policy in reversed(saved):
            layer.dtype_policy = policy
