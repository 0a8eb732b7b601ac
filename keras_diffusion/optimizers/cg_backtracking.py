"""Backtracking over the saved CG iterates (Martens 2010, sec. 4.6).

Truncated CG minimizes the quadratic model, which may over-fit the curvature mini-batch or
mis-predict far from ``theta``: a later iterate can be a worse step on the true objective
than an earlier one. ``conjugate_gradient`` saves the iterates at iterations
``ceil(1.3^j)`` and the final one; Martens evaluates the objective at the last one and walks
back through the saved ones while the objective keeps decreasing, taking the iterate where
it stops improving.
"""

import collections

import tensorflow as tf

from keras_diffusion.curvature import loops

Backtracked = collections.namedtuple("Backtracked", ["index", "step", "loss", "evaluations"])
Backtracked.__doc__ = """The chosen saved iterate: its row ``index`` in the CG result, the
``step`` (a list like the parameters), the objective ``loss`` at ``theta + step`` and the
number of objective ``evaluations`` spent."""

_State = collections.namedtuple("_State", ["row", "best_row", "best_loss", "running", "count"])


def backtrack(loss_fn, params, iterates, num_saved, unroll=False):
    """Martens' backtracking: the best of the saved iterates found walking back from the last.

    Args:
        loss_fn: ``loss_fn(weights) -> scalar``, the true objective (e.g. ``closure.loss``).
        params: the current weights ``theta`` (a list of tensors).
        iterates: per parameter a tensor ``[max_saved, *shape]`` (``CGResult.iterates``).
        num_saved: int32 scalar, the number of valid rows (the last one is the final iterate).
        unroll: run the walk as straight-line code (``loops.run_loop``), needed when
            ``loss_fn`` all-reduces inside a replica context; the unrolled walk evaluates
            every row.

    Returns:
        A :data:`Backtracked` ``(index, step, loss, evaluations)``.

    Example:
    ```python
    result = solvers.conjugate_gradient(matvec, neg_grad, max_iterations=50)
    chosen = backtrack(closure.loss, closure.params, result.iterates, result.num_saved)
    ```
    """
    num_rows = int(iterates[0].shape[0])

    def at(row):
        return [s[row] for s in iterates]

    def loss_at(row):
        return loss_fn([p + tf.cast(d, p.dtype) for p, d in zip(params, at(row))])

    last = num_saved - 1
    last_loss = loss_at(last)

    def cond(s):
        return s.running

    def body(s):
        loss = loss_at(tf.maximum(s.row, 0))
        better = (s.row >= 0) & (loss < s.best_loss)
        return _State(
            row=s.row - 1,
            best_row=tf.where(better, s.row, s.best_row),
            best_loss=tf.where(better, loss, s.best_loss),
            running=better & (s.row > 0),
            count=s.count + tf.cast(s.row >= 0, tf.int32),
        )

    start = _State(row=last - 1, best_row=last, best_loss=last_loss, running=last > 0,
                   count=tf.constant(1))
    final = loops.run_loop(cond, body, start, max(num_rows - 1, 1), unroll)
    return Backtracked(final.best_row, at(final.best_row), final.best_loss, final.count)
