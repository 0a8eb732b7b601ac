"""Model builders for the experiments of Mobahi (2016), sec. 7 (the adding task, Figure 6).

:func:`build_adding_rnn` builds the sec. 7 network: an RNN with 2 inputs, ``units`` hidden
units and 1 output read at the final step,

    m_t = U x_t + V h~(m_{t-1}) + a    (learned m_0),     prediction h~_out(W h~(m_T) + b),

from ``keras_diffusion.layers.DiffusedRNN`` and ``DiffusedOutput`` sharing one
``keras_diffusion.Bandwidth``. The paper's network (eqs. 3-4) has an erf output unit,
``output_activation="erf"``; its range (-1, 1) cannot hold the adding task's sums in [0, 2], so
that network is trained on the halved target, the mean of the two marked numbers
(:func:`halved_target`, as ``scripts/reproduce_mobahi_figure6.py`` does). The default, a
linear output on the sum, is the network of ``scripts/train.py``. The input weights ``U`` are
drawn by ``input_initializer``: ``"lecun_normal"`` (variance ``1 / fan_in = 1/2`` for the
2 inputs; the choice consistent with the paper's setting, see the README's Figure 6 section)
or ``"glorot_uniform"`` (variance ``2 / (fan_in + units)``, ``1/6`` with 10 units), the
default for ``scripts/train.py``. ``method="diffusion"`` starts sigma at ``sigma`` (lower it
with a ``keras_diffusion.callbacks`` schedule); ``method="sgd"`` is the same architecture, same
initial weights for the same ``seed``, with sigma fixed at 0 and no penalty, i.e. the plain
RNN trained on its squared error. Compile either with
``keras_diffusion.losses.SequenceSquaredError()``: ``fit`` then minimizes the batch mean of the
per-sequence diffused cost of sec. 4.3 (the plain squared error at sigma = 0).

:func:`adding_test_error` is the error reported as "generalization error" in sec. 7 /
Figure 6: the mean over test sequences of the squared error of the final output of the plain
network (sigma = 0), whatever sigma training has reached.

Example:

>>> task = keras_diffusion.datasets.adding.mobahi_adding_task(seed=0)
>>> model = build_adding_rnn("diffusion", sigma=1.0, penalty=0.1, seed=0)
>>> model.compile(keras.optimizers.SGD(0.1), loss=keras_diffusion.losses.SequenceSquaredError())
>>> schedule = keras_diffusion.callbacks.LinearSigma(1.0, duration=20)
>>> model.fit(task.dataset("train", 50, shuffle=True), epochs=30, callbacks=[schedule])
>>> adding_test_error(model, *task.arrays("test"))
"""

import contextlib

import keras
import numpy as np

import keras_diffusion
from keras_diffusion import validation
from keras_diffusion.layers import DiffusedOutput, DiffusedRNN, DiffusedRNNCell

METHODS = ("diffusion", "sgd")
INPUT_INITIALIZERS = ("glorot_uniform", "lecun_normal")


