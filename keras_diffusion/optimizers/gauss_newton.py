"""Damped Gauss-Newton: Hessian-free with a fixed damping, one plain CG solve per batch.

Pascanu (2014, thesis), Sec. 4.1 and 4.3.2: the generalized Gauss-Newton matrix
``G = J^T H_L J`` (``J`` the Jacobian of the outputs, ``H_L`` the Hessian of a convex loss in
the outputs) is positive semi-definite, so with Tikhonov damping ``lambda > 0`` the quadratic
model ``q(d) = g^T d + 1/2 d^T (G + lambda I) d`` has the unique minimizer solved for here by
conjugate gradient (truncated after ``cg_max_iterations`` steps), using only ``G``-vector
products. It is :class:`~keras_diffusion.optimizers.HessianFree` (Martens 2010) with a FIXED
damping and none of its other devices (no Levenberg-Marquardt adaptation, sec. 4.3; no CG
warm start, sec. 4.5; no backtracking, sec. 4.6; no preconditioner, sec. 4.7; no
relative-progress stop, sec. 4.4; no line search), so that its steps can be checked against
dense linear algebra; the package has one CG step, that of ``HessianFree``.
"""

import keras

from keras_diffusion.optimizers.closure_optimizer import ClosureOptimizer
from keras_diffusion.optimizers.hessian_free import HessianFree


@keras.saving.register_keras_serializable(package="keras_diffusion")
class GaussNewton(HessianFree):
    """Damped Gauss-Newton steps ``theta <- theta + learning_rate * d``.

    ``d`` approximately solves ``(G + damping I) d = -g`` by conjugate gradient with the
    closure's Gauss-Newton operator (one recorded forward pass per step; under
    ``strategy.run`` one solve across replicas that stops early), so it gives the same steps
    on one device and on several replicas. The loss must have a Gauss-Newton form (squared error, or a cross-entropy on
    logits; see ``Closure.check_gauss_newton``): others are refused at the first step.

    Args:
        damping: Tikhonov damping ``lambda > 0`` (finite) added to the Gauss-Newton matrix;
            the value in use is the variable ``optimizer.damping``.
        cg_max_iterations: maximum number of CG iterations per step.
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
            damping=damping,
            cg_max_iterations=cg_max_iterations,
            cg_tol=cg_tol,
            cg_epsilon=0.0,
            warm_start_decay=0.0,
            backtracking=False,
            preconditioner=None,
            adapt_damping=False,
            line_search=False,
            structural_damping=0.0,
            learning_rate=learning_rate,
            curvature_fraction=curvature_fraction,
            name=name,
            **kwargs,
        )

    def get_config(self):
        # Only GaussNewton's own arguments: the fixed HessianFree devices are not arguments.
        config = ClosureOptimizer.get_config(self)
        config.update(damping=self.initial_damping, cg_max_iterations=self.cg_max_iterations,
                      cg_tol=self.cg_tol)
        return config
