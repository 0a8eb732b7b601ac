"""Optimizer state and diagnostics of the package's optimizers, in Keras variables.

Everything an optimizer adapts from step to step (the Levenberg-Marquardt damping of
Hessian-free, Martens 2010 sec. 4.1; the CG warm start, sec. 4.5; counters; an inner-loop
phase; a learned bandwidth) must survive ``.keras`` saving, ``tf.train.Checkpoint`` and
``keras.callbacks.BackupAndRestore``. Keras saves an optimizer's variables, not its Python
attributes, so :class:`OptimizerStateMixin` gives every such quantity a variable created in
``build`` (created in a fixed order, so that a loaded optimizer matches the saved one):

- :meth:`~OptimizerStateMixin.add_state`: a scalar (or small fixed-shape) state variable;
- :meth:`~OptimizerStateMixin.add_state_like`: one variable per trainable variable (vectors
  in weight space, e.g. the previous CG solution);
- :meth:`~OptimizerStateMixin.add_diagnostic`: a scalar state variable that is also
  *published*: ``optimizer.diagnostics`` maps its name to it, and the train step of
  ``keras_diffusion.Model`` (or :class:`~keras_diffusion.optimizers.DiagnosticsLogger` on
  a plain ``keras.Model``) adds it to the ``fit`` logs (progress bar, ``History``,
  ``CSVLogger``, ``TensorBoard``).

Every state variable is written with ``aggregation="only_first_replica"``: the values an
optimizer of the package computes are replicated (all-reduced), so each may be assigned
inside the replica context of ``tf.distribute`` (from straight-line code; TensorFlow
forbids the cross-replica write inside ``tf.while_loop``/``tf.cond``).

The mixin also gives the non-finite guard (``keras_diffusion.optimizers.guard``) as
:meth:`~OptimizerStateMixin.assign_if_finite`, counting refusals in the ``rejected_steps``
diagnostic that every package optimizer has.

Example (a subclass's own state):

```python
class MyOptimizer(keras_diffusion.optimizers.ClosureOptimizer):
    def __init__(self, damping=1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_damping = keras_diffusion.validation.positive("damping", damping)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.damping = self.add_diagnostic("damping", self.initial_damping)
        self.previous_step = self.add_state_like(var_list, "previous_step")
```
"""

import math

import keras

from keras_diffusion import validation
from keras_diffusion.optimizers import guard

_REPLICATED = "only_first_replica"


def check_learning_rate(learning_rate):
    """``learning_rate`` after checking it: a schedule/callable, or a finite number > 0."""
    if callable(learning_rate) or isinstance(learning_rate, keras.Variable):
        return learning_rate
    return validation.positive(
        "learning_rate", learning_rate, "Pass a finite step scale, e.g. learning_rate=1.0."
    )


class OptimizerStateMixin:
    """State variables, published diagnostics and the non-finite guard for an optimizer.

    Put it before ``keras.optimizers.Optimizer`` in the bases. Subclasses create their
    state in ``build`` after calling ``super().build(var_list)``.

    Attributes (after ``build``):
        rejected_steps: int64 variable, steps refused by :meth:`assign_if_finite`
            (cumulative); also the diagnostic ``"rejected_steps"``.
        diagnostics: dict ``name -> variable`` of the published diagnostics, in creation
            order.
    """

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._diagnostics = {}
        self.rejected_steps = self.add_diagnostic("rejected_steps", 0, dtype="int64")

    @property
    def diagnostics(self):
        """Published per-step diagnostics: ``{name: variable}`` (empty before ``build``)."""
        return dict(getattr(self, "_diagnostics", {}))

    def add_state(self, name, initial_value=0.0, dtype="float32", shape=()):
        """A state variable saved with the optimizer; call it in ``build``.

        Args:
            name: the variable's name (unique within the optimizer).
            initial_value: a finite number, the value of every entry at creation (e.g. the
                constructor argument of the damping; ``get_config`` keeps that argument,
                the variable the adapted value).
            dtype: the variable's dtype.
            shape: its shape (default scalar).

        Returns:
            The ``keras.Variable``; read it with ``.value``, write it with ``.assign``.
        """
        number = float(initial_value)
        if not math.isfinite(number):
            raise ValueError(
                f"Optimizer state {name!r} needs a finite initial value, got {initial_value!r}."
            )
        return self.add_variable(
            shape=shape,
            initializer=keras.initializers.Constant(number),
            dtype=dtype,
            aggregation=_REPLICATED,
            name=name,
        )

    def add_state_like(self, var_list, name):
        """One zero state variable shaped like each of ``var_list`` (e.g. a CG warm start).

        Returns a list in the order of ``var_list``; call it in ``build``.
        """
        return [
            self.add_variable(
                shape=v.shape,
                initializer="zeros",
                dtype=v.dtype,
                aggregation=_REPLICATED,
                name=f"{v.path.replace('/', '_')}_{name}" if hasattr(v, "path") else name,
            )
            for v in var_list
        ]

    def add_diagnostic(self, name, initial_value=0.0, dtype="float32"):
        """A scalar state variable published in the ``fit`` logs under ``name``.

        Assign it in the step (e.g. ``self.cg_iterations.assign(result.num_iterations)``);
        the logs show its value after the step, as float32.
        """
        if name in self._diagnostics:
            raise ValueError(f"Diagnostic {name!r} is already defined on {self.name!r}.")
        variable = self.add_state(name, initial_value, dtype=dtype)
        self._diagnostics[name] = variable
        return variable

    def assign_if_finite(self, variables, values, checks=()):
        """Writes ``values`` into ``variables`` unless anything is non-finite.

        The package's one non-finite guard (``keras_diffusion.optimizers.guard``): the
        decision is the same on every replica; a refused step keeps every variable and adds
        one to ``rejected_steps``. Returns a boolean scalar tensor, whether it was accepted.
        """
        return guard.assign_if_finite(self, variables, values, checks)
