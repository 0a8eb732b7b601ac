"""Gaussian continuation: any Keras optimizer, fed the gradient at Gaussian-perturbed weights.

Lersch et al., "Accelerated deep learning by Gaussian continuation", sec. 2-3. The smoothed
objective ``g(theta; lambda) = E_eps f(theta + sqrt(lambda) eps)`` (eq. 3, ``eps ~ N(0, I)``,
lambda a VARIANCE) is minimized by the wrapped optimizer with the Monte Carlo gradient of
eq. (7): each step draws ``num_samples`` perturbations, evaluates the loss and gradient of the
batch at ``theta + sqrt(lambda) eps_j`` and hands their mean to the inner optimizer (N = 1, the
paper's choice for networks, is weight-noise injection). lambda follows a fixed schedule
(Algorithm 1) or is learned (Algorithm 2): ``s = log lambda`` (the change of variables of
App. C: lambda stays positive) is updated by its own optimizer from ``dg/ds = lambda dg/dlambda``,
with ``dg/dlambda`` estimated by eq. (8) (or the pathwise estimator of the authors' code) plus
the regularizer ``beta m`` of eq. (12). During ``warmup_steps`` lambda is held at its initial
value (sec. 2.4).

Why a closure optimizer. ``keras.Model.train_step`` computes the gradient at the current
weights before the optimizer runs, so an optimizer wrapper there could only perturb the weights
*between* steps, leaving perturbed weights in the variables for evaluation, ``predict``,
callbacks and saving. With ``keras_diffusion.Model``/``Sequential`` the optimizer receives the
batch's closure and evaluates the loss at the perturbed weights statelessly: the variables only
ever hold the unperturbed weights.

Randomness. The draws are stateless Philox normals keyed by ``(seed, optimizer.iterations,
sample, variable)``: reproducible, restored with the optimizer's ``iterations``, and identical
on every replica under ``tf.distribute`` (the same ``eps`` on each replica's share of the
batch, so 2 replicas give the steps of 1 device). ``independent_replicas=True`` folds in the
replica id instead: each replica evaluates its share at its own perturbation.

Guard. A step whose perturbed loss, gradient or lambda gradient is non-finite is refused as a
whole (weights, inner-optimizer slots, lambda and its optimizer unchanged) and counted in
``rejected_steps``.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_diffusion import compat, validation
from keras_diffusion.optimizers import continuation_variance as cv
from keras_diffusion.optimizers import guard
from keras_diffusion.optimizers.closure_optimizer import ClosureOptimizer

_INNER_OPTIONS = (
    "weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema",
    "gradient_accumulation_steps", "loss_scale_factor",
)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class GaussianContinuation(ClosureOptimizer):
    """Gaussian continuation around ``optimizer`` (Lersch et al., Algorithms 1 and 2).

    Args:
        optimizer: the Keras optimizer that takes the steps (e.g. ``keras.optimizers.Adam(1e-4)``,
            sec. 3.1), fed the perturbed-weights gradient of eq. (7). Its ``update_step`` is
            applied to that gradient; the options acting in ``apply`` (weight decay, clipping,
            EMA, gradient accumulation) are refused: add weight decay as a regularizer.
        variance: ``lambda_0 > 0``, the initial variance of the perturbation (``sigma^2`` in
            the package's standard-deviation terms). Default ``exp(-13)``, sec. 3.1.
        schedule: ``"learned"`` (Algorithm 2, default), ``"geometric"``, ``"polynomial"`` or
            ``"constant"`` (Algorithm 1; see ``continuation_variance``).
        decay: the schedule's ``gamma`` (``0 < decay < 1`` geometric, ``> 0`` polynomial);
            unused by ``"learned"``/``"constant"``.
        variance_optimizer: the optimizer of ``s = log lambda`` (learned schedule). ``None``
            (default): the class of ``optimizer`` with ``variance_learning_rate``, as in the
            authors' code.
        variance_learning_rate: its learning rate when built here; default ``1e-2`` (sec. 3.1).
        regularization: ``beta >= 0`` of eq. (12): ``beta * m`` is added to ``dg/dlambda``
            (``m`` the number of weights). Default ``0`` (Algorithm 2 as stated). The authors'
            code adds ``beta m lambda / lambda_0`` to ``dg/ds`` instead; pass
            ``regularization=beta / variance`` to reproduce it.
        warmup_steps: steps with lambda held at ``lambda_0`` (sec. 2.4); schedules start
            counting after them.
        estimator: ``"score"`` (eq. 8, default) or ``"pathwise"`` (the authors' code).
        num_samples: ``N`` of eq. (7), perturbations per step (default 1, sec. 2.3).
        seed: integer seed of the perturbations (default: drawn once at construction and
            kept in ``get_config``).
        independent_replicas: under ``tf.distribute``, draw a different perturbation on each
            replica (default ``False``: one shared draw).
        name: the optimizer's name.

    Attributes (after ``build``): ``inner_optimizer``, ``variance_optimizer``,
    ``log_variance`` (the variable ``s``; for fixed schedules it records ``log lambda_k``).

    Diagnostics: ``variance`` (lambda of the step), ``variance_gradient`` (the estimate of
    ``dg/dlambda`` including ``beta m``; 0 during warm-up or with a fixed schedule),
    ``perturbation_norm`` (``||vartheta - theta||`` averaged over samples and replicas) and
    ``rejected_steps``.

    Example:
    ```python
    model = keras_diffusion.Sequential([...])
    model.compile(
        optimizer=GaussianContinuation(keras.optimizers.Adam(1e-4), regularization=1e-3 / np.exp(-13),
                                       estimator="pathwise"),
        loss="sparse_categorical_crossentropy")
    ```
    """

    def __init__(
        self,
        optimizer,
        variance=float(np.exp(-13.0)),
        schedule="learned",
        decay=None,
        variance_optimizer=None,
        variance_learning_rate=1e-2,
        regularization=0.0,
        warmup_steps=0,
        estimator="score",
        num_samples=1,
        seed=None,
        independent_replicas=False,
        name="gaussian_continuation",
        **kwargs,
    ):
        super().__init__(learning_rate=1.0, name=name, **kwargs)
        self.inner_optimizer = _check_inner("optimizer", optimizer)
        self.initial_variance = validation.positive("variance", variance, "E.g. exp(-13).")
        self.schedule = validation.one_of("schedule", schedule, cv.SCHEDULES)
        self.decay = _check_decay(schedule, decay)
        self.variance_learning_rate = validation.positive(
            "variance_learning_rate", variance_learning_rate, "E.g. 1e-2 (sec. 3.1)."
        )
        if variance_optimizer is None:
            config = {
                **self.inner_optimizer.get_config(),
                "learning_rate": self.variance_learning_rate,
                "name": "variance_optimizer",
            }
            variance_optimizer = type(self.inner_optimizer).from_config(config)
        self.variance_optimizer = _check_inner("variance_optimizer", variance_optimizer)
        self.regularization = validation.nonnegative(
            "regularization", regularization, "beta of eq. (12), e.g. 1e-3."
        )
        self.warmup_steps = validation.integer("warmup_steps", warmup_steps)
        self.estimator = validation.one_of("estimator", estimator, cv.ESTIMATORS)
        self.num_samples = validation.positive_int("num_samples", num_samples, "E.g. 1.")
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        self.seed = validation.integer("seed", seed)
        self.independent_replicas = bool(independent_replicas)

    # The inner optimizer's learning rate is the one callbacks see (as LossScaleOptimizer).
    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.inner_optimizer.learning_rate = value

    @property
    def variables(self):
        return (
            self._variables[:]
            + self.inner_optimizer.variables
            + self.variance_optimizer.variables
        )

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.inner_optimizer.build(var_list)
        self.num_weights = int(sum(np.prod(v.shape) for v in var_list))
        self.log_variance = self.add_state("log_variance", np.log(self.initial_variance))
        self.variance_optimizer.build([self.log_variance])
        self.variance = self.add_diagnostic("variance", self.initial_variance)
        self.variance_gradient = self.add_diagnostic("variance_gradient")
        self.perturbation_norm = self.add_diagnostic("perturbation_norm")

    def current_variance(self):
        """lambda for the next step: a float32 scalar tensor."""
        if self.schedule == "learned":
            return tf.exp(self.log_variance.value)
        step = tf.maximum(self.iterations.value - self.warmup_steps, 0)
        return cv.scheduled_variance(self.schedule, self.initial_variance, self.decay, step)

    def draw(self, variables, sample=0):
        """The standard-normal ``eps`` of sample ``sample`` of the coming step, per variable.

        Keyed by ``(seed, iterations, sample, variable index)`` (and the replica id with
        ``independent_replicas``): calling it does not advance anything.
        """
        count = len(variables)
        base = (self.iterations.value * self.num_samples + sample) * count
        noise = []
        for index, v in enumerate(variables):
            key = tf.stack([tf.constant(self.seed, "int64"), base + index])
            if self.independent_replicas:
                replica = tf.distribute.get_replica_context().replica_id_in_sync_group
                key = tf.random.experimental.stateless_fold_in(key, replica, alg="philox")
            noise.append(tf.cast(_standard_normal(v.shape, key), v.dtype))
        return noise

    def step(self, closure):
        variance = self.current_variance()
        sigma = tf.sqrt(variance)
        params = closure.params
        losses, grads, lambda_grads, distances = [], None, [], []
        for sample in range(self.num_samples):
            noise = self.draw(closure.variables, sample)
            perturbed = [p + tf.cast(sigma, p.dtype) * e for p, e in zip(params, noise)]
            with tf.GradientTape() as tape:
                tape.watch(perturbed)
                loss = closure.local_loss(perturbed)
            sample_grads = tape.gradient(loss, perturbed, unconnected_gradients="zero")
            squared = tf.add_n([tf.reduce_sum(tf.cast(e, "float32") ** 2) for e in noise])
            if self.estimator == "score":
                lambda_grads.append(
                    cv.score_estimate(tf.cast(loss, "float32"), squared, self.num_weights, variance)
                )
            else:
                lambda_grads.append(cv.pathwise_estimate(noise, sample_grads, variance))
            losses.append(loss)
            distances.append(sigma * tf.sqrt(squared))
            grads = sample_grads if grads is None else [a + b for a, b in zip(grads, sample_grads)]
        scale = 1.0 / self.num_samples
        loss, grads, lambda_grad, distance = closure.all_reduce(
            [tf.add_n(losses) * scale, [g * scale for g in grads],
             tf.add_n(lambda_grads) * scale, tf.add_n(distances) * scale]
        )
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        lambda_grad = cv.regularized(lambda_grad, self.regularization, self.num_weights)
        learning = self.schedule == "learned"
        learn_now = tf.logical_and(
            tf.constant(learning), self.iterations.value >= self.warmup_steps
        )
        lambda_grad = tf.where(learn_now, lambda_grad, 0.0)
        _apply(
            self, list(zip(grads, closure.variables)), variance * lambda_grad, learn_now,
            checks=[loss, lambda_grad],
        )
        self.variance.assign(variance)
        self.variance_gradient.assign(lambda_grad)
        self.perturbation_norm.assign(distance / tf.cast(replicas, "float32"))
        if not learning:
            self.log_variance.assign(tf.math.log(variance))
        return loss

    def get_config(self):
        config = super().get_config()
        for key in ("learning_rate", "curvature_fraction"):
            config.pop(key, None)
        config.update(
            optimizer=keras.optimizers.serialize(self.inner_optimizer),
            variance=self.initial_variance,
            schedule=self.schedule,
            decay=self.decay,
            variance_optimizer=keras.optimizers.serialize(self.variance_optimizer),
            variance_learning_rate=self.variance_learning_rate,
            regularization=self.regularization,
            warmup_steps=self.warmup_steps,
            estimator=self.estimator,
            num_samples=self.num_samples,
            seed=self.seed,
            independent_replicas=self.independent_replicas,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["optimizer"] = keras.optimizers.deserialize(
            config["optimizer"], custom_objects=custom_objects
        )
        config["variance_optimizer"] = keras.optimizers.deserialize(
            config["variance_optimizer"], custom_objects=custom_objects
        )
        return cls(**config)


def _standard_normal(shape, key):
    """N(0, 1) draws from Philox bits by the inverse CDF, identical with and without XLA.

    (``tf.random.stateless_normal`` converts the same bits differently under ``jit_compile``;
    the raw bits agree.) 24-bit uniforms ``(k + 0.5) / 2^24`` bound ``|eps|`` by about 5.3.
    """
    bits = tf.random.stateless_uniform(
        shape, seed=key, minval=None, maxval=None, dtype="uint32", alg="philox"
    )
    uniform = (tf.cast(tf.bitwise.right_shift(bits, 8), "float32") + 0.5) * (2.0**-24)
    return tf.math.ndtri(uniform)


def _apply(optimizer, grads_and_vars, log_variance_grad, learn_now, checks):
    """One guarded update: inner step on the weights, variance-optimizer step on ``s``.

    Both run in one cross-replica merge, under a ``tf.cond`` on the step being finite on
    every replica; a refused step changes nothing and counts in ``rejected_steps``.
    """
    inner, outer = optimizer.inner_optimizer, optimizer.variance_optimizer
    finite = guard.all_finite([g for g, _ in grads_and_vars] + list(checks))
    pairs = [(g, v.value) for g, v in grads_and_vars]
    inner_lr = inner.learning_rate
    outer_lr = outer.learning_rate
    s_pair = [(tf.reshape(log_variance_grad, ()), optimizer.log_variance.value)]
    counter = optimizer.rejected_steps.value

    def merge(distribution, finite, pairs, s_pair):
        accept = tf.reduce_all(tf.stack(distribution.experimental_local_results(finite)))

        def count(model_optimizer):
            distribution.extended.update(
                model_optimizer.iterations.value, lambda c: c.assign_add(1), group=False
            )

        def update():
            compat.distributed_update_step(inner, distribution, pairs, inner_lr)
            count(inner)
            return tf.constant(True)

        def update_variance():
            compat.distributed_update_step(outer, distribution, s_pair, outer_lr)
            count(outer)
            return tf.constant(True)

        tf.cond(accept, update, lambda: tf.constant(False))
        tf.cond(tf.logical_and(accept, learn_now), update_variance, lambda: tf.constant(False))
        distribution.extended.update(
            counter, lambda c: c.assign_add(tf.cast(~accept, c.dtype)), group=False
        )
        return accept

    return compat.maybe_merge_call(
        merge, compat.optimizer_strategy(optimizer), finite, pairs, s_pair
    )


def _check_inner(name, optimizer):
    if isinstance(optimizer, ClosureOptimizer) or not isinstance(
        optimizer, keras.optimizers.Optimizer
    ):
        raise ValueError(
            f"`{name}` must be a gradient-based keras.optimizers.Optimizer (e.g. "
            f"keras.optimizers.Adam(1e-4)), got {optimizer!r}."
        )
    options = {k: getattr(optimizer, k, None) for k in _INNER_OPTIONS}
    options = {k: v for k, v in options.items() if v not in (None, False)}
    if options:
        raise ValueError(
            f"GaussianContinuation does not apply the options {options} of `{name}`; "
            "remove them."
        )
    return optimizer


def _check_decay(schedule, decay):
    if schedule == "geometric":
        return validation.fraction("decay", decay, "The geometric schedule needs 0 < decay < 1.")
    if schedule == "polynomial":
        return validation.positive("decay", decay, "The polynomial schedule needs decay > 0.")
    return None if decay is None else validation.real("decay", decay)
