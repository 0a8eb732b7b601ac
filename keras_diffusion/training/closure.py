"""The closure: the training loss of one batch as a function of the model's weights.

Second-order optimizers (Hessian-free, Gauss-Newton, Saddle-Free Newton, natural gradient;
Pascanu 2014, thesis Sec. 4.1 and 4.3) and Entropy-SGD need more than one gradient per batch:
they evaluate the loss, its gradient and curvature-vector products at weights other than the
current ones. ``Closure`` binds one batch ``(x, y, sample_weight)`` of a compiled Keras model
and exposes those quantities as functions of a list of weight tensors, evaluated with Keras'
stateless scope (the model's variables are substituted by the given tensors).

Distribution. Inside ``model.fit`` under ``tf.distribute.MirroredStrategy`` each replica holds
its share of the global batch. Keras scales each replica's compiled loss by
``1 / num_replicas`` (and so its ``add_loss`` and regularization terms), so the SUM over replicas
of the per-replica losses is the objective of the global batch. Accordingly:

- ``local_loss``, ``outputs``, ``loss_from_outputs``, ``outputs_and_states`` are this
  replica's share (differentiable);
- ``loss``, ``gradient``, ``hvp``, ``ggn_vp``, ``fisher_vp`` are all-reduced (summed over replicas): every
  replica sees the global objective and its products, so vectors built from them are
  replicated (identical on every replica);
- ``distributed`` tells whether that all-reduce happens; TensorFlow forbids it inside
  ``tf.while_loop``, so iterative solvers then run with ``unroll=True``
  (``keras_diffusion.curvature``), except on ``gauss_newton_operator()``, which a solver
  runs once across replicas in a ``tf.while_loop`` that stops early;
- ``dot`` is therefore the plain local dot product of replicated vectors (summing it over
  replicas would count it ``num_replicas`` times); ``all_reduce`` sums a list of per-replica
  tensors for quantities an optimizer builds from the local functions itself.

Curvature sub-batch. Martens (2010, sec. 4.2) computes the curvature products on a smaller
mini-batch than the gradient. With ``curvature_fraction < 1`` the products ``hvp``, ``ggn_vp``
and ``fisher_vp`` use the leading ``max(1, round(curvature_fraction * n))`` examples of each
replica's ``n`` (``closure.curvature`` is the closure of that sub-batch): they are the products
of the MEAN loss over the sub-batch (Keras's ``sum_over_batch_size`` reduction on fewer
examples), and their all-reduced sum equals the single-device product on the union of the
replicas' sub-batches. Loss and gradient always use the whole batch.

Outside a replica context (a callback at epoch end, under a strategy's scope) the closure
evaluates the whole given batch on one device and undoes Keras' ``1 / num_replicas`` scaling.

Non-trainable state (BatchNorm moving statistics, dropout seed generators) is frozen at its
value when the closure is built: every evaluation at any weights sees the same state, so the
closure is a deterministic function of the weights (same dropout masks, same BatchNorm mode).
The train step updates that state once per step, from its forward pass at the current weights,
exactly as ``keras.Model.train_step`` does: ``forward_pass()`` runs that pass on a tape, and
``value_and_gradient()``/``loss()`` at the current weights reuse it; the tape is persistent
and ``linearization()`` keeps it for the Gauss-Newton operator and Martens' preconditioner,
so a Hessian-free step runs ONE forward pass at its weights (its backtracking and line search
evaluate other weights).

Hidden states. ``outputs_and_states(layers, params)`` also returns the hidden states of
recurrent layers (``keras_diffusion.probes``) as functions of the weights, for structural
damping (Martens & Sutskever 2011).

Mixed precision. Under ``mixed_float16``/``mixed_bfloat16`` policies (variables in float32,
computations in half precision) every evaluation of the closure runs its layers in float32
(``keras_diffusion.curvature.float32_policy``): ``outputs``, the losses, gradients and
curvature products equal those of the same model built with the float32 policy, to float32
accuracy, so no loss scaling is needed. The train step's own forward pass (loss tracker,
metrics) keeps the model's policy, so under mixed precision it is not reused.
"""

import contextlib
import copy
import math

import keras
import tensorflow as tf

from keras_diffusion import compat, probes, validation
from keras_diffusion.curvature import float32_policy, forward, linear_operator, loss_hessians
from keras_diffusion.curvature import gauss_newton_operator as gn_operator
from keras_diffusion.curvature import products
from keras_diffusion.curvature.cross_replica import ReplicaSumOperator
from keras_diffusion.training import gauss_newton_form


