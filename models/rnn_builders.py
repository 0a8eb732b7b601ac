"""Model builders for Pascanu's thesis experiments: Figure 5.11 nets and Table 6.3 deep RNNs.

* :func:`pathological_rnn` -- the sec. 5.9.1 network: one recurrent layer (50 tanh units in
  Figure 5.11) read out by a linear layer at the task's target steps, with the three
  initializations of sec. 5.9.1: ``"sigmoid"`` (sigmoid units, all weights N(0, 0.01)),
  ``"basic_tanh"`` (tanh, all weights N(0, 0.1)), ``"smart_tanh"`` (tanh, input/output
  weights N(0, 0.01), recurrent weights sparse with 15 non-zero incoming connections and
  spectral radius 0.95); biases 0. "N(0, s)" is read as standard deviation ``s``.
* :func:`char_lm` -- the four character-level language models of Table 6.3 (sec. 6.4.1):
  ``"rnn"``, ``"dts"`` (DT(S)-RNN: one intermediate transition layer plus the shortcut),
  ``"dots"`` (DOT(S)-RNN: DT(S)-RNN plus one rectifier intermediate output layer) and
  ``"srnn"`` (stacked RNN, 2 levels), on one-hot inputs, with the sec. 6.4.2 initialization
  (sparse hidden-to-hidden weights, 20 non-zero incoming connections, unit largest singular
  value; input weights N(0, 0.01), output weights N(0, 0.001), hidden-to-rectifier weights
  N(0, 0.01), rectifier biases 0.1).
* :func:`char_lm_units` -- the widths giving each model about the same number of parameters
  (Table 6.1 uses hidden = transition width for DT(S), and a 1.5x wider rectifier layer for
  DOT(S): 400, 400, 600), with :func:`char_lm_param_count` the closed-form count.

Example:

>>> from keras_diffusion.datasets import pathological
>>> task = pathological.PathologicalTask("temporal_order", 50)
>>> net = pathological_rnn(task, units=50, init="basic_tanh", seed=0)
>>> widths = char_lm_units("dots", budget=20000, vocab_size=60)
>>> lm = char_lm("dots", vocab_size=60, batch_size=16, seed=0, **widths)
"""

import keras

from keras_diffusion import validation
from keras_diffusion.initializers import SparseRecurrent
from keras_diffusion.layers import DeepOutput, DeepTransitionRNN, DeepTransitionRNNCell

PATHOLOGICAL_INITS = ("sigmoid", "basic_tanh", "smart_tanh")
CHAR_LM_KINDS = ("rnn", "dts", "dots", "srnn")
DOTS_OUTPUT_RATIO = 1.5  # Table 6.1, char-level DOT(S)-RNN: 400, 400, 600


@keras.saving.register_keras_serializable(package="keras_diffusion_models")
class LastSteps(keras.layers.Layer):
    """Keeps the last ``steps`` time steps of a ``(batch, T, features)`` sequence."""

    def __init__(self, steps, **kwargs):
        super().__init__(**kwargs)
        self.steps = int(steps)

    def call(self, inputs):
        return inputs[:, -self.steps :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.steps, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "steps": self.steps}


def _normal(stddev, seed):
    return keras.initializers.RandomNormal(stddev=stddev, seed=seed)


def pathological_rnn(task, units=50, init="basic_tanh", seed=0):
    """The sec. 5.9.1 RNN for a ``keras_diffusion.datasets.pathological.PathologicalTask``.

    Returns a Keras model mapping ``(batch, T, task.input_dim)`` to
    ``(batch, task.target_steps, task.num_outputs)`` (logits, or the regression output).
    The recurrent layer is ``model.get_layer("rnn")`` (a ``DeepTransitionRNN`` over a
    conventional ``DeepTransitionRNNCell``), returning all hidden states.
    """
    validation.one_of("init", init, PATHOLOGICAL_INITS)
    validation.positive_int("units", units)
    io_std = {"sigmoid": 0.01, "basic_tanh": 0.1, "smart_tanh": 0.01}[init]
    if init == "smart_tanh":
        recurrent = SparseRecurrent(nonzeros=min(15, units), spectral_radius=0.95, seed=seed)
    else:
        recurrent = _normal(io_std, seed + 1)
    cell = DeepTransitionRNNCell(
        units,
        activation="sigmoid" if init == "sigmoid" else "tanh",
        kernel_initializer=_normal(io_std, seed),
        recurrent_initializer=recurrent,
    )
    inputs = keras.Input((None, task.input_dim))
    states = DeepTransitionRNN(cell, return_sequences=True, name="rnn")(inputs)
    last = LastSteps(task.target_steps)(states)
    outputs = keras.layers.Dense(
        task.num_outputs, kernel_initializer=_normal(io_std, seed + 2), name="readout"
    )(last)
    return keras.Model(inputs, outputs, name=f"pathological_{init}")


