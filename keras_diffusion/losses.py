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
        errors = ops.square(y_pred - y_true)
        return ops.sum(ops.reshape(errors, (ops.shape(errors)[0], -1)), axis=1)
