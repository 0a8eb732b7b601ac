"""Entropy-SGD, HJ and HEAT: descent on a smoothed loss (Chaudhari et al. 2018, sec. 4.4, 7).

All three descend a smoothing ``f_gamma`` of the loss, with an outer iterate ``x`` (the model's
weights) and an inner loop of ``L`` gradient evaluations per outer step:

- **Entropy-SGD** (sec. 7.1): ``f_gamma`` is the local entropy, the solution of the viscous
  Hamilton-Jacobi equation. The inner loop is Langevin dynamics coupled to ``x``, eq. (32),

      y^{k+1} = y^k - eta_y [grad f_mb(y^k) + (y^k - x^k) / gamma] + sqrt(eta_y / beta_ex) eps^k,

  started at ``y = x``, with the forward-looking average
  ``<y>^{k+1} = alpha <y>^k + (1 - alpha) y^{k+1}`` (``<y> = x`` at the start); after ``L``
  inner steps the outer step of eq. (33) is ``x <- x - (eta / gamma) (x - <y>)``.
- **HJ** (sec. 7.2): the same with ``L = 5``, no extrinsic noise and ``<y> = y`` (the last
  iterate, ``alpha = 0``). Its inner loop is gradient descent on
  ``f(y) + |y - x|^2 / (2 gamma)``, whose minimizer is the proximal point ``prox_{gamma f}(x)``;
  with ``eta = gamma`` the outer step approximates the proximal-point step ``x <- prox(x)``
  (the Hopf-Lax solution of the non-viscous HJ equation, sec. 4.4).
- **HEAT** (sec. 7.3, eq. (35)): ``f_gamma`` solves the heat equation;
  ``x <- x - (eta / L) sum_i grad f_mb(x + eps_i)``, ``eps_i ~ N(0, gamma I)``.

Momentum (sec. 7.4), a Nesterov look-ahead over outer steps with ``delta = momentum``: the inner
loop runs at the anchor ``z`` and
``x^{m+1} = z^m - eta d(z^m)``, ``z^{m+1} = x^{m+1} + delta (x^{m+1} - x^m)`` (``z = x`` when
``delta = 0``), ``d`` the outer direction above. Scoping (sec. 7.5): at outer step ``m``,
``gamma = gamma_0 (1 - gamma_1)^m``, held over the ``L`` inner steps of that outer step.

Fresh mini-batches (the paper's semantics). Each train step of ``fit`` is ONE inner step on its
own mini-batch; the inner loop lives in optimizer variables (the inner iterate ``y``, the
average or HEAT's gradient sum ``<y>``, the anchor ``z``, the count of inner steps), so it runs
across train steps, on any dataset, resumes batch-exactly and works under ``tf.distribute``.
The model's weights hold ``x`` at all times and change only at an outer step: validation,
``predict``, callbacks and saving see ``x``.

Why a ``ClosureOptimizer``. In ``keras.Model.train_step`` the forward pass runs at the model's
weights before any optimizer code, so a gradient optimizer could only evaluate ``grad f(y)`` if
the weights held ``y`` between steps, which evaluation and saving would then see. A closure
evaluates the gradient at ``y`` statelessly (``keras.StatelessScope``) while the weights keep
``x``; the train step's own forward pass runs at ``x``, so the logged loss and metrics are the
anchor's, BatchNorm statistics follow ``x``, and there is no moment at which a callback could
see ``y``. It costs one forward pass at ``x`` per train step
(``scripts/benchmark_local_entropy.py``).

Gradient evaluations. Each train step evaluates one mini-batch gradient, as one SGD step does;
effective epochs (Remark 22) are therefore ``fit`` epochs: ``gradient_evaluations /
steps_per_epoch``. Diagnostics (``fit`` logs): ``rejected_steps``, ``gamma`` (this outer step's),
``outer_steps``, ``gradient_evaluations`` and, with ``steps_per_epoch``, ``effective_epochs``.

Noise (Entropy-SGD's Langevin term, HEAT's perturbations) is drawn statelessly from
``(seed, variable index, gradient evaluation)``: reproducible from the seed, identical on
every replica, and resumed bit-exactly (the counter is saved with the optimizer).

A step whose gradient, loss or update is non-finite is refused by the package's guard: nothing
changes (neither the weights nor the inner loop) and ``rejected_steps`` goes up.
"""

import keras
import tensorflow as tf

from keras_diffusion import validation
from keras_diffusion.optimizers.closure_optimizer import ClosureOptimizer


def _select(predicate, first, second):
    """``first`` if ``predicate`` else ``second`` (lists of tensors or variables), by tf.cond."""
    return tf.cond(
        predicate,
        lambda: [tf.identity(t) for t in first],
        lambda: [tf.identity(t.value if isinstance(t, keras.Variable) else t) for t in second],
    )


