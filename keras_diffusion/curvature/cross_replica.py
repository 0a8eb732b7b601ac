"""Operators summed over replicas, and solvers that stop early under a distribution strategy.

Inside ``strategy.run`` of ``tf.distribute.MirroredStrategy`` each replica holds a share of
the batch, so a curvature product is the SUM over replicas of local products. TensorFlow
implements that all-reduce with ``merge_call``, which may not sit in a ``tf.while_loop``:
a solver calling it per iteration has to be unrolled (`loops.run_loop` with ``unroll=True``)
and pays every iteration up to its cap, even after it has converged.

`ReplicaSumOperator` removes that restriction for a whole solve. It keeps every replica's
local product (a Python callable, e.g. a Gauss-Newton operator linearized on that
replica's batch, `gauss_newton_operator`) and `solve` makes ONE ``merge_call`` per solve:
in cross-replica context it runs the solver once, in an ordinary ``tf.while_loop`` that
stops as soon as the solver's test says so, with a matvec that evaluates every replica's
local product on that replica's device and adds them (on one worker no collective inside
the loop; with several workers, ``MultiWorkerMirroredStrategy``, each worker sees only its
own replicas and one all-reduce per product adds the workers' sums). The solution is
returned to every replica. `solve_across_replicas` wraps a solver so that it
does this by itself when given such an operator: the solvers of `solvers` are wrapped, so
``conjugate_gradient(closure.gauss_newton_operator(), ...)`` stops early under a strategy.

Outside a replica context (one device) the operator is the plain sum ``local + extra``.
"""

import functools

import tensorflow as tf


class ReplicaSumOperator:
    """``v -> sum over replicas of local(v) + extra(v)``, solvable with early stopping.

    Args:
        local: callable, this replica's product on a list of tensors, bound to this
            replica's data when built (it is also called from cross-replica context, where
            it must not query the replica context).
        replica_context: the ``tf.distribute.ReplicaContext`` with more than one replica, or
            ``None`` on one device.
        extra: optional callable added once (not per replica), e.g. the Hessian of weight
            regularizers, which do not depend on the batch.

    Calling it inside ``strategy.run`` all-reduces (``merge_call``: straight-line code
    only); `solve` runs a whole solver across replicas from one ``merge_call``.
    """

    def __init__(self, local, replica_context=None, extra=None):
        self._local = local
        self._ctx = replica_context
        self._extra = extra

    @property
    def distributed(self):
        """Whether the operator sums over several replicas from inside ``strategy.run``."""
        return self._ctx is not None

    def __call__(self, vectors):
        total = self._local(vectors)
        if self._ctx is not None:
            total = self._ctx.all_reduce(tf.distribute.ReduceOp.SUM, total)
        return self._plus_extra(total, vectors)

    def _plus_extra(self, total, vectors):
        if self._extra is None:
            return list(total)
        return [t + e for t, e in zip(total, self._extra(vectors))]

    def solve(self, fn):
        """``fn(matvec)`` with ``matvec`` this operator, run once for all replicas.

        On several replicas ``fn`` (the first replica's, as ``merge_call`` does; every
        argument it uses must be replicated) runs in cross-replica context, where
        ``tf.while_loop`` is allowed: its ``matvec`` adds every replica's local product,
        each on its replica's device. Every replica receives the same result.
        """
        if self._ctx is None:
            return fn(self)
        return self._ctx.merge_call(_solve_across, args=(self, fn))

    def _summed(self, strategy, locals_):
        devices = strategy.extended.worker_devices

        def matvec(vectors):
            parts = []
            for local, device in zip(locals_, devices):
                with tf.device(device):
                    parts.append(list(local(vectors)))
            total = [tf.add_n(list(blocks)) for blocks in zip(*parts)]
            return self._plus_extra(_sum_over_workers(strategy, total), vectors)

        return matvec


def _sum_over_workers(strategy, tensors):
    """Sums over workers each worker's sum of its replicas' products: one collective
    all-reduce of the concatenated blocks (nothing on one worker).

    ``MultiWorkerMirroredStrategy`` runs the loop of `ReplicaSumOperator.solve` on every
    worker, each adding only its own replicas' products; the workers run the same loop (its
    test reads only all-reduced values), so each iteration's all-reduce meets its peers.
    """
    local = len(strategy.extended.worker_devices)
    if local == strategy.num_replicas_in_sync:
        return tensors
    flat = tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)
    # This worker's sum enters the all-reduce once, from its first replica.
    shares = strategy.experimental_distribute_values_from_function(
        lambda context: flat if context.replica_id_in_sync_group % local == 0
        else tf.zeros_like(flat)
    )
    flat = strategy.reduce(tf.distribute.ReduceOp.SUM, shares, axis=None)
    sizes = [tf.size(t) for t in tensors]
    return [tf.reshape(part, tf.shape(t)) for part, t in zip(tf.split(flat, sizes), tensors)]


def _solve_across(strategy, operators, fns):
    """The merge function of `ReplicaSumOperator.solve`: the first replica's ``fn`` on the
    sum of every replica's local product."""
    operators = strategy.experimental_local_results(operators)
    fn = strategy.experimental_local_results(fns)[0]
    return fn(operators[0]._summed(strategy, [op._local for op in operators]))


def solve_across_replicas(solver):
    """Wraps ``solver(matvec, ...)``: a distributed `ReplicaSumOperator` is solved once
    across replicas (`ReplicaSumOperator.solve`) in a ``tf.while_loop``, so the solver
    stops early; its ``unroll`` argument is then not needed and set to ``False``."""

    @functools.wraps(solver)
    def wrapper(matvec, *args, **kwargs):
        if isinstance(matvec, ReplicaSumOperator) and matvec.distributed:
            kwargs["unroll"] = False
            return matvec.solve(lambda summed: solver(summed, *args, **kwargs))
        return solver(matvec, *args, **kwargs)

    return wrapper
