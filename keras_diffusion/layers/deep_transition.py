"""Deep-transition recurrent cells: DT-RNN and DT(S)-RNN (Pascanu 2014 thesis, ch. 6).

A conventional RNN computes its new state with one affine map and one nonlinearity. The
deep-transition RNN (thesis sec. 6.3, "Deep Transition RNN", Fig. 6.4 (a)) replaces this
shallow transition by an MLP with intermediate layers between ``h[t-1]`` and ``h[t]``::

    z1   = phi_1(W_1 h[t-1] + U x[t] + b_1)              # input enters the first layer
    z_l  = phi_l(W_l z_{l-1} + b_l)                       # l = 2 .. L-1
    h[t] = phi(W_L z_{L-1} + b [+ S h[t-1]])              # S: shortcut, DT(S)-RNN

``shortcut=True`` adds the direct ``h[t-1] -> h[t]`` connection ``S`` of the DT(S)-RNN
(Fig. 6.4 (a*)) that gives the gradient a path skipping the intermediate layers. With
``transition_units=()`` the cell is the conventional RNN ``h[t] = phi(W h[t-1] + U x[t] + b)``,
the building block of a stacked RNN (sec. 6.3.1, "Stacked RNN").

Every activation may be a *diffused* one (Mobahi 2016): pass ``bandwidth=`` (a shared
``keras_diffusion.Bandwidth``) and the activation names are evaluated with
``keras_diffusion.activations.diffused_mean(name, x, sigma)``.

Input projection hoisting: the input enters only through ``U x[t] + b_1``, which does not
depend on the state. :class:`DeepTransitionRNN` computes it for the whole sequence with one
matmul before the time loop and runs only :meth:`DeepTransitionRNNCell.transition` inside
the loop. The cell also works unchanged in ``keras.layers.RNN`` (stacked or not), which
projects step by step.

Example: DT(S)-RNN, DOT(S)-RNN and a stacked model for character-level language modelling
(thesis Table 6.1 sizes scaled down), all diffused with one shared sigma:

>>> import keras, keras_diffusion as kd
>>> from keras_diffusion.layers import DeepTransitionRNNCell, DeepTransitionRNN, DeepOutput
>>> vocab, sigma = 50, kd.Bandwidth(1.0)
>>> def char_lm(*blocks):
...     inputs = keras.Input((None,), dtype="int32")
...     x = keras.layers.Embedding(vocab, 32)(inputs)
...     for block in blocks:
...         x = block(x)
...     return keras.Model(inputs, keras.layers.Dense(vocab)(x))
>>> dts = char_lm(DeepTransitionRNN(DeepTransitionRNNCell(
...     64, transition_units=[64], shortcut=True, activation="tanh",
...     transition_activation="tanh", bandwidth=sigma), return_sequences=True))
>>> dots = char_lm(DeepTransitionRNN(DeepTransitionRNNCell(
...     64, transition_units=[64], shortcut=True, bandwidth=sigma), return_sequences=True),
...     DeepOutput([96], activation="relu", bandwidth=sigma))
>>> srnn = char_lm(keras.layers.RNN([DeepTransitionRNNCell(64), DeepTransitionRNNCell(64)],
...     return_sequences=True))
>>> kd.set_sigma(dots, 0.5)   # one call sets the sigma of every diffused activation
"""

import keras
from keras import ops

from keras_diffusion import activations as diffused
from keras_diffusion import bandwidth as bandwidth_lib
from keras_diffusion import compat, probes, validation
from keras_diffusion.layers import checks


def resolve_activation(activation, bandwidth):
    """The elementwise function a layer applies for ``activation``.

    Without a bandwidth: any Keras activation (name or callable). With a
    :class:`~keras_diffusion.Bandwidth`: a name of ``keras_diffusion.activations.names()``,
    evaluated as its Gaussian-smoothed mean at the bandwidth's current sigma.
    """
    if bandwidth is None:
        try:
            return keras.activations.get(activation)
        except ValueError:
            raise ValueError(
                f"Unknown activation {activation!r}. Use a Keras activation name or callable, "
                "or pass bandwidth= to use a diffused activation "
                "(keras_diffusion.activations.names())."
            ) from None
    if not isinstance(activation, str) or activation not in diffused.names():
        raise ValueError(
            f"Unknown diffused activation {activation!r}: with bandwidth= every activation must "
            f"be one of {sorted(diffused.names())}; drop bandwidth= to use other activations."
        )

    def apply(x):
        return diffused.diffused_mean(activation, x, ops.cast(bandwidth.value, x.dtype))

    return apply