def _unit_interval(name, value, hint):
    number = validation.real(name, value, hint)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1), got {value!r}. {hint}")
    return number


class _LocalEntropy(ClosureOptimizer):
    """What the three share: phase, anchor, momentum, scoping, noise, guard, diagnostics.

    Subclasses implement ``restart_average(z)`` (``<y>`` at the start of an inner loop),
    ``inner(z, y, mu, gamma, closure, evaluation)`` -> ``(loss, y_new, mu_new)`` (one inner step
    from the anchor ``z``, iterate ``y`` and average ``mu``; ``evaluation`` keys the noise) and
    ``direction(z, mu, gamma)``, the outer direction ``d`` (the outer step is ``z - eta d``).
    """

    def __init__(
        self,
        learning_rate,
        num_inner_steps,
        gamma,
        gamma_decay,
        momentum,
        seed,
        steps_per_epoch,
        name,
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.num_inner_steps = validation.positive_int(
            "num_inner_steps", num_inner_steps, "L, the gradient evaluations per outer step."
        )
        self.gamma = validation.positive("gamma", gamma, "gamma_0 of the scoping, sec. 7.5.")
        self.gamma_decay = _unit_interval("gamma_decay", gamma_decay, "Sec. 7.5 uses 1e-3.")
        self.momentum = _unit_interval("momentum", momentum, "Sec. 7.4 uses 0.9.")
        self.seed = validation.integer("seed", seed)
        self.steps_per_epoch = (
            None
            if steps_per_epoch is None
            else validation.positive_int("steps_per_epoch", steps_per_epoch, "E.g. len(dataset).")
        )

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.inner_steps = self.add_state("inner_steps", 0, dtype="int64")
        self.anchor = self.add_state_like(var_list, "anchor")
        self.inner_iterate = self.add_state_like(var_list, "inner_iterate")
        self.average = self.add_state_like(var_list, "average")
        self.current_gamma = self.add_diagnostic("gamma", self.gamma)
        self.outer_steps = self.add_diagnostic("outer_steps", 0, dtype="int64")
        self.gradient_evaluations = self.add_diagnostic("gradient_evaluations", 0, dtype="int64")
        if self.steps_per_epoch is not None:
            self.effective_epochs = self.add_diagnostic("effective_epochs")

    def scoped_gamma(self, outer_steps):
        """``gamma_0 (1 - gamma_1)^m`` at outer step ``m`` (sec. 7.5), float32."""
        m = tf.cast(outer_steps, "float32")
        return self.gamma * tf.pow(1.0 - self.gamma_decay, m)

    def noise(self, variables, evaluation):
        """Standard normal draws shaped like ``variables`` for gradient evaluation ``evaluation``.

        Stateless in ``(seed, index of the variable, evaluation)`` (0-based count of gradient
        evaluations), so the same on every replica and after a resume.
        """
        evaluation = tf.cast(evaluation, "int64")
        return [
            tf.random.stateless_normal(
                v.shape,
                seed=tf.stack([tf.constant(self.seed, "int64") * 1000003 + i, evaluation]),
                dtype=v.dtype,
            )
            for i, v in enumerate(variables)
        ]

    def step(self, closure):
        x = closure.params
        L = self.num_inner_steps
        count = tf.identity(self.inner_steps.value)
        phase = count % L
        start = tf.equal(phase, 0)
        last = tf.equal(phase, L - 1)
        outer = count // L
        gamma = self.scoped_gamma(outer)
        evaluation = tf.identity(self.gradient_evaluations.value)
        # The anchor z is x until the first outer step (its variables start at zero). The
        # selections are tf.cond, not tf.where: no copy of the weights on the common path.
        z = _select(count == 0, x, self.anchor)
        y = _select(start, z, self.inner_iterate)
        mu = _select(start, [self.restart_average(zi) for zi in z], self.average)
        loss, y_new, mu_new = self.inner(z, y, mu, gamma, closure, evaluation)
        lr = tf.cast(self.learning_rate, "float32")

        def outer_step():
            x_outer = [zi - lr * d for zi, d in zip(z, self.direction(z, mu_new, gamma))]
            if not self.momentum:
                return x_outer + x_outer
            return x_outer + [xo + self.momentum * (xo - p) for xo, p in zip(x_outer, x)]

        new = tf.cond(last, outer_step, lambda: [tf.identity(t) for t in x + z])
        x_new, z_new = new[: len(x)], new[len(x):]
        self.gradient_evaluations.assign(evaluation + 1)
        accepted = self.assign_if_finite(
            list(closure.variables) + self.anchor + self.inner_iterate + self.average,
            x_new + z_new + y_new + mu_new,
            checks=[loss],
        )
        count = tf.where(accepted, count + 1, count)
        self.inner_steps.assign(count)
        self.outer_steps.assign(count // L)
        self.current_gamma.assign(tf.where(accepted, gamma, tf.identity(self.current_gamma.value)))
        if self.steps_per_epoch is not None:
            self.effective_epochs.assign(
                tf.cast(evaluation + 1, "float32") / float(self.steps_per_epoch)
            )
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            num_inner_steps=self.num_inner_steps,
            gamma=self.gamma,
            gamma_decay=self.gamma_decay,
            momentum=self.momentum,
            seed=self.seed,
            steps_per_epoch=self.steps_per_epoch,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_diffusion")
class EntropySGD(_LocalEntropy):
    """Entropy-SGD (Chaudhari et al. 2018, sec. 7.1, eqs. (32)-(33)); one inner step per batch.

    Args:
        learning_rate: ``eta`` of the outer step (33), ``x <- x - (eta / gamma)(x - <y>)``; a
            number or a schedule (sec. 7.1: 0.1, divided by 5 every 3 epochs). The schedule
            sees ``optimizer.iterations``, which counts train steps (inner steps).
        num_inner_steps: ``L``, inner steps (gradient evaluations) per outer step (sec. 7.1: 20).
        inner_learning_rate: ``eta_y`` of eq. (32) (sec. 7.1: 0.1).
        alpha: the forward-looking average's ``alpha`` (sec. 7.1: 0.75).
        extrinsic_noise: ``1 / beta_ex`` of eq. (32): the Langevin term is
            ``sqrt(eta_y / beta_ex) eps``. Default ``1e-8``. Sec. 7.1 prints
            ``beta_ex^-1 = 10^8``, which would add noise of standard deviation ``~3000`` per
            weight per step; the minus sign of the exponent was lost: ``1e-8`` is a noise
            scale ``sqrt(1 / beta_ex) = 1e-4``, the ``eps = 1e-4`` of the authors' code
            (pratikac/hamilton-jacobi ``code/optim.py``). That code adds
            ``sqrt(2 eta_y) eps`` per step, a factor ``sqrt(2)`` above eq. (32) (the
            discrepancy acknowledged in ucla-vision/entropy-sgd issue 2); this class follows
            eq. (32).
        gamma: ``gamma_0``, the coupling time of eq. (32) (``1 / gamma`` pulls ``y`` to ``x``)
            at the start of the scoping. Default 0.1, the top of sec. 7.5's range
            ``[1e-4, 1e-1]`` and the only value in it for which eq. (32) with
            ``eta_y = 0.1`` is stable (``|1 - eta_y / gamma| < 1`` needs
            ``gamma > eta_y / 2``; the range's smaller values are the authors' code's coupling
            ``g0 = 1 / gamma``). Keep ``gamma > eta_y / 2`` throughout the scoping.
        gamma_decay: ``gamma_1`` of sec. 7.5, ``gamma = gamma_0 (1 - gamma_1)^m`` at outer step
            ``m`` (sec. 7.5: 1e-3).
        momentum: ``delta`` of sec. 7.4 (0.9 there; 0 gives eq. (33) exactly).
        seed: integer seed of the noise.
        steps_per_epoch: if given, the ``effective_epochs`` diagnostic is
            ``gradient_evaluations / steps_per_epoch``.
        name: the optimizer's name.
        **kwargs: other ``keras.optimizers.Optimizer`` arguments (no gradient transforms).

    Use with ``keras_diffusion.Model``/``Sequential``:

    >>> model.compile(optimizer=EntropySGD(learning_rate=0.1), loss="mse")
    >>> model.fit(x, y, epochs=20)   # 20 effective epochs, 1/L as many outer steps
    """

    def __init__(
        self,
        learning_rate=0.1,
        num_inner_steps=20,
        inner_learning_rate=0.1,
        alpha=0.75,
        extrinsic_noise=1e-8,
        gamma=0.1,
        gamma_decay=1e-3,
        momentum=0.9,
        seed=0,
        steps_per_epoch=None,
        name="entropy_sgd",
        **kwargs,
    ):
        super().__init__(
            learning_rate, num_inner_steps, gamma, gamma_decay, momentum, seed,
            steps_per_epoch, name, **kwargs,
        )
        self.inner_learning_rate = validation.positive(
            "inner_learning_rate", inner_learning_rate, "eta_y of eq. (32), e.g. 0.1."
        )
        self.alpha = _unit_interval("alpha", alpha, "Sec. 7.1 uses 0.75; 0 is the last iterate.")
        self.extrinsic_noise = validation.nonnegative(
            "extrinsic_noise", extrinsic_noise, "1 / beta_ex of eq. (32), e.g. 1e-8."
        )

    def restart_average(self, z):
        return z

    def inner(self, z, y, mu, gamma, closure, evaluation):
        loss, grads = closure.value_and_gradient(y)
        eta_y = self.inner_learning_rate
        y_new = [yi - eta_y * (g + (yi - zi) / gamma) for yi, g, zi in zip(y, grads, z)]
        if self.extrinsic_noise > 0:
            scale = (eta_y * self.extrinsic_noise) ** 0.5
            y_new = [yi + scale * e for yi, e in zip(y_new, self.noise(y, evaluation))]
        if not self.alpha:
            return loss, y_new, y_new  # the last iterate (HJ)
        mu_new = [self.alpha * m + (1.0 - self.alpha) * yi for m, yi in zip(mu, y_new)]
        return loss, y_new, mu_new

    def direction(self, z, mu, gamma):
        return [(zi - m) / gamma for zi, m in zip(z, mu)]

    def get_config(self):
        config = super().get_config()
        config.update(
            inner_learning_rate=self.inner_learning_rate,
            alpha=self.alpha,
            extrinsic_noise=self.extrinsic_noise,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_diffusion")
class HJ(EntropySGD):
    """The non-viscous Hamilton-Jacobi update (Chaudhari et al. 2018, sec. 7.2).

    Entropy-SGD's eqs. (32)-(33) with ``L = 5``, no extrinsic noise and the last iterate
    (``alpha = 0``): ``L`` gradient steps on ``f(y) + |y - x|^2 / (2 gamma)``, then
    ``x <- x - (eta / gamma)(x - y)``, a step towards the proximal point (module docstring).
    The arguments are ``EntropySGD``'s, with those defaults.
    """

    def __init__(
        self,
        learning_rate=0.1,
        num_inner_steps=5,
        inner_learning_rate=0.1,
        alpha=0.0,
        extrinsic_noise=0.0,
        gamma=0.1,
        gamma_decay=1e-3,
        momentum=0.9,
        seed=0,
        steps_per_epoch=None,
        name="hj",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            num_inner_steps=num_inner_steps,
            inner_learning_rate=inner_learning_rate,
            alpha=alpha,
            extrinsic_noise=extrinsic_noise,
            gamma=gamma,
            gamma_decay=gamma_decay,
            momentum=momentum,
            seed=seed,
            steps_per_epoch=steps_per_epoch,
            name=name,
            **kwargs,
        )


@keras.saving.register_keras_serializable(package="keras_diffusion")
class HEAT(_LocalEntropy):
    """Gradient descent on the heat-equation smoothing (Chaudhari et al. 2018, sec. 7.3, eq. (35)).

    ``x <- x - (eta / L) sum_{i=1..L} grad f_mb(x + eps_i)``, ``eps_i ~ N(0, gamma I)``, one
    perturbed gradient (on its own mini-batch) per train step, the outer step every ``L``; the
    optimizer's ``inner_iterate`` holds the last perturbed point, ``average`` the gradient sum.

    Args:
        learning_rate: ``eta`` (a number or a schedule).
        num_inner_steps: ``L`` (sec. 7.3: 20).
        gamma: ``gamma_0``, the VARIANCE of the perturbations at the start of the scoping
            (sec. 7.5); the default 0.1 is the top of sec. 7.5's range; per-weight variances
            of networks are usually far smaller (sec. 7.5 suggests ``gamma_0 / n``).
        gamma_decay, momentum, seed, steps_per_epoch, name, **kwargs: as ``EntropySGD``.
    """

    def __init__(
        self,
        learning_rate=0.1,
        num_inner_steps=20,
        gamma=0.1,
        gamma_decay=1e-3,
        momentum=0.9,
        seed=0,
        steps_per_epoch=None,
        name="heat",
        **kwargs,
    ):
        super().__init__(
            learning_rate, num_inner_steps, gamma, gamma_decay, momentum, seed,
            steps_per_epoch, name, **kwargs,
        )

    def restart_average(self, z):
        return tf.zeros_like(z)

    def inner(self, z, y, mu, gamma, closure, evaluation):
        std = tf.sqrt(gamma)
        point = [zi + std * e for zi, e in zip(z, self.noise(z, evaluation))]
        loss, grads = closure.value_and_gradient(point)
        return loss, point, [m + g for m, g in zip(mu, grads)]

    def direction(self, z, mu, gamma):
        return [m / float(self.num_inner_steps) for m in mu]
