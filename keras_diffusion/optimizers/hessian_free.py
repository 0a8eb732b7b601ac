"""Hessian-free optimization (Martens 2010; Martens & Sutskever 2011) as a Keras optimizer.

Pascanu (2014, thesis) sec. 4.1 (truncated Newton, trust region, CG) and 4.3.2 (Hessian-free,
structural damping, eqs. 4.35-4.36). Each step, on one batch:

1. the gradient ``g`` and loss ``f(theta)`` (one forward/backward pass, reused from the train
   step's forward pass);
2. preconditioned CG on ``(G + lambda I) d = -g`` (``keras_diffusion.curvature.solvers``),
   ``G`` the Gauss-Newton matrix (or the Hessian, or the Fisher matrix) on the curvature
   sub-batch, plus ``mu lambda G_sd`` of structural damping; warm-started from the previous
   solution times 0.95 (Martens 2010, sec. 4.5), stopped by Martens' relative-progress rule
   (sec. 4.4) or the iteration cap, preconditioned by ``(diag(sum g_i^2) + lambda)^0.75``
   (sec. 4.7, :mod:`.preconditioners`);
3. backtracking over the iterates saved at ``ceil(1.3^j)`` on the batch loss (sec. 4.6,
   :mod:`.cg_backtracking`);
4. the reduction ratio ``rho`` and the Levenberg-Marquardt update of ``lambda`` (sec. 4.1,
   :mod:`.damping`);
5. an Armijo line search on the step length (Martens & Sutskever 2012, :mod:`.line_search`);
6. ``theta <- theta + learning_rate * alpha * d`` through the non-finite guard: a non-finite
   loss, gradient, curvature (the CG model value) or ``rho`` keeps the weights, grows
   ``lambda`` and counts the step in ``rejected_steps``.

Under ``tf.distribute`` (``closure.distributed``) the Gauss-Newton CG solve runs once across
replicas in a ``tf.while_loop`` and stops early as on one device
(``keras_diffusion.curvature.cross_replica``); the Hessian, Fisher and structurally damped
solves, the backtracking and the line search run unrolled to their caps (all-reduces cannot
sit in a ``tf.while_loop``). Either way the steps equal those of one device.
"""

import keras
import tensorflow as tf

from keras_diffusion import validation
from keras_diffusion.curvature import gauss_newton_operator as gn_operator
from keras_diffusion.curvature import linear_operator, solvers
from keras_diffusion.optimizers import cg_backtracking, damping as damping_lib, line_search
from keras_diffusion.optimizers import preconditioners, structural_damping
from keras_diffusion.optimizers.closure_optimizer import ClosureOptimizer

CURVATURES = ("gauss_newton", "hessian", "fisher")
DISTRIBUTIONS = ("gaussian", "bernoulli", "categorical")