def serialize_activation(activation):
    """A name stays a name (also for diffused activations); a callable goes through Keras."""
    return activation if isinstance(activation, str) else keras.activations.serialize(activation)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DeepTransitionRNNCell(keras.layers.Layer, compat.DropoutRNNCell):
    """Cell of the deep-transition RNN, DT-RNN / DT(S)-RNN [Pascanu 2014, sec. 6.3.1].

    Args:
        units: size of the hidden state ``h``.
        transition_units: widths of the intermediate layers of the transition MLP
            (``()``: conventional RNN; thesis Table 6.1 uses one layer, e.g. ``[400]``).
        shortcut: add the direct ``h[t-1] -> h[t]`` weights ``S`` (DT(S)-RNN).
        activation: nonlinearity of the state ``h[t]`` (default ``"tanh"``).
        transition_activation: nonlinearity of the intermediate layers (default: same as
            ``activation``).
        bandwidth: ``None`` for ordinary activations, or a ``keras_diffusion.Bandwidth`` /
            number: every activation of the cell is then diffused with that sigma.
        use_bias: whether the layers have biases.
        kernel_initializer, recurrent_initializer, transition_initializer,
        shortcut_initializer, bias_initializer: initializers of ``U`` (input), ``W_1``
            (first recurrent matrix), ``W_2..W_L`` (inside the MLP), ``S`` and the biases.
        kernel_regularizer, recurrent_regularizer, transition_regularizer,
        shortcut_regularizer, bias_regularizer: their regularizers.
        kernel_constraint, recurrent_constraint, transition_constraint,
        shortcut_constraint, bias_constraint: their constraints.
        dropout: fraction of the inputs ``x[t]`` dropped (one mask per sequence).
        recurrent_dropout: fraction of ``h[t-1]`` dropped where it enters the transition.
        seed: random seed for dropout.

    Call arguments:
        inputs: ``(batch, features)``, one step.
        states: ``[h]`` with ``h`` of shape ``(batch, units)``.
        training: whether dropout is active.

    Example:

    >>> import numpy as np
    >>> cell = DeepTransitionRNNCell(8, transition_units=[16], shortcut=True)
    >>> y = keras.layers.RNN(cell, return_sequences=True)(np.zeros((2, 5, 3)))
    >>> tuple(y.shape)
    (2, 5, 8)
    """

    def __init__(
        self,
        units,
        transition_units=(),
        shortcut=False,
        activation="tanh",
        transition_activation=None,
        bandwidth=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        transition_initializer="glorot_uniform",
        shortcut_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        transition_regularizer=None,
        shortcut_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        transition_constraint=None,
        shortcut_constraint=None,
        bias_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = validation.positive_int("units", units)
        self.transition_units = checks.widths("transition_units", transition_units)
        if shortcut and not self.transition_units:
            raise ValueError(
                "shortcut=True needs a deep transition: got transition_units=() where h[t-1] "
                "already feeds h[t] directly; give transition_units, e.g. [units]."
            )
        for name, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            hint = "give the fraction of units to drop, e.g. 0.1, or 0.0 for no dropout."
            if validation.fraction(name, rate, hint=hint, allow_zero=True) == 1.0:
                raise ValueError(f"`{name}` must be < 1 (1.0 drops every unit), got 1.0; {hint}")
        self.shortcut = bool(shortcut)
        self.bandwidth = None if bandwidth is None else bandwidth_lib.resolve(bandwidth, owner=self)
        self.activation = activation
        self.transition_activation = activation if transition_activation is None else (
            transition_activation
        )
        self._activation_fn = resolve_activation(self.activation, self.bandwidth)
        self._transition_fn = resolve_activation(self.transition_activation, self.bandwidth)
        self.use_bias = use_bias
        get_init, get_reg, get_con = (
            keras.initializers.get, keras.regularizers.get, keras.constraints.get
        )
        self.kernel_initializer = get_init(kernel_initializer)
        self.recurrent_initializer = get_init(recurrent_initializer)
        self.transition_initializer = get_init(transition_initializer)
        self.shortcut_initializer = get_init(shortcut_initializer)
        self.bias_initializer = get_init(bias_initializer)
        self.kernel_regularizer = get_reg(kernel_regularizer)
        self.recurrent_regularizer = get_reg(recurrent_regularizer)
        self.transition_regularizer = get_reg(transition_regularizer)
        self.shortcut_regularizer = get_reg(shortcut_regularizer)
        self.bias_regularizer = get_reg(bias_regularizer)
        self.kernel_constraint = get_con(kernel_constraint)
        self.recurrent_constraint = get_con(recurrent_constraint)
        self.transition_constraint = get_con(transition_constraint)
        self.shortcut_constraint = get_con(shortcut_constraint)
        self.bias_constraint = get_con(bias_constraint)
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.state_size = self.units
        self.output_size = self.units

    @property
    def widths(self):
        """Output widths of the transition layers, the last one being the state."""
        return self.transition_units + (self.units,)

    def _bias(self, width, name):
        if not self.use_bias:
            return None
        return self.add_weight(
            shape=(width,), name=name, initializer=self.bias_initializer,
            regularizer=self.bias_regularizer, constraint=self.bias_constraint,
        )

    def build(self, input_shape):
        first = self.widths[0]
        self.kernel = self.add_weight(
            shape=(input_shape[-1], first), name="kernel",
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, first), name="recurrent_kernel",
            initializer=self.recurrent_initializer, regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )
        self.bias = self._bias(first, "bias")
        self.transition_kernels, self.transition_biases = [], []
        for layer, (fan_in, fan_out) in enumerate(zip(self.widths[:-1], self.widths[1:]), 2):
            self.transition_kernels.append(self.add_weight(
                shape=(fan_in, fan_out), name=f"transition_kernel_{layer}",
                initializer=self.transition_initializer,
                regularizer=self.transition_regularizer,
                constraint=self.transition_constraint,
            ))
            self.transition_biases.append(self._bias(fan_out, f"transition_bias_{layer}"))
        self.shortcut_kernel = None
        if self.shortcut:
            self.shortcut_kernel = self.add_weight(
                shape=(self.units, self.units), name="shortcut_kernel",
                initializer=self.shortcut_initializer, regularizer=self.shortcut_regularizer,
                constraint=self.shortcut_constraint,
            )

    def project_inputs(self, inputs, training=False):
        """``U x + b_1`` for one step ``(batch, features)`` or a time-major sequence
        ``(T, batch, features)``.

        Input dropout uses the cell's per-sequence ``(batch, features)`` mask (the Keras
        ``DropoutRNNCell`` way), broadcast over time for a sequence.
        """
        mask = self.get_dropout_mask(inputs if len(inputs.shape) == 2 else inputs[0])
        if training and mask is not None:
            inputs = inputs * mask
        projected = ops.matmul(inputs, self.kernel)
        return projected if self.bias is None else projected + self.bias

    def transition(self, projected, states, training=False):
        """One step of the transition MLP from the projected input ``U x[t] + b_1``."""
        prev = states[0] if isinstance(states, (list, tuple)) else states
        rec_mask = self.get_recurrent_dropout_mask(prev)
        if training and rec_mask is not None:
            prev = prev * rec_mask
        pre = projected + ops.matmul(prev, self.recurrent_kernel)
        for kernel, bias in zip(self.transition_kernels, self.transition_biases):
            pre = ops.matmul(self._transition_fn(pre), kernel)
            if bias is not None:
                pre = pre + bias
        if self.shortcut_kernel is not None:
            pre = pre + ops.matmul(prev, self.shortcut_kernel)
        h = self._activation_fn(pre)
        return h, ([h] if isinstance(states, (list, tuple)) else h)

    def call(self, inputs, states, training=False):
        return self.transition(self.project_inputs(inputs, training), states, training)

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.units), dtype=self.compute_dtype)]

    def get_config(self):
        ser_init, ser_reg, ser_con = (
            keras.initializers.serialize, keras.regularizers.serialize,
            keras.constraints.serialize,
        )
        config = {
            "units": self.units,
            "transition_units": list(self.transition_units),
            "shortcut": self.shortcut,
            "activation": serialize_activation(self.activation),
            "transition_activation": serialize_activation(self.transition_activation),
            "bandwidth": bandwidth_lib.serialize(self.bandwidth),
            "use_bias": self.use_bias,
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "seed": self.seed,
        }
        for part in ("kernel", "recurrent", "transition", "shortcut", "bias"):
            config[f"{part}_initializer"] = ser_init(getattr(self, f"{part}_initializer"))
            config[f"{part}_regularizer"] = ser_reg(getattr(self, f"{part}_regularizer"))
            config[f"{part}_constraint"] = ser_con(getattr(self, f"{part}_constraint"))
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DeepTransitionRNN(keras.layers.RNN):
    """``keras.layers.RNN`` for a :class:`DeepTransitionRNNCell` with the input projection
    hoisted out of the time loop.

    ``U x + b_1`` is computed for the whole sequence with one matmul; the loop runs only
    the recurrent part of the transition MLP. Outputs equal ``keras.layers.RNN(cell)``'s.
    Masking, ``return_sequences``/``return_state``, ``go_backwards``, ``stateful``,
    ``unroll`` and dtype policies (the cell computes in its own, the outputs are cast to the
    layer's) behave as in ``keras.layers.RNN``. Stack several of these layers (with
    ``return_sequences=True``) for a stacked deep-transition RNN that keeps the hoisting.

    Args:
        cell: a :class:`DeepTransitionRNNCell`.
        **kwargs: ``keras.layers.RNN`` arguments.

    Example:

    >>> import numpy as np
    >>> layer = DeepTransitionRNN(DeepTransitionRNNCell(8, [16], shortcut=True),
    ...                           return_sequences=True)
    >>> tuple(layer(np.zeros((2, 5, 3))).shape)
    (2, 5, 8)
    """

    hidden_state_probes = True  # supports keras_diffusion.probes.capture

    def __init__(self, cell, **kwargs):
        if isinstance(cell, dict):
            cell = keras.saving.deserialize_keras_object(cell)
        if not isinstance(cell, DeepTransitionRNNCell):
            raise TypeError(
                f"DeepTransitionRNN needs one DeepTransitionRNNCell, got {cell!r}; use "
                "keras.layers.RNN for other cells or lists of cells."
            )
        super().__init__(cell, **kwargs)

    def build(self, sequences_shape, initial_state_shape=None):
        checks.sequence_shape(self, sequences_shape)
        super().build(sequences_shape, initial_state_shape)

    def call(self, sequences, initial_state=None, mask=None, training=False):
        checks.sequence_shape(self, sequences.shape)
        if initial_state is not None:
            states = initial_state if isinstance(initial_state, (list, tuple)) else [initial_state]
            if len(states) != 1:
                raise ValueError(
                    f"DeepTransitionRNN {self.name!r} has one state h of shape (batch, units); "
                    f"got {len(states)} initial states."
                )
            checks.state_shape(self, states[0].shape, self.cell.units, sequences.shape[0])
        # The loop runs the cell's methods, not cell.__call__: enter the cell's dtype policy
        # as cell.__call__ would, so that the cell computes as in keras.layers.RNN(cell).
        dtype = self.cell.compute_dtype
        with compat.autocast_scope(dtype):
            return super().call(ops.cast(sequences, dtype), initial_state, mask, training)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        # Time-major inside: the transpose that the loop needs is done on the input, before
        # the projection, and the loop runs on the projected sequence.
        projected = self.cell.project_inputs(ops.transpose(sequences, (1, 0, 2)), training)
        mask = None if mask is None else ops.transpose(mask, (1, 0))
        initial_state = list(initial_state) if isinstance(initial_state, (list, tuple)) else [
            initial_state
        ]
        captured = probes.requested(self)
        if captured is not None:
            return self._probed_loop(
                captured, sequences, projected, initial_state, mask, training
            )

        def step(inputs, states):
            return self.cell.transition(inputs, states, training=training)

        return self._loop(step, projected, initial_state, mask, self.return_sequences)

    def _loop(self, step, inputs, initial_state, mask, return_all_outputs):
        last, outputs, states = compat.rnn_loop(
            step,
            inputs,
            initial_state,
            go_backwards=self.go_backwards,
            mask=mask,
            unroll=self.unroll,
            input_length=inputs.shape[0],
            time_major=True,
            zero_output_for_mask=self.zero_output_for_mask,
            return_all_outputs=return_all_outputs,
        )
        return last, ops.transpose(outputs, (1, 0, 2)), states

    def _probed_loop(self, captured, sequences, projected, initial_state, mask, training):
        """The loop with the capture's watched zero ``probe`` added to every new state, so
        that ``tape.gradient(loss, probe)[:, t]`` is the back-propagated error dL/dh[t+1]
        (``keras_diffusion.probes``); records states, previous states and inputs."""
        if self.go_backwards or mask is not None:
            raise ValueError(
                "Hidden-state probes need a forward, unmasked DeepTransitionRNN "
                f"(got go_backwards={self.go_backwards}, mask given: {mask is not None}); "
                "build the layer with go_backwards=False and feed it unmasked sequences."
            )
        width = projected.shape[-1]
        probe = ops.zeros(ops.shape(sequences)[:2] + (self.cell.units,), projected.dtype)
        captured.watch(probe)

        def step(inputs, states):
            h, _ = self.cell.transition(inputs[..., :width], states, training=training)
            h = h + inputs[..., width:]
            return h, [h]

        inputs = ops.concatenate([projected, ops.transpose(probe, (1, 0, 2))], axis=-1)
        last, outputs, states = self._loop(step, inputs, initial_state, None, True)
        previous = ops.concatenate([ops.expand_dims(initial_state[0], 1), outputs[:, :-1]], 1)
        captured.record(self, outputs, previous, sequences, probe)
        return last, outputs, states
