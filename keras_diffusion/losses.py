"""Losses for sequence models trained by diffusion (Mobahi 2016, sec. 4.1, eq. (2))."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_diffusion")
class SequenceSquaredError(keras.losses.Loss):
    """Squared error summed over time steps and outputs, averaged over sequences.

    Mobahi 2016, eq. (2) with ``d(e) = ||e||^2``: per sequence ``sum_t ||y_pred_t - y_t||^2``
    (for targets of shape ``(batch, T, Y)``, or ``||y_pred - y||^2`` for final-step targets of
    shape ``(batch, Y)``). With the default ``"sum_over_batch_size"`` reduction Keras averages
    it over the batch, so the training objective is the paper's sum over sequences divided by
    the batch size. Together with the ``add_loss`` terms of ``DiffusedRNN`` and
    ``DiffusedOutput`` it makes ``fit`` minimize the diffused cost of sec. 4.3. For ``Y = 1``
    and final-step targets it equals ``keras.losses.MeanSquaredError``.

    Shapes follow the Keras convention of ``MeanSquaredError``: where the ranks of targets
    and predictions differ by one and the longer shape ends in 1 (targets ``(batch,)`` for
    predictions ``(batch, 1)``), that axis is dropped; otherwise the shapes must be equal
    (a ``ValueError`` names both, instead of broadcasting ``(N,)`` against ``(N, 1)`` to
    ``(N, N)``).

    Args:
        name: loss name.
        reduction: Keras reduction of the per-sequence values (default ``"sum_over_batch_size"``).

    Example:

    >>> loss = SequenceSquaredError()
    >>> float(loss(np.zeros((2, 3, 1)), np.ones((2, 3, 1))))
    3.0
    """

    def __init__(self, name="sequence_squared_error", reduction="sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        y_true, y_pred = same_shape(y_true, y_pred)
        errors = ops.square(y_pred - y_true)
        return ops.sum(ops.reshape(errors, (ops.shape(errors)[0], -1)), axis=1)


def same_shape(y_true, y_pred):
    """``(y_true, y_pred)`` brought to one shape the Keras way, or ``ValueError`` naming both.

    A trailing axis of length 1 on the operand of higher rank (by exactly one) is dropped;
    unknown dimensions (``None``) match anything.
    """
    true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
    if len(true_shape) == len(pred_shape) + 1 and true_shape[-1] == 1:
        y_true, true_shape = ops.squeeze(y_true, axis=-1), true_shape[:-1]
    elif len(pred_shape) == len(true_shape) + 1 and pred_shape[-1] == 1:
        y_pred, pred_shape = ops.squeeze(y_pred, axis=-1), pred_shape[:-1]
    if len(true_shape) != len(pred_shape) or any(
        a is not None and b is not None and a != b for a, b in zip(true_shape, pred_shape)
    ):
        raise ValueError(
            f"SequenceSquaredError needs targets of the predictions' shape ((batch, T, Y) for "
            f"every step, (batch, Y) for the last one); got targets of shape "
            f"{tuple(y_true.shape)} and predictions of shape {tuple(y_pred.shape)}."
        )
    return y_true, y_pred