def curvature_matvec(closure, curvature, fisher_distribution="categorical", fisher_variance=1.0,
                     structural_layers=(), structural_weight=0.0, product_mode="auto"):
    """The curvature product ``v -> G v`` a Hessian-free step solves with (the one place).

    Args:
        closure: the step's ``Closure``.
        curvature: ``"gauss_newton"`` (``closure.gauss_newton_operator()``: the products of
            ``closure.ggn_vp`` from one recorded forward pass), ``"hessian"`` (``closure.hvp``)
            or ``"fisher"`` (``closure.fisher_vp`` of ``fisher_distribution``; Pascanu 2014
            sec. 4.3.1, equal to the Gauss-Newton matrix for the matching loss).
        structural_layers: recurrent layers whose hidden states are damped; with them the
            Gauss-Newton product also carries ``structural_weight * G_sd``
            (:func:`.structural_damping.structural_ggn_vp`, same passes).
        product_mode: the mode of ``closure.gauss_newton_operator`` (``"auto"``: the
            measured fastest for the model, ``gauss_newton_operator.choose_mode``).

    Returns:
        A callable on lists of tensors shaped like ``closure.params``.
    """
    if structural_layers:
        return structural_damping.structural_ggn_vp(closure, structural_layers, structural_weight)
    if curvature == "hessian":
        return closure.hvp
    if curvature == "fisher":
        return lambda v: closure.fisher_vp(v, distribution=fisher_distribution,
                                           variance=fisher_variance)
    return closure.gauss_newton_operator(mode=product_mode)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class HessianFree(ClosureOptimizer):
    """Hessian-free optimizer (Martens 2010) for ``keras_diffusion.Model``/``Sequential``.

    Args:
        damping: initial Levenberg-Marquardt damping ``lambda > 0`` (the adapted value is
            the variable ``optimizer.damping``); the rule of sec. 4.1 adapts it from any
            start.
        curvature: ``"gauss_newton"`` (default, Martens 2010), ``"hessian"`` (CG stops at
            negative curvature) or ``"fisher"``.
        cg_max_iterations: CG iteration cap (Martens 2010: 250).
        cg_tol: relative residual tolerance of CG (0: only Martens' rules stop it).
        cg_epsilon: Martens' relative-progress tolerance (sec. 4.4: 5e-4; 0 disables).
        cg_min_progress_window, cg_progress_window_fraction: its window
            ``k = max(10, 0.1 i)`` (sec. 4.4).
        cg_gamma: the save schedule ``ceil(gamma^j)`` for backtracking (sec. 4.6: 1.3).
        warm_start_decay: CG starts from this times the previous solution (sec. 4.5 and
            Martens & Sutskever 2011: 0.95; 0 starts from zero and keeps no state).
        backtracking: choose among the saved CG iterates on the batch loss (sec. 4.6).
        preconditioner: ``"martens"`` for ``(diag(sum g_i^2) + lambda)^exponent``
            (sec. 4.7) or ``None``.
        preconditioner_exponent: its exponent (0.75).
        adapt_damping: Levenberg-Marquardt adaptation of ``lambda`` (sec. 4.1).
        damping_increase, damping_decrease: its factors (3/2 when ``rho < 1/4``, 2/3 when
            ``rho > 3/4``).
        line_search: Armijo line search on the step length (Martens & Sutskever 2012).
        line_search_c, line_search_beta, line_search_max_steps: its sufficient-decrease
            constant (1e-2), shrink factor (0.8) and trial cap (60).
        structural_damping: ``mu`` of structural damping (Martens & Sutskever 2011: 1/30);
            used with ``structural_layers``.
        structural_layers: names of the recurrent layers (supporting
            ``keras_diffusion.probes``) whose hidden states are damped; empty for none.
        fisher_distribution, fisher_variance: the predictive distribution of the outputs for
            ``curvature="fisher"`` (``"gaussian"``, ``"bernoulli"`` or ``"categorical"``).
        product_mode: how the Gauss-Newton products are computed
            (``keras_diffusion.curvature.gauss_newton_operator``): ``"recorded"`` (the train
            step's one forward pass reused by every product), ``"forward"`` or
            ``"double_backward"`` (a forward pass per product), or ``"auto"`` (default: the
            measured fastest for the model's structure, ``choose_mode``).
        learning_rate: scale of the step (1.0: the full step).
        curvature_fraction: fraction of each batch for the curvature products (Martens 2010
            sec. 4.2 uses a smaller curvature batch).
        name: the optimizer's name.
        **kwargs: the other arguments of ``keras.optimizers.Optimizer``.

    Diagnostics (``fit`` logs): ``damping``, ``cg_iterations``, ``cg_stop_reason`` (index
    into ``keras_diffusion.curvature.solvers.STOP_REASONS``), ``step_norm`` (of the step
    taken), ``rejected_steps``; with backtracking, damping adaptation or line search also
    ``rho``, ``step_length`` (Armijo's ``alpha``) and ``loss_evaluations`` (objective
    evaluations of backtracking and line search in the step).

    Example:
    ```python
    model = keras_diffusion.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=HessianFree(damping=1.0, cg_max_iterations=50), loss="mse")
    model.fit(x, y, epochs=3)   # logs damping, rho, cg_iterations, step_length, ...
    ```
    """

    def __init__(
        self,
        damping=1.0,
        curvature="gauss_newton",
        cg_max_iterations=250,
        cg_tol=0.0,
        cg_epsilon=5e-4,
        cg_min_progress_window=10,
        cg_progress_window_fraction=0.1,
        cg_gamma=1.3,
        warm_start_decay=0.95,
        backtracking=True,
        preconditioner="martens",
        preconditioner_exponent=preconditioners.EXPONENT,
        adapt_damping=True,
        damping_increase=damping_lib.INCREASE,
        damping_decrease=damping_lib.DECREASE,
        line_search=True,
        line_search_c=1e-2,
        line_search_beta=0.8,
        line_search_max_steps=60,
        structural_damping=structural_damping.STRUCTURAL_DAMPING,
        structural_layers=(),
        fisher_distribution="categorical",
        fisher_variance=1.0,
        product_mode="auto",
        learning_rate=1.0,
        curvature_fraction=1.0,
        name="hessian_free",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, curvature_fraction=curvature_fraction,
                         name=name, **kwargs)
        self.initial_damping = validation.positive(
            "damping", damping, "Hessian-free needs damping > 0 (G is only semi-definite); "
            "use e.g. damping=1.0.")
        self.curvature = validation.one_of("curvature", curvature, CURVATURES,
                                           'Martens (2010) uses "gauss_newton".')
        self.cg_max_iterations = validation.positive_int(
            "cg_max_iterations", cg_max_iterations, "Martens (2010) uses 250.")
        self.cg_tol = validation.nonnegative("cg_tol", cg_tol, "E.g. 0 or 1e-6.")
        self.cg_epsilon = validation.nonnegative("cg_epsilon", cg_epsilon,
                                                 "Martens (2010) uses 5e-4; 0 disables.")
        self.cg_min_progress_window = validation.positive_int(
            "cg_min_progress_window", cg_min_progress_window, "Martens (2010) uses 10.")
        self.cg_progress_window_fraction = validation.fraction(
            "cg_progress_window_fraction", cg_progress_window_fraction,
            "Martens (2010) uses 0.1.", allow_zero=True)
        self.cg_gamma = validation.real("cg_gamma", cg_gamma, "Martens (2010) uses 1.3.")
        if not self.cg_gamma > 1.0:
            raise ValueError(f"`cg_gamma` must be > 1 (a growing save schedule), got "
                             f"{cg_gamma!r}. Martens (2010) uses 1.3.")
        self.warm_start_decay = validation.fraction(
            "warm_start_decay", warm_start_decay, "Martens (2010) uses 0.95; 0 disables.",
            allow_zero=True)
        self.backtracking = bool(backtracking)
        self.preconditioner = None if preconditioner is None else validation.one_of(
            "preconditioner", preconditioner, ("martens",), "Or None for plain CG.")
        self.preconditioner_exponent = validation.nonnegative(
            "preconditioner_exponent", preconditioner_exponent, "Martens (2010) uses 0.75.")
        self.adapt_damping = bool(adapt_damping)
        self.damping_increase, self.damping_decrease = damping_lib.check_factors(
            damping_increase, damping_decrease)
        self.line_search = bool(line_search)
        self.line_search_c = validation.fraction("line_search_c", line_search_c,
                                                 "Martens & Sutskever (2012) use 1e-2.")
        self.line_search_beta = validation.fraction("line_search_beta", line_search_beta,
                                                    "Martens & Sutskever (2012) use 0.8.")
        self.line_search_max_steps = validation.integer(
            "line_search_max_steps", line_search_max_steps, 0, "E.g. 60.")
        self.structural_damping = validation.nonnegative(
            "structural_damping", structural_damping, "Martens & Sutskever (2011) use 1/30.")
        if isinstance(structural_layers, str):
            structural_layers = [structural_layers]
        self.structural_layers = [getattr(layer, "name", layer) for layer in structural_layers]
        if self.structural_layers and self.curvature != "gauss_newton":
            raise ValueError(
                f"Structural damping is a Gauss-Newton term: it needs "
                f"curvature='gauss_newton', got curvature={curvature!r} with "
                f"structural_layers={self.structural_layers}. Drop one of them.")
        self.fisher_distribution = validation.one_of(
            "fisher_distribution", fisher_distribution, DISTRIBUTIONS,
            "The distribution the model's outputs parameterize.")
        self.fisher_variance = validation.positive("fisher_variance", fisher_variance, "E.g. 1.0.")
        self.product_mode = gn_operator.check_mode(product_mode, "product_mode")
        self._evaluates_trial = self.backtracking or self.adapt_damping or self.line_search

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.damping = self.add_diagnostic("damping", self.initial_damping)
        self.cg_iterations = self.add_diagnostic("cg_iterations", 0, dtype="int32")
        self.cg_stop_reason = self.add_diagnostic("cg_stop_reason", 0, dtype="int32")
        self.step_norm = self.add_diagnostic("step_norm")
        if self._evaluates_trial:
            self.rho = self.add_diagnostic("rho")
            self.step_length = self.add_diagnostic("step_length")
            self.loss_evaluations = self.add_diagnostic("loss_evaluations", 0, dtype="int32")
        self.warm_start = (
            self.add_state_like(var_list, "cg_warm_start") if self.warm_start_decay else None
        )

    def curvature_product(self, closure, damping):
        """The step's curvature matvec (see :func:`curvature_matvec`)."""
        if self.curvature == "gauss_newton":
            closure.check_gauss_newton(type(self).__name__)
        layers = ()
        if self.structural_layers and self.structural_damping:
            layers = structural_damping.resolve_layers(closure.model, self.structural_layers)
        return curvature_matvec(closure, self.curvature, self.fisher_distribution,
                                self.fisher_variance, layers, self.structural_damping * damping,
                                self.product_mode)

    def step(self, closure):
        loss, grads = closure.value_and_gradient()
        dtype = loss.dtype
        unroll = closure.distributed
        damping = tf.cast(self.damping.value, dtype)
        preconditioner = None
        if self.preconditioner:
            preconditioner = preconditioners.martens_diagonal(
                preconditioners.mean_squared_example_gradients(closure), damping,
                self.preconditioner_exponent)
        x0 = None
        if self.warm_start is not None:
            x0 = [self.warm_start_decay * tf.cast(w.value, dtype) for w in self.warm_start]
        result = solvers.conjugate_gradient(
            self.curvature_product(closure, damping),
            [-g for g in grads],
            x0=x0,
            preconditioner=preconditioner,
            damping=damping,
            max_iterations=self.cg_max_iterations,
            tol=self.cg_tol,
            epsilon=self.cg_epsilon,
            min_progress_window=self.cg_min_progress_window,
            progress_window_fraction=self.cg_progress_window_fraction,
            gamma=self.cg_gamma,
            save_iterates=self.backtracking,
            dot=closure.dot,
            unroll=unroll,
        )
        direction, checks, alpha = result.x, [loss, result.phi[result.num_saved - 1]], 1.0
        if self._evaluates_trial:
            direction, alpha, checks = self._trial(closure, loss, grads, result, unroll)
        lr = tf.cast(self.learning_rate, dtype)
        step = [lr * alpha * d for d in direction]
        new = [p + d for p, d in zip(closure.params, step)]
        accepted = self.assign_if_finite(closure.variables, new, checks=checks + grads)
        if self.adapt_damping:
            # No step taken (the line search found no sufficient decrease: d was no descent
            # direction) counts as a failed one: lambda grows, pulling d towards -g.
            taken = accepted & (tf.cast(alpha, dtype) > 0)
            self.damping.assign(damping_lib.levenberg_marquardt(
                damping, self.rho.value, taken, self.damping_increase,
                self.damping_decrease))
        if self.warm_start is not None:
            for w, x in zip(self.warm_start, result.x):
                w.assign(tf.where(accepted, tf.cast(x, w.dtype), tf.zeros_like(x, w.dtype)))
        self.cg_iterations.assign(tf.cast(result.num_iterations, "int32"))
        self.cg_stop_reason.assign(tf.cast(result.stop_reason, "int32"))
        self.step_norm.assign(tf.cast(
            tf.where(accepted, linear_operator.norm(step), 0.0), "float32"))
        return loss

    def _trial(self, closure, loss, grads, result, unroll):
        """Backtracking, ``rho`` and the line search: ``(direction, alpha, checks)``."""
        if self.backtracking:
            chosen = cg_backtracking.backtrack(
                closure.loss, closure.params, result.iterates, result.num_saved, unroll)
            direction, loss_at_d, model_change = chosen.step, chosen.loss, tf.gather(
                result.phi, chosen.index)
            evaluations = chosen.evaluations
        else:
            direction, model_change = result.x, result.phi[result.num_saved - 1]
            loss_at_d = closure.loss([p + d for p, d in zip(closure.params, direction)])
            evaluations = tf.constant(1)
        rho = damping_lib.reduction_ratio(loss_at_d - loss, model_change)
        alpha = tf.ones([], loss.dtype)
        if self.line_search:
            found = line_search.armijo(
                closure.loss, closure.params, direction, loss, closure.dot(grads, direction),
                loss_at_d, self.line_search_c, self.line_search_beta,
                self.line_search_max_steps, unroll)
            alpha, evaluations = found.step_length, evaluations + found.evaluations
        self.rho.assign(tf.cast(rho, "float32"))
        self.step_length.assign(tf.cast(alpha, "float32"))
        self.loss_evaluations.assign(tf.cast(evaluations, "int32"))
        return direction, alpha, [loss, model_change, rho, alpha]

    def get_config(self):
        config = super().get_config()
        config.update(
            damping=self.initial_damping,
            curvature=self.curvature,
            cg_max_iterations=self.cg_max_iterations,
            cg_tol=self.cg_tol,
            cg_epsilon=self.cg_epsilon,
            cg_min_progress_window=self.cg_min_progress_window,
            cg_progress_window_fraction=self.cg_progress_window_fraction,
            cg_gamma=self.cg_gamma,
            warm_start_decay=self.warm_start_decay,
            backtracking=self.backtracking,
            preconditioner=self.preconditioner,
            preconditioner_exponent=self.preconditioner_exponent,
            adapt_damping=self.adapt_damping,
            damping_increase=self.damping_increase,
            damping_decrease=self.damping_decrease,
            line_search=self.line_search,
            line_search_c=self.line_search_c,
            line_search_beta=self.line_search_beta,
            line_search_max_steps=self.line_search_max_steps,
            structural_damping=self.structural_damping,
            structural_layers=list(self.structural_layers),
            fisher_distribution=self.fisher_distribution,
            fisher_variance=self.fisher_variance,
            product_mode=self.product_mode,
        )
        return config
