"""Damped Gauss-Newton: one conjugate-gradient solve of ``(G + lambda I) d = -g`` per batch.

Pascanu (2014, thesis), Sec. 4.1 and 4.3.2: the generalized Gauss-Newton matrix
``G = J^T H_L J`` (``J`` the Jacobian of the outputs, ``H_L`` the Hessian of a convex loss in
the outputs) is positive semi-definite, so with Tikhonov damping ``lambda > 0`` the quadratic
model ``q(d) = g^T d + 1/2 d^T (G + lambda I) d`` has the unique minimizer solved for here by
conjugate gradient (truncated after ``cg_max_iters`` steps), using only ``G``-vector products.
This is Hessian-free optimization (Martens 2010) with a FIXED damping (sec. 4.3 there adapts
it by Levenberg-Marquardt) and no CG warm start (sec. 4.5) or backtracking (sec. 4.6):
the minimal closure optimizer, kept simple so that its steps can be checked against dense
linear algebra.
"""

import keras
import tensorflow as tf

from keras_diffusion.curvature import solvers
from keras_diffusion.optimizers.closure_optimizer import ClosureOptimizer


@keras.saving.register_keras_serializable(package="keras_diffusion")
class GaussNewton(ClosureOptimizer):
    """Damped Gauss-Newton steps ``theta <- theta + learning_rate * d``.

    ``d`` approximately solves ``(G + damping I) d = -g`` by conjugate gradient
    (``keras_diffusion.curvature.solvers.conjugate_gradient``, unrolled with
    ``unroll=True`` inside ``strategy.run``, as all-reduces cannot sit in a
    ``tf.while_loop``) with the closure's all-reduced products, so it gives the same steps on
    one device and on several replicas.

    Args:
        damping: Tikhonov damping ``lambda > 0`` added to the Gauss-Newton matrix.
        cg_max_iters: maximum number of CG iterations per step (under a distribution
            strategy they are unrolled: the train step's graph grows linearly with it).
        cg_tol: CG stops when ``||r|| <= cg_tol * ||g||``.
        learning_rate: scale of the step (1.0: the full Gauss-Newton step).
        name: the optimizer's name.
        **kwargs: the other arguments of ``keras.optimizers.Optimizer``.

    Example:
    ```python
    model = keras_diffusion.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=GaussNewton(damping=1e-3, cg_max_iters=20), loss="mse")
    model.fit(x, y, epochs=3)
    ```
    """

    def __init__(
        self,
        damping=1e-3,
        cg_max_iters=50,
        cg_tol=1e-6,
        learning_rate=1.0,
        name="gauss_newton",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not damping > 0:
            raise ValueError(
                f"GaussNewton needs damping > 0 (G is only semi-definite); got "
                f"damping={damping}. Use e.g. damping=1e-3."
            )
        if not (isinstance(cg_max_iters, int) and cg_max_iters > 0):
            raise ValueError(
                f"cg_max_iters must be a positive int, got {cg_max_iters!r}; e.g. 50."
            )
        if not cg_tol >= 0:
            raise ValueError(f"cg_tol must be >= 0, got {cg_tol!r}; e.g. 1e-6.")
        self.damping = float(damping)
        self.cg_max_iters = cg_max_iters
        self.cg_tol = float(cg_tol)

    def step(self, closure):
        loss, grads = closure.value_and_gradient()
        rhs = [-g for g in grads]
        step = solvers.conjugate_gradient(
            closure.ggn_vp,
            rhs,
            damping=self.damping,
            max_iterations=self.cg_max_iters,
            tol=self.cg_tol,
            epsilon=0.0,
            save_iterates=False,
            dot=closure.dot,
            # All-reduces (merge_call) cannot sit in the solver's tf.while_loop.
            unroll=closure.distributed,
        ).x
        lr = tf.cast(self.learning_rate, loss.dtype)
        new = [p + lr * d for p, d in zip(closure.params, step)]
        self.assign_if_finite(closure.variables, new, checks=[loss])
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            damping=self.damping, cg_max_iters=self.cg_max_iters, cg_tol=self.cg_tol
        )
        return config