def _replica_context():
    """The replica context when running inside ``strategy.run``, else ``None``."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


class Closure:
    """The loss of one batch as a function of the trainable weights, with curvature products.

    Under a mixed-precision policy every evaluation runs the model's layers in float32 (see
    the module docstring), so all values equal those of the float32 model.

    Args:
        model: a built and compiled Keras model (its ``compile(loss=...)`` and its
            ``add_loss``/regularization terms define the loss).
        x: the batch's inputs (any nest the model accepts).
        y: the batch's targets (a nest for multi-output models), or ``None``.
        sample_weight: per-sample weights (a nest for multi-output models), or ``None``.
        training: the ``training`` flag passed to the model's ``call`` (default ``True``).
        curvature_fraction: the fraction of the batch the curvature products (``hvp``,
            ``ggn_vp``, ``fisher_vp``) use, in ``(0, 1]``: the leading
            ``max(1, round(curvature_fraction * n))`` examples of each replica's ``n``
            (module docstring).

    Attributes:
        variables: ``model.trainable_variables``, the variables an optimizer updates.
        params: their values when the closure was built (a list of tensors).
        curvature: the closure of the curvature sub-batch (``self`` when
            ``curvature_fraction == 1``): same weights and frozen state, its own
            ``outputs``, ``local_loss``, ``loss_from_outputs``, ``outputs_and_states``.

    Example:
    ```python
    closure = Closure(model, x, y)
    g = closure.gradient()                       # global gradient at closure.params
    gv = closure.ggn_vp(g)                       # Gauss-Newton matrix times g
    step = -closure.dot(g, g) / closure.dot(g, gv)
    trial = [p + step * gi for p, gi in zip(closure.params, g)]
    closure.loss(trial)                          # the batch loss at the trial weights
    ```
    """

    def __init__(
        self, model, x, y=None, sample_weight=None, training=True, curvature_fraction=1.0
    ):
        self.curvature_fraction = validation.fraction(
            "curvature_fraction", curvature_fraction, "E.g. 0.25 (Martens 2010 sec. 4.2)."
        )
        if not model.trainable_variables:
            raise ValueError(
                f"Closure needs a model with trainable weights; model {model.name!r} has none "
                "(is it built? call it on a batch first)."
            )
        if compat.compile_loss(model) is None and not model.losses:
            raise ValueError(
                f"Closure needs a loss; model {model.name!r} was compiled without one. Call "
                "model.compile(loss=...) first."
            )
        self.model = model
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.training = training
        self.variables = list(model.trainable_variables)
        self.params = [tf.identity(v.value) for v in self.variables]
        self._frozen = [tf.identity(v.value) for v in model.non_trainable_variables]
        self._ctx = _replica_context()
        self._mixed = any(
            layer.compute_dtype != layer.variable_dtype
            for layer in compat.flatten_layers(model)
        )
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self._unscale = 1.0 if self._ctx is not None else float(replicas)
        # A replica's share of a batch mean (Keras's loss scaling, for the Fisher product).
        self._share = 1.0 / replicas if self._ctx is not None else 1.0
        self._recorded = None  # (loss, gradient) of the train step's forward pass
        self._pass = None  # (persistent tape, outputs) of that pass
        self._linearization = None  # the curvature batch's outputs, recorded once
        self.curvature = self
        if self.curvature_fraction < 1.0:
            self.curvature = copy.copy(self)
            self.curvature.x, self.curvature.y, self.curvature.sample_weight = _leading_part(
                (x, y, sample_weight), self.curvature_fraction
            )
            self.curvature.curvature = self.curvature

    # Evaluation at given weights.

    def _params(self, params):
        return self.params if params is None else list(params)

    def _scope(self, params):
        mapping = list(zip(self.variables, self._params(params)))
        mapping += list(zip(self.model.non_trainable_variables, self._frozen))
        # Metric variables are left out of the mapping: updates a loss makes to its own
        # trackers stay inside the scope and never reach the real metrics.
        return keras.StatelessScope(state_mapping=mapping, collect_losses=True)

    def _call(self, float32=True):
        # Only the forward pass switches to float32: all-reduces (merge_call pauses the
        # replica's thread) stay outside, so other replicas never see the switched layers.
        switch = float32 and self._mixed
        with float32_policy(self.model) if switch else contextlib.nullcontext():
            if compat.call_has_training_arg(self.model):
                return self.model(self.x, training=self.training)
            return self.model(self.x)

    def forward_pass(self):
        """Runs the model once at its current weights, as ``keras.Model.train_step`` does.

        Unlike every other evaluation it runs on the real variables: non-trainable state
        (BatchNorm statistics, dropout seed generators) is updated, once, and the compiled
        loss's trackers see it. It is recorded on a tape, so that ``value_and_gradient()``
        and ``loss()`` at the current weights reuse it instead of running a second forward
        pass (the values are those of the stateless evaluation: the frozen state is the
        state before this pass). Under a mixed-precision policy the pass keeps the model's
        policy and is not reused (the closure evaluates in float32).

        Returns:
            ``(outputs, loss)``: the predictions (for the compiled metrics) and Keras's
            per-replica loss (for the loss tracker: ``compat.unscale_loss_for_distribution``).
        """
        if self._recorded is not None:
            raise ValueError("forward_pass() runs once per closure (once per train step).")
        reuse = not self._mixed
        tape = tf.GradientTape(persistent=True) if reuse else contextlib.nullcontext()
        with tape:
            outputs = self._call(float32=False)
            loss = compat.compute_loss(
                self.model, self.x, self.y, outputs, self.sample_weight, self.training
            )
        if reuse:
            grads = tape.gradient(loss, self.variables, unconnected_gradients="zero")
            self._recorded = (loss * self._unscale, grads)
            self._pass = (tape, outputs)
        return outputs, loss

    def linearization(self):
        """The curvature batch's outputs at the current weights, recorded once per closure.

        A ``keras_diffusion.curvature.forward.RecordedLinearization`` (``outputs``,
        ``jvp_of(v) = J v``, ``vjp(u) = J^T u``, this replica's share) that every consumer
        at the current weights shares: the Gauss-Newton operator (``"recorded"`` mode) and
        Martens' preconditioner. With ``curvature_fraction == 1`` after ``forward_pass()``
        (float32 models) it IS the train step's forward pass, kept on its persistent tape,
        so a Hessian-free step runs one forward pass at its weights (Martens 2010, sec.
        4.2); otherwise the first call records the curvature batch's pass. Call it in
        straight-line code (not first inside a loop body): later calls return the same
        tensors.
        """
        c = self.curvature
        if c._linearization is None:
            if c._pass is not None:
                tape, outputs = c._pass
                # The pass read the variables: differentiate with respect to their handles,
                # read here (under a strategy: this replica's copies), so that products
                # also run from cross-replica context (ReplicaSumOperator.solve).
                handles = [v.handle for v in self.variables]
                c._linearization = forward.from_tape(tape, outputs, self.params, handles)
            else:
                c._linearization = forward.record(c.outputs, self.params)
        return c._linearization

    def outputs(self, params=None):
        """The model's outputs (a nest for multi-output models) on this replica's batch."""
        with self._scope(params):
            return self._call()

    def outputs_and_states(self, layers, params=None):
        """``(outputs, states)``: the outputs and the hidden states of ``layers`` at ``params``.

        ``states`` is a list, one ``(batch, T, units)`` tensor ``h[1..T]`` per layer of
        ``layers`` (recurrent layers supporting ``keras_diffusion.probes``), on this
        replica's batch. Both are functions of ``params``, so linearizing this function
        gives the ``J v`` and ``J_h v`` (and the VJPs ``J^T u``, ``J_h^T u``) that a
        structural-damping curvature product needs (Martens & Sutskever 2011; Pascanu 2014
        sec. 4.3.2, Eqs. 4.35-4.36), from one forward pass:

        ```python
        c = closure.curvature
        lin = keras_diffusion.curvature.forward.linearize(
            lambda p: c.outputs_and_states([rnn], p), closure.params, v)
        (outputs, states), (jv, [jhv]) = lin.outputs, lin.jvp
        gv = lin.vjp((loss_hessian(outputs, jv), [mu * damping * jhv]))
        ```
        """
        with self._scope(params):
            with probes.capture(layers) as captured:
                outputs = self._call()
        return outputs, [captured[layer].states for layer in layers]

    def local_loss(self, params=None):
        """This replica's share of the total loss (see the module docstring).

        Total loss = compiled loss (with sample weights) + ``add_loss`` terms + weight
        regularizers, exactly what ``keras.Model.compute_loss`` returns.
        """
        with self._scope(params):
            y_pred = self._call()
            loss = compat.compute_loss(
                self.model, self.x, self.y, y_pred, self.sample_weight, self.training
            )
        return loss * self._unscale

    def loss_from_outputs(self, outputs):
        """The compiled loss (no ``add_loss``/regularizers) of ``outputs``, this replica's share.

        ``y`` and ``sample_weight`` of the batch are bound; ``outputs`` has the structure of
        ``outputs(params)``. This is the loss whose output-Hessian enters ``ggn_vp``.
        """
        if compat.compile_loss(self.model) is None:
            raise ValueError(
                "loss_from_outputs needs a compiled loss; call model.compile(loss=...)."
            )
        with keras.StatelessScope():  # keep per-output loss trackers untouched
            loss = compat.compile_loss(self.model)(self.y, outputs, self.sample_weight)
        return loss * self._unscale

    def regularization(self, params=None):
        """The sum of the weight regularizers' penalties at ``params`` (0 if none).

        These do not depend on the batch, so they are not split across replicas.
        """
        params = self._params(params)
        terms = [
            tf.cast(v.regularizer(p), p.dtype)
            for v, p in zip(self.variables, params)
            if getattr(v, "regularizer", None) is not None
        ]
        return tf.add_n(terms) if terms else tf.zeros((), self.params[0].dtype)

    # Global (all-reduced) quantities.

    @property
    def distributed(self):
        """Whether the products all-reduce across replicas (inside ``strategy.run``).

        MirroredStrategy implements the all-reduce with ``merge_call``, which TensorFlow
        does not allow inside ``tf.while_loop``/``tf.cond``: when this is ``True`` an
        optimizer must call the global functions from straight-line code, e.g. the solvers
        of ``keras_diffusion.curvature`` with ``unroll=True``.
        """
        return self._ctx is not None

    def all_reduce(self, values):
        """Sum a tensor or a list of tensors over replicas (identity on one replica)."""
        if self._ctx is None:
            return values
        return self._ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)

    def dot(self, a, b):
        """Inner product of two lists of replicated tensors shaped like ``params``."""
        return linear_operator.dot(a, b)

    def loss(self, params=None):
        """The total loss of the global batch at ``params`` (identical on every replica)."""
        if params is None and self._recorded is not None:
            return self.all_reduce(self._recorded[0])
        return self.all_reduce(self.local_loss(params))

    def value_and_gradient(self, params=None):
        """``(loss, gradient)`` of the global batch at ``params``, one backward pass.

        At the current weights (``params=None``) after ``forward_pass()`` it reuses that
        pass: no further forward pass runs.
        """
        if params is None and self._recorded is not None:
            return self.all_reduce(list(self._recorded))
        params = self._params(params)
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = self.local_loss(params)
        grads = tape.gradient(loss, params, unconnected_gradients="zero")
        loss, grads = self.all_reduce([loss, grads])
        return loss, grads

    def gradient(self, params=None):
        """The gradient of the global batch loss at ``params`` (a list like ``params``)."""
        return self.value_and_gradient(params)[1]

    def hvp(self, vectors, params=None, mode="auto"):
        """Hessian of the total loss of the global curvature batch at ``params`` times
        ``vectors``.

        ``mode`` is that of ``keras_diffusion.curvature.products.hvp``.
        """
        local = products.hvp(self.curvature.local_loss, self._params(params), vectors, mode=mode)
        return self.all_reduce(local)

    def fisher_vp(self, vectors, params=None, distribution="categorical", variance=1.0,
                  mode="auto"):
        """Fisher matrix of the predictive distribution on the global curvature batch at
        ``params`` times ``vectors``.

        The mean over the curvature batch of ``J_i^T F_out J_i v`` for a single-output model
        whose outputs parameterize ``distribution`` (``"gaussian"`` mean with ``variance``,
        ``"bernoulli"`` or ``"categorical"`` logits); see
        ``keras_diffusion.curvature.products.fisher_vp`` (Pascanu 2014, Eqs. 4.39-4.42).
        """
        local = products.fisher_vp(
            self.curvature.outputs,
            self._params(params),
            vectors,
            distribution,
            mode=mode,
            variance=variance,
        )
        return self.all_reduce([t * tf.cast(self._share, t.dtype) for t in local])

    def loss_hessian(self):
        """The analytic output Hessian of the compiled loss, or ``None``.

        Available for a single-output model compiled with one matching loss (squared error,
        or a cross-entropy with ``from_logits=True``; see
        ``keras_diffusion.curvature.loss_hessians.from_keras_loss``); otherwise ``ggn_vp``
        differentiates ``loss_from_outputs`` twice instead (exact, PSD if convex).
        """
        compile_loss = compat.compile_loss(self.model)
        if compile_loss is None or not compile_loss.built:
            return None
        flat = compat.flat_losses(compile_loss)
        if len(flat) != 1 or tf.nest.is_nested(self.y) or tf.nest.is_nested(self.sample_weight):
            return None
        _, loss, weight, _ = flat[0]
        if type(loss) is compat.LossFunctionWrapper:
            if loss.fn is not keras.losses.mean_squared_error:
                return None
            loss = "mean_squared_error"
        weight = (1.0 if weight is None else weight) * self._unscale
        try:
            return loss_hessians.from_keras_loss(loss, self.y, self.sample_weight, weight)
        except ValueError:  # no analytic form (e.g. a loss on probabilities)
            return None

    def check_gauss_newton(self, optimizer_name):
        """Raises ``ValueError`` if the compiled loss has no Gauss-Newton form (mean absolute
        error, a cross-entropy on probabilities, cosine similarity); warns for losses it
        cannot classify. See ``keras_diffusion.training.gauss_newton_form``."""
        gauss_newton_form.check(self.model, optimizer_name)

    def ggn_vp(self, vectors, params=None):
        """Generalized Gauss-Newton matrix of the global curvature-batch loss at ``params``
        times ``vectors``.

        ``G v = J^T H_L J v + R'' v``: ``J`` is the Jacobian of the model outputs, ``H_L`` the
        Hessian of the compiled loss in the outputs (analytic for matching output/loss
        pairs, see ``keras_diffusion.curvature.products.ggn_vp``) and ``R''`` the Hessian of the
        weight regularizers. ``add_loss`` terms computed in ``call`` are not part of ``G``.
        Each call runs its own forward pass; for many products at the same weights (a CG
        solve) use ``gauss_newton_operator``.
        """
        return self.gauss_newton_operator(params, mode="forward")(vectors)

    def gauss_newton_operator(self, params=None, mode="auto"):
        """``matvec(vectors) -> list``: ``ggn_vp(vectors, params)``, linearized once.

        The same global (all-reduced) product as ``ggn_vp``, regularizer Hessian included,
        on the curvature sub-batch, in float32 under mixed precision; but with the default
        ``mode`` (``"recorded"``) the forward pass at ``params`` runs at most once and
        every call of ``matvec`` reuses it (``keras_diffusion.curvature.gauss_newton_operator``:
        ``J v`` and ``J^T u`` through the recorded pass, Martens 2010 sec. 4.2); at the
        current weights (``params=None``) that is ``linearization()``, i.e. after
        ``forward_pass()`` the train step's own pass: no forward pass runs here. Build one
        per step, at the weights of that step, in straight-line code, and pass it to the
        solver:

        ```python
        matvec = closure.gauss_newton_operator()
        step = conjugate_gradient(matvec, neg_grad, damping=lam, dot=closure.dot).x
        ```

        Under a distribution strategy (``distributed``) ``matvec`` is a
        ``keras_diffusion.curvature.cross_replica.ReplicaSumOperator``: called, it
        all-reduces like ``ggn_vp``; given to a solver of ``keras_diffusion.curvature``, the
        whole solve runs once across replicas in a ``tf.while_loop`` and stops early (no
        unrolling).

        Args:
            params: the weights (default: the closure's).
            mode: ``"auto"``, ``"recorded"``, ``"forward"`` or ``"double_backward"`` (see
                ``GaussNewtonOperator``; ``"forward"`` recomputes the pass per call, as
                ``ggn_vp`` does).
        """
        mode = gn_operator.choose_mode(mode, self.model)
        recording = self.linearization() if params is None and mode == "recorded" else None
        params = self._params(params)
        curvature = self.curvature
        local = gn_operator.GaussNewtonOperator(
            curvature.outputs,
            params,
            curvature.loss_from_outputs,
            loss_hessian=curvature.loss_hessian(),
            mode=mode,
            recording=recording,
        )
        extra = None
        if any(getattr(v, "regularizer", None) is not None for v in self.variables):

            def extra(vectors):
                return products.hvp(self.regularization, params, vectors)

        return ReplicaSumOperator(local, self._ctx, extra)


def _leading_part(batch, fraction):
    """The leading ``max(1, round(fraction * n))`` examples of every tensor of ``batch``."""
    first = next(t for t in tf.nest.flatten(batch[0]) if t is not None)
    n = first.shape[0]
    if n is not None:
        size = max(1, int(math.floor(fraction * n + 0.5)))
    else:
        n = tf.cast(tf.shape(first)[0], tf.float64)
        size = tf.maximum(1, tf.cast(tf.floor(fraction * n + 0.5), tf.int32))
    return tf.nest.map_structure(lambda t: None if t is None else t[:size], batch)
