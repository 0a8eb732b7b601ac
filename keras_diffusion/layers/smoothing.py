"""The smoothing term of a linear map applied to a random vector (Mobahi 2016, sec. 4.3, App. A).

Smoothing ``n = A v`` where ``v`` has componentwise mean ``mu`` and second moment ``s``
(footnotes 6-7) adds to the cost

    ||A diag(sqrt(s))||_F^2 - ||A diag(mu)||_F^2 + sigma^2 rows ||mu||^2
    = sum_j ||A_:,j||^2 (s - mu^2)_j + sigma^2 rows ||mu||^2,

term (2) of the diffused cost for ``A = W`` (``DiffusedOutput``) and term (3) for ``A = V``
(``DiffusedRNN``).
"""

from keras import ops


def smoothing_penalty(mean, second_moment, kernel, sigma):
    """Per-sample ``sum [ ||A diag(sqrt(second))||_F^2 - ||A diag(mean)||_F^2 + sigma^2 rows ||mean||^2 ]``.

    The smoothing term of Mobahi 2016, sec. 4.3 (App. A, footnotes 6-7) of a linear map ``A``
    applied to a random vector with componentwise ``mean`` and ``second_moment`` of shape
    ``(batch, ..., inputs)``; ``kernel`` is ``A^T`` in Keras layout ``(inputs, rows)``. Summed
    over all axes but the batch axis. Computed in float32 (see
    :func:`smoothing_penalty_from_sums`).
    """
    mean, second_moment = ops.cast(mean, "float32"), ops.cast(second_moment, "float32")
    batch, inputs = ops.shape(mean)[0], ops.shape(mean)[-1]
    sum_of_squares = ops.sum(ops.reshape(ops.square(mean), (batch, -1, inputs)), axis=1)
    sum_of_seconds = ops.sum(ops.reshape(second_moment, (batch, -1, inputs)), axis=1)
    return smoothing_penalty_from_sums(sum_of_squares, sum_of_seconds, kernel, sigma)


def smoothing_penalty_from_sums(sum_of_squares, sum_of_seconds, kernel, sigma):
    """:func:`smoothing_penalty` from the per-sample sums over steps of ``mean^2`` and ``second``.

    With ``c_j = ||A_:,j||^2`` the term is ``sum_j c_j second_j + (sigma^2 rows - c_j) mean_j^2``,
    linear in these sums (shape ``(batch, inputs)``).

    Computed in float32 whatever the inputs' dtype: under a mixed-precision policy the sums
    of squares can exceed float16's range, and Keras adds a model's losses in float32.
    """
    sum_of_squares, sum_of_seconds, kernel, sigma = (
        ops.cast(t, "float32") for t in (sum_of_squares, sum_of_seconds, kernel, sigma)
    )
    column_norms = ops.sum(ops.square(kernel), axis=1)
    rows = ops.square(sigma) * ops.cast(ops.shape(kernel)[1], sum_of_squares.dtype)
    return ops.matmul(sum_of_seconds, column_norms) + ops.matmul(sum_of_squares, rows - column_norms)