def char_lm_param_count(kind, vocab_size, units, output_units=None):
    """Closed-form parameter count of :func:`char_lm` (weights and biases)."""
    v, n = vocab_size, units
    rnn_layer = v * n + n * n + n
    if kind == "rnn":
        return rnn_layer + n * v + v
    dts_layer = v * n + n * n + n + (n * n + n) + n * n
    if kind == "dts":
        return dts_layer + n * v + v
    if kind == "dots":
        m = output_units
        return dts_layer + n * m + m + m * v + v
    if kind == "srnn":
        return rnn_layer + (n * n + n * n + n) + n * v + v
    validation.one_of("kind", kind, CHAR_LM_KINDS)


def char_lm_units(kind, budget, vocab_size):
    """Widths of ``kind`` whose parameter count is closest to ``budget``.

    Returns ``{"units": n}`` (``"output_units"`` too for ``"dots"``, ``round(1.5 n)``).
    """
    validation.one_of("kind", kind, CHAR_LM_KINDS)
    validation.positive_int("budget", budget)
    validation.positive_int("vocab_size", vocab_size)
    if budget < char_lm_param_count(kind, vocab_size, 1, 2):
        raise ValueError(f"budget={budget!r} is below the smallest {kind} model; raise it.")

    def widths(n):
        if kind == "dots":
            return {"units": n, "output_units": round(DOTS_OUTPUT_RATIO * n)}
        return {"units": n}

    best = min(
        range(1, 4096),
        key=lambda n: abs(char_lm_param_count(kind, vocab_size, **widths(n)) - budget),
    )
    return widths(best)


def char_lm(kind, vocab_size, units, output_units=None, batch_size=None, activation="sigmoid",
            stateful=True, seed=0):
    """A Table 6.3 character-level language model on one-hot inputs.

    Args:
        kind: ``"rnn"``, ``"dts"``, ``"dots"`` or ``"srnn"``.
        vocab_size: number of symbols (one-hot input width and softmax width).
        units: hidden-state width (also the transition width of DT(S)/DOT(S)).
        output_units: rectifier width of the DOT(S)-RNN deep output.
        batch_size: fixed batch size (needed when ``stateful``).
        activation: hidden nonlinearity (the thesis uses the logistic sigmoid).
        stateful: carry the hidden state from one BPTT window to the next.
        seed: initializer seed.

    Returns:
        Keras model ``(batch, T, vocab_size)`` one-hot -> ``(batch, T, vocab_size)`` logits.
    """
    validation.one_of("kind", kind, CHAR_LM_KINDS)
    validation.positive_int("vocab_size", vocab_size)
    validation.positive_int("units", units)
    if kind == "dots" and not output_units:
        raise ValueError(
            f"kind='dots' needs output_units (the rectifier layer width), got "
            f"{output_units!r}; e.g. char_lm_units('dots', budget, vocab_size) gives it."
        )

    def hidden_to_hidden(offset):
        # sec. 6.4.2: 20 non-zero incoming connections, unit largest singular value
        return SparseRecurrent(nonzeros=min(20, units), singular_value=1.0, seed=seed + offset)

    def cell(depth, k):
        return DeepTransitionRNNCell(
            units,
            transition_units=[units] * depth,
            shortcut=depth > 0,
            activation=activation,
            kernel_initializer=_normal(0.01, seed + k) if k == 0 else hidden_to_hidden(10 + k),
            recurrent_initializer=hidden_to_hidden(20 + k),
            transition_initializer=hidden_to_hidden(30 + k),
            shortcut_initializer=hidden_to_hidden(40 + k),
        )

    inputs = keras.Input(batch_shape=(batch_size, None, vocab_size))
    rnn_args = dict(return_sequences=True, stateful=stateful, name="rnn")
    if kind == "srnn":
        hidden = keras.layers.RNN([cell(0, 0), cell(0, 1)], **rnn_args)(inputs)
    else:
        hidden = DeepTransitionRNN(cell(0 if kind == "rnn" else 1, 0), **rnn_args)(inputs)
    if kind == "dots":
        hidden = DeepOutput(
            [output_units], activation="relu", kernel_initializer=_normal(0.01, seed + 3),
            bias_initializer=keras.initializers.Constant(0.1), name="deep_output",
        )(hidden)
    logits = keras.layers.Dense(
        vocab_size, kernel_initializer=_normal(0.001, seed + 4), name="softmax"
    )(hidden)
    return keras.Model(inputs, logits, name=f"char_lm_{kind}")
