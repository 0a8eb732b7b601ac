"""Damped Gauss-Newton: one conjugate-gradient solve of ``(G + lambda I) d = -g`` per batch.

Pascanu (2014, thesis), Sec. 4.1 and 4.3.2: the generalized Gauss-Newton matrix
``G = J^T H_L J`` (``J`` the Jacobian of the outputs, ``H_L`` the Hessian of a convex loss in
the outputs) is positive semi-definite, so with Tikhonov damping ``lambda > 0`` the quadratic
model ``q(d) = g^T d + 1/2 d^T (G + lambda I) d`` has the unique minimizer solved for here by
conjugate gradient (truncated after ``cg_max_iterations`` steps), using only ``G``-vector
products. This is Hessian-free optimization (Martens 2010) with a FIXED damping (sec. 4.3
there adapts it by Levenberg-Marquardt) and no CG warm start (sec. 4.5) or backtracking
(sec. 4.6): the minimal closure optimizer, kept simple so that its steps can be checked
against dense linear algebra. Its damping is already optimizer state (a variable, saved and
restored with the optimizer), so that an adaptive subclass only assigns it.
"""

import keras
import tensorflow as tf

from keras_diffusion import validation
from keras_diffusion.curvature import linear_operator, solvers
from keras_diffusion.optimizers.closure_optimizer import ClosureOptimizer


@keras.saving.register_keras_serializable(package="keras_diffusion")
class GaussNewton(ClosureOptimizer):
    """Damped Gauss-Newton steps ``theta <- theta + learning_rate * d``.

    ``d`` approximately solves ``(G + damping I) d = -g`` by conjugate gradient
    (``keras_diffusion.curvature.solvers.conjugate_gradient``, unrolled with
    ``unroll=True`` inside ``strategy.run``, as all-reduces cannot sit in a
    ``tf.while_loop``) with the closure's all-reduced products, so it gives the same steps on
    one device and on several replicas. The loss must have a Gauss-Newton form (squared
    error, or a cross-entropy on logits; see ``Closure.check_gauss_newton``): others are
    refused at the first step.

    Args:
        damping: initial Tikhonov damping ``lambda > 0`` (finite) added to the Gauss-Newton
            matrix; the value in use is the variable ``optimizer.damping``.
        cg_max_iterations: maximum number of CG iterations per step (under a distribution
            strategy they are unrolled: the train step's graph grows linearly with it).
        cg_tol: CG stops when ``||r|| <= cg_tol * ||g||``.
        learning_rate: scale of the step (1.0: the full Gauss-Newton step).
        curvature_fraction: fraction of each batch for the ``G`` products (see
            ``ClosureOptimizer``).
        name: the optimizer's name.
        **kwargs: the other arguments of ``keras.optimizers.Optimizer``.

    Diagnostics (in the ``fit`` logs): ``damping``, ``cg_iterations``, ``cg_stop_reason``
    (an index into ``keras_diffusion.curvature.solvers.STOP_REASONS``), ``step_norm``
    (``||learning_rate * d||`` of the last step) and ``rejected_steps``.

    Example:
    ```python
    model = keras_diffusion.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=GaussNewton(damping=1e-3, cg_max_iterations=20), loss="mse")
    model.fit(x, y, epochs=3)
    ```
    """

    def __init__(
        self,
        damping=1e-3,
        cg_max_iterations=50,
        cg_tol=1e-6,
        learning_rate=1.0,
        curvature_fraction=1.0,
        name="gauss_newton",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            curvature_fraction=curvature_fraction,
            name=name,
            **kwargs,
        )
        self.initial_damping = validation.positive(
            "damping", damping, "GaussNewton needs damping > 0 (G is only semi-definite); "
            "use e.g. damping=1e-3."
        )
        self.cg_max_iterations = validation.positive_int(
            "cg_max_iterations", cg_max_iterations, "E.g. 50."
        )
        self.cg_tol = validation.nonnegative("cg_tol", cg_tol, "E.g. 1e-6.")

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.damping = self.add_diagnostic("damping", self.initial_damping)
        self.cg_iterations = self.add_diagnostic("cg_iterations", 0, dtype="int32")
        self.cg_stop_reason = self.add_diagnostic("cg_stop_reason", 0, dtype="int32")
        self.step_norm = self.add_diagnostic("step_norm")

    def step(self, closure):
        closure.check_gauss_newton(type(self).__name__)
        loss, grads = closure.value_and_gradient()
        rhs = [-g for g in grads]
        result = solvers.conjugate_gradient(
            closure.gauss_newton_operator(),
            rhs,
            damping=tf.cast(self.damping.value, loss.dtype),
            max_iterations=self.cg_max_iterations,
            tol=self.cg_tol,
            epsilon=0.0,
            save_iterates=False,
            dot=closure.dot,
            # All-reduces (merge_call) cannot sit in the solver's tf.while_loop.
            unroll=closure.distributed,
        )
        lr = tf.cast(self.learning_rate, loss.dtype)
        step = [lr * d for d in result.x]
        new = [p + d for p, d in zip(closure.params, step)]
        self.cg_iterations.assign(tf.cast(result.num_iterations, "int32"))
        self.cg_stop_reason.assign(tf.cast(result.stop_reason, "int32"))
        self.step_norm.assign(tf.cast(linear_operator.norm(step), "float32"))
        self.assign_if_finite(closure.variables, new, checks=[loss])
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            damping=self.initial_damping,
            cg_max_iterations=self.cg_max_iterations,
            cg_tol=self.cg_tol,
        )
        return config