def build_adding_rnn(
    method="diffusion",
    units=10,
    activation="erf",
    output_activation="linear",
    sigma=1.0,
    penalty=1.0,
    slope=1.0,
    length=None,
    seed=0,
    input_dim=2,
    num_outputs=1,
    input_initializer="glorot_uniform",
):
    """The adding-task RNN of Mobahi 2016, sec. 7 (uncompiled).

    Args:
        method: ``"diffusion"`` (diffused layers, sigma starts at ``sigma``, penalty
            ``penalty``) or ``"sgd"`` (same layers and initial weights, sigma fixed at 0,
            penalty 0: the plain RNN).
        units: hidden units ``H`` (10 in sec. 7).
        activation: hidden activation (``"erf"`` in sec. 7).
        output_activation: output activation; ``"linear"`` (default) since the targets, sums of
            two values in [0, 1], reach 2, beyond the range of ``erf``; ``"erf"`` is the
            paper's output unit, for the halved target (:func:`halved_target`).
        sigma: initial bandwidth for ``"diffusion"`` (ignored by ``"sgd"``).
        penalty: ``lam`` of sec. 4.1, weight of the smoothing terms of ``V`` and ``W``
            (ignored by ``"sgd"``).
        slope: ``a`` of the hidden activation ``h(x) = g(a x)`` (the ``a`` of ``erf(a x)``); the
            output activation has slope 1.
        length: sequence length, or ``None`` for any length.
        seed: integer seed of the initial weights.
        input_dim: channels per step (2 for the adding task).
        num_outputs: outputs read at the final step (1 for the adding task; the classes, as
            logits, of a classification task).
        input_initializer: initialization of the input weights ``U``, one of
            ``INPUT_INITIALIZERS`` (seeded with ``seed``); ``"lecun_normal"`` is the choice
            consistent with the paper's setting (module docstring).

    Returns:
        A ``keras.Model`` mapping ``(batch, T, input_dim)`` to ``(batch, num_outputs)``; its
        bandwidth is ``keras_diffusion.bandwidths(model)[0]`` (set it with ``keras_diffusion.set_sigma``).
    """
    validation.one_of("method", method, METHODS)
    validation.one_of("input_initializer", input_initializer, INPUT_INITIALIZERS)
    if method == "sgd":
        sigma, penalty = 0.0, 0.0
    bandwidth = keras_diffusion.Bandwidth(sigma, name="sigma")
    inputs = keras.Input((length, input_dim), name="sequences")
    cell = DiffusedRNNCell(
        units,
        activation,
        bandwidth=bandwidth,
        slope=slope,
        penalty=penalty,
        kernel_initializer=keras.initializers.get(
            {"class_name": input_initializer, "config": {"seed": seed}}
        ),
        recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 1),
    )
    moments = DiffusedRNN(cell, name="rnn")(inputs)
    outputs = DiffusedOutput(
        num_outputs,
        output_activation,
        bandwidth=bandwidth,
        penalty=penalty,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2),
        name="output",
    )(moments)
    return keras.Model(inputs, outputs, name=f"adding_rnn_{method}")


@contextlib.contextmanager
def undiffused(model):
    """Sets every bandwidth of ``model`` to 0 inside the ``with`` block, then restores them.

    The plain network of the Figure 6 error; models without diffused layers are left as they are.
    """
    found = keras_diffusion.bandwidths(model)
    saved = [float(keras.ops.convert_to_numpy(b.variable)) for b in found]
    for bandwidth in found:
        bandwidth.assign(0.0)
    try:
        yield model
    finally:
        for bandwidth, value in zip(found, saved):
            bandwidth.assign(value)


def halved_target(y):
    """The target of the erf-output network: the mean of the two marked numbers, in [0, 1].

    The adding task's target is their sum, in [0, 2]; an erf output lies in (-1, 1). An error
    ``e`` on the halved target is ``4 e`` on the sum (the prediction of the sum is twice the
    output).
    """
    return y / 2


def squared_error(prediction, y):
    """``mean_s ||prediction_s - y_s||^2`` over the sequences ``s`` (leading axis), a float."""
    error = np.square(np.reshape(prediction, (len(prediction), -1)) - np.reshape(y, (len(y), -1)))
    return float(np.mean(np.sum(error, axis=1)))


def adding_test_error(model, x, y, batch_size=256):
    """Mean squared error of the final output of the plain network (sigma = 0).

    The model's sigma is set to 0 for the forward pass and restored afterwards
    (:func:`undiffused`). Models without diffused layers are evaluated as they are.

    Returns:
        ``mean_s ||f(x_s) - y_s||^2`` as a Python float.
    """
    with undiffused(model):
        prediction = model.predict(x, batch_size=batch_size, verbose=0)
    return squared_error(prediction, y)
