"""Saddle-Free Newton: the gradient rescaled by the inverse of ``|H| + lambda I``.

Pascanu (2014, thesis), sec. 4.4-4.5 (Dauphin, Pascanu et al. 2014): near a saddle point the
Newton step ``-H^-1 g`` moves TOWARDS the critical point along directions of negative
curvature (a saddle attracts Newton's method), while gradient descent escapes it slowly.
Replacing ``H`` by ``|H|``, the Hessian with the absolute values of its eigenvalues, keeps
Newton's per-direction scaling ``1 / |lambda_i|`` and the gradient's sign, so saddles repel:
it is the generalized trust-region step of eqs. 4.72-4.74 (minimize the first-order model
subject to ``d^T |H| d <= r``, which bounds the second-order term by Lemma 5). With no
negative curvature it is Newton's method.

The step is ``d = -B^T (|H|_B + lambda I)^-1 B g`` for an orthonormal basis ``B``
(``keras_diffusion.optimizers.saddle_free_basis``): all eigenvectors of the dense Hessian
(``mode="exact"``, small models) or the Ritz vectors of ``lanczos_num_steps`` Lanczos steps
from the gradient (``mode="krylov"``). The damping ``lambda`` and the step length come from
``keras_diffusion.optimizers.saddle_free_damping``: the per-step search over
``{1, ..., 1e-5}`` with learning rate 1 of sec. 4.5.3, or Levenberg-Marquardt with an Armijo
line search, or fixed.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_diffusion import validation
from keras_diffusion.curvature import linear_operator
from keras_diffusion.optimizers import saddle_free_basis as sfb
from keras_diffusion.optimizers import saddle_free_damping as sfd
from keras_diffusion.optimizers.closure_optimizer import ClosureOptimizer

MODES = ("exact", "krylov")
DAMPING_RULES = ("auto", "search", "levenberg_marquardt", "fixed")
DISTRIBUTIONS = ("categorical", "bernoulli", "gaussian")


@keras.saving.register_keras_serializable(package="keras_diffusion")
class SaddleFreeNewton(ClosureOptimizer):
    """Saddle-Free Newton steps ``theta <- theta - alpha (|H| + lambda I)^-1 g``.

    Works in ``fit`` of a ``keras_diffusion.Model``/``Sequential`` (a closure optimizer),
    on one device or under ``tf.distribute.MirroredStrategy`` (the Lanczos recurrence and
    the line search then run unrolled: the same steps as on one device).

    Args:
        mode: ``"exact"``: the dense Hessian (``n^2`` memory, ``n`` second-derivative
            passes and an ``n x n`` eigendecomposition per step; for models of a few
            thousand weights, thesis sec. 4.5.3); ``"krylov"``: ``lanczos_num_steps``
            Lanczos vectors of ``H`` from the gradient (Dauphin et al. 2014, sec. 6).
        matrix: ``"abs"`` (``|H|``, eq. 4.74), ``"squared"`` (``H^T H``, eq. 4.70),
            ``"rescaled_squared"`` (``H^T H / |lambda_max|``, eq. 4.75) or
            ``"rescaled_squared_fisher"`` (eq. 4.75 plus the Fisher matrix, sec. 4.3.8;
            ``mode="krylov"`` only).
        damping: initial ``lambda > 0``; default 3, the initial Levenberg-Marquardt damping
            of the thesis' sec. 4.5.3 (larger-scale experiments). The value in use is the
            variable ``optimizer.damping``.
        damping_rule: ``"search"``: every step tries ``damping_candidates`` with step
            ``learning_rate`` and keeps the lowest loss (sec. 4.5.3; no line search);
            ``"levenberg_marquardt"``: adapts ``lambda`` by the reduction ratio (Martens
            2010 sec. 4.1) after a line search; ``"fixed"``: keeps ``damping``, with the line
            search; ``"auto"``: ``"search"`` in exact mode, ``"levenberg_marquardt"`` in
            krylov mode.
        damping_candidates: the dampings ``"search"`` tries; default ``{1, 1e-1, ...,
            1e-5}`` (sec. 4.5.3).
        lanczos_num_steps: the dimension ``k`` of the Krylov subspace (at most the number of
            weights; with ``k = n`` krylov mode equals exact mode). Default 20.
        subspace: ``"hessian"``: the Krylov space of ``H``; ``"gauss_newton"``: that of the
            Gauss-Newton matrix, with the sign from ``H`` projected on it (the thesis'
            sec. 4.5.2 remark on the HF pipeline).
        line_search_steps: the most loss evaluations of the Armijo backtracking line search
            (halving the step length from ``learning_rate``); 0 takes the step
            ``learning_rate`` as is. Not used by ``"search"``.
        fisher_distribution: the predictive distribution of the Fisher matrix
            (``"rescaled_squared_fisher"``): ``"categorical"``, ``"bernoulli"`` or
            ``"gaussian"`` (``Closure.fisher_vp``).
        learning_rate: the (initial) step length ``alpha``; 1 is the full step.
        curvature_fraction: fraction of each batch for the curvature (``ClosureOptimizer``).
        name: the optimizer's name.
        **kwargs: the other arguments of ``keras.optimizers.Optimizer``.

    Diagnostics (in the ``fit`` logs): ``damping`` (the ``lambda`` of the next step; for
    ``"search"`` the one chosen), ``ritz_min`` and ``ritz_max`` (the smallest and largest
    eigenvalue of ``H`` in the subspace: exact in exact mode), ``step_length`` (``||theta_new
    - theta||``, 0 when no step was taken), ``reduction_ratio`` (loss decrease over the
    decrease of the quadratic model with the chosen matrix) and ``rejected_steps``
    (non-finite loss, curvature or step: weights kept).

    Example:
    ```python
    model = keras_diffusion.Sequential([keras.Input((4,)), keras.layers.Dense(8, "tanh"),
                                        keras.layers.Dense(1)])
    model.compile(optimizer=SaddleFreeNewton(mode="krylov", lanczos_num_steps=10), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=5)
    ```
    """

    def __init__(
        self,
        mode="krylov",
        matrix="abs",
        damping=3.0,
        damping_rule="auto",
        damping_candidates=sfd.DAMPING_CANDIDATES,
        lanczos_num_steps=20,
        subspace="hessian",
        line_search_steps=8,
        fisher_distribution="categorical",
        learning_rate=1.0,
        curvature_fraction=1.0,
        name="saddle_free_newton",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            curvature_fraction=curvature_fraction,
            name=name,
            **kwargs,
        )
        self.mode = validation.one_of("mode", mode, MODES)
        self.matrix = validation.one_of("matrix", matrix, sfb.MATRICES)
        if mode == "exact" and matrix == "rescaled_squared_fisher":
            raise ValueError(
                "matrix='rescaled_squared_fisher' needs Fisher-vector products per basis "
                "vector; use mode='krylov' (with lanczos_num_steps equal to the number of "
                "weights it spans the whole space)."
            )
        self.initial_damping = validation.positive(
            "damping", damping, "E.g. damping=3.0 (thesis sec. 4.5.3)."
        )
        self.damping_rule = validation.one_of("damping_rule", damping_rule, DAMPING_RULES)
        candidates = tuple(damping_candidates)
        if not candidates:
            raise ValueError(
                "damping_candidates is empty; pass e.g. (1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5)."
            )
        self.damping_candidates = tuple(
            validation.positive("damping_candidates entry", c, "E.g. 1e-3.")
            for c in candidates
        )
        self.lanczos_num_steps = validation.positive_int(
            "lanczos_num_steps", lanczos_num_steps, "E.g. 20."
        )
        self.subspace = validation.one_of("subspace", subspace, sfb.SUBSPACES)
        self.line_search_steps = validation.integer(
            "line_search_steps", line_search_steps, hint="0 (no line search) or e.g. 8."
        )
        self.fisher_distribution = validation.one_of(
            "fisher_distribution", fisher_distribution, DISTRIBUTIONS
        )

    @property
    def rule(self):
        """The damping rule in use (``"auto"`` resolved by the mode)."""
        if self.damping_rule != "auto":
            return self.damping_rule
        return "search" if self.mode == "exact" else "levenberg_marquardt"

    def build(self, var_list):
        if self.built:
            return
        size = sum(int(np.prod(v.shape)) for v in var_list)
        if self.mode == "krylov" and self.lanczos_num_steps > size:
            raise ValueError(
                f"lanczos_num_steps={self.lanczos_num_steps} exceeds the number of weights "
                f"({size}); pass lanczos_num_steps <= {size}."
            )
        super().build(var_list)
        self.damping = self.add_diagnostic("damping", self.initial_damping)
        self.ritz_min = self.add_diagnostic("ritz_min")
        self.ritz_max = self.add_diagnostic("ritz_max")
        self.step_length = self.add_diagnostic("step_length")
        self.reduction_ratio = self.add_diagnostic("reduction_ratio")

    def step(self, closure):
        if self.matrix == "rescaled_squared_fisher" or self.subspace == "gauss_newton":
            closure.check_gauss_newton(type(self).__name__)
        loss, grads = closure.value_and_gradient()
        basis = sfb.curvature_basis(
            closure, grads, self.mode, self.matrix, self.lanczos_num_steps,
            self.subspace, self.fisher_distribution,
        )
        rows, mu = basis.rows, basis.eigenvalues
        coefficients = tf.linalg.matvec(rows, sfb.flatten(grads))
        theta = sfb.flatten(closure.params)

        def trial_loss(flat_step):
            return closure.loss(sfb.unflatten(theta + flat_step, closure.params))

        def step_for(damping):
            return sfd.damped_step(rows, mu, coefficients, damping)

        lr = tf.cast(self.learning_rate, loss.dtype)
        if self.rule == "search":
            damping, new_loss = sfd.search_damping(
                trial_loss, step_for, self.damping_candidates, lr
            )
            alpha = lr
        else:
            damping = tf.cast(self.damping.value, loss.dtype)
            direction = step_for(damping)
            if self.line_search_steps:
                slope = -tf.reduce_sum(coefficients**2 / (mu + damping))
                alpha, new_loss = sfd.backtracking(
                    trial_loss, direction, loss, slope, lr, self.line_search_steps,
                    closure.distributed,
                )
            else:
                alpha, new_loss = lr, trial_loss(lr * direction)
        flat_step = alpha * step_for(damping)
        decrease = sfd.model_decrease(mu, coefficients, damping, alpha)
        rho = tf.where(decrease < 0, (new_loss - loss) / tf.minimum(decrease, -1e-30), 0.0)
        if self.rule == "levenberg_marquardt":
            next_damping = sfd.levenberg_marquardt(damping, rho)
        else:
            next_damping = damping
        accepted = self.assign_if_finite(
            closure.variables,
            sfb.unflatten(theta + flat_step, closure.params),
            checks=[loss, new_loss, mu, tf.where(basis.finite, 0.0, float("nan"))],
        )
        self.damping.assign(tf.where(accepted, tf.cast(next_damping, "float32"), self.damping))
        self.ritz_min.assign(tf.cast(tf.reduce_min(basis.ritz_values), "float32"))
        self.ritz_max.assign(tf.cast(tf.reduce_max(basis.ritz_values), "float32"))
        length = linear_operator.norm([flat_step])
        self.step_length.assign(tf.cast(tf.where(accepted, length, 0.0), "float32"))
        self.reduction_ratio.assign(tf.cast(rho, "float32"))
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            mode=self.mode,
            matrix=self.matrix,
            damping=self.initial_damping,
            damping_rule=self.damping_rule,
            damping_candidates=list(self.damping_candidates),
            lanczos_num_steps=self.lanczos_num_steps,
            subspace=self.subspace,
            line_search_steps=self.line_search_steps,
            fisher_distribution=self.fisher_distribution,
        )
        return config
