"""Sigma schedules: continuation (Mobahi 2016, sec. 2, Algorithm 1) as Keras callbacks.

Algorithm 1 minimizes the diffused cost ``g(x; sigma_k)`` for a decreasing sequence
``sigma_0 > sigma_1 > ... > sigma_m = 0``, each stage starting from the previous stage's
solution. During ``model.fit`` the weights carry over between epochs, so continuation is a
callback that lowers the model's shared bandwidth (``keras_diffusion.Bandwidth``) as training
proceeds:

* :class:`StagedSigma`: the stages of Algorithm 1, each ended by a fixed number of epochs or by
  a plateau of a monitored metric (the "local minimizer of g(x; sigma_k)" of line 4).
* :class:`GeometricSigma`: ``sigma_k = sigma_0 * rate**k``.
* :class:`PolynomialSigma`: ``sigma_k = sigma_0 / (1 + k)**gamma``.
* :class:`LinearSigma`: ``sigma_k = sigma_0 * max(0, 1 - k / duration)``, exactly 0 from
  ``k = duration`` on.

``k`` counts epochs (``unit="epoch"``: the epoch index of ``fit``, sigma set at the start of
every epoch) or optimizer steps (``unit="batch"``: ``model.optimizer.iterations`` at the step,
as Keras's ``LearningRateSchedule`` does). The decaying schedules take an optional ``cutoff``:
once the decayed value drops below it, sigma is exactly 0 (the undiffused network), which is
how a geometric or polynomial schedule ends at ``sigma_m = 0``.

Steps per execution. ``model.compile(steps_per_execution=S)`` runs ``S`` train steps in one
call of the compiled train function, and callbacks run only between such calls. A
``unit="batch"`` schedule therefore does not assign sigma from a callback: during ``fit`` it
drives its bandwidths (:meth:`keras_diffusion.Bandwidth.drive`), whose value inside the train
step is the schedule evaluated in the graph at the optimizer's current step,
:meth:`SigmaSchedule.sigma_tensor` of ``optimizer.iterations``. Every step of an execution
thus trains at its own ``sigma_at(k)``, whatever ``S`` (the same weights for every ``S``),
under ``jit_compile``, mixed precision and ``tf.distribute``, and the optimizers that read
sigma (``AnnealedStep``) see the same value. Between executions (callbacks, validation,
``get_sigma``, evaluation at ``sigma = 0``) the bandwidth holds its variable, which the
schedule sets after each execution to the sigma of the last step. The first ``fit`` with a new
driver retraces the train function (it is reset in ``set_model``). ``unit="epoch"`` schedules
and :class:`StagedSigma` (whose stages, plateau-ended or not, change only at epoch
boundaries, i.e. between executions) assign the variable from ``on_epoch_begin`` and are exact
under any ``S``.

Resuming: the position of a schedule lives in state that checkpoints hold. The epoch index is
restored by ``keras.callbacks.BackupAndRestore`` and ``keras_diffusion.callbacks
.BackupAndRestore``; ``optimizer.iterations`` by every checkpoint of the optimizer
(``.keras`` files, ``model.save_weights``, ``tf.train.Checkpoint``, both backups). A
:class:`StagedSigma` without ``monitor`` derives its stage from the epoch index; with
``monitor`` it resumes at the stage of the restored sigma, and its plateau counters are
restored exactly by ``keras_diffusion.callbacks.BackupAndRestore`` (they are Python state,
see :class:`~keras_diffusion.callbacks.state.StatefulCallback`), while after Keras's own
backup they restart at the resumed epoch. A ``unit="batch"`` schedule reads the restored
``optimizer.iterations`` in the graph, so it resumes at the exact step.

Every schedule writes the sigma in use into the epoch ``logs`` under ``"sigma"``, so it shows in
``History`` (and in ``keras.callbacks.TensorBoard`` when the schedule is listed before it:
callbacks run in list order). With ``log_dir`` the schedule also writes the scalar
``epoch_sigma`` itself into ``log_dir/train`` (where Keras's TensorBoard callback writes its
``epoch_*`` scalars), independently of callback order and of whether the ``tensorboard``
package is installed. Sigma is assigned to a Keras variable, so changing it never retraces
the train function.

Example:

>>> schedule = keras_diffusion.callbacks.StagedSigma(
...     [1.0, 0.5, 0.0], epochs_per_stage=10, log_dir="logs")
>>> history = model.fit(x, y, epochs=30, callbacks=[schedule])
>>> history.history["sigma"]    # [1.0] * 10 + [0.5] * 10 + [0.0] * 10
"""

import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_diffusion import bandwidth as bandwidth_lib
from keras_diffusion import compat
from keras_diffusion import validation
from keras_diffusion.callbacks.state import StatefulCallback

UNITS = ("epoch", "batch")


class SigmaSchedule(StatefulCallback):
    """Base class: sets the bandwidth(s) of the model being trained and logs sigma.

    Subclasses implement :meth:`sigma_at`, the sigma for step index ``k`` (epochs or batches,
    see ``unit``), or override the ``on_*`` hooks for stateful rules (:class:`StagedSigma`),
    whose state then goes into backups through ``get_state``/``set_state``
    (:class:`~keras_diffusion.callbacks.state.StatefulCallback`).

    Args:
        bandwidth: the :class:`keras_diffusion.Bandwidth` to drive; ``None`` (default) drives
            every bandwidth found in the model being fitted.
        unit: ``"epoch"`` or ``"batch"``: what ``k`` counts (the epoch index, or the
            optimizer's step count ``model.optimizer.iterations``, which continues across
            ``fit`` calls and is restored with the optimizer).
        log_key: the ``logs`` key that receives sigma each epoch (default ``"sigma"``).
        log_dir: optional TensorBoard log directory: sigma is written each epoch as the
            scalar ``epoch_<log_key>`` into ``log_dir/train``.
        verbose: if > 0, print sigma whenever it changes.
    """

    def __init__(self, bandwidth=None, unit="epoch", log_key="sigma", log_dir=None, verbose=0):
        super().__init__()
        if bandwidth is not None and not isinstance(bandwidth, bandwidth_lib.Bandwidth):
            raise TypeError(
                f"bandwidth must be a keras_diffusion.Bandwidth or None (use the model's), "
                f"got {bandwidth!r}."
            )
        self.bandwidth = bandwidth
        self.unit = validation.one_of("unit", unit, UNITS)
        self.log_key = log_key
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.verbose = verbose
        self.sigma = None
        self._writer = None
        # unit="batch": True while an execution of train steps runs (see _driven_value).
        self._executing = None
        self._driver = self._driven_value  # one bound method: marks the bandwidths driven

    def sigma_at(self, k):
        """Sigma at step index ``k`` (a Python int), as a Python float."""
        raise NotImplementedError

    def sigma_tensor(self, k):
        """:meth:`sigma_at` in the graph: ``k`` an integer tensor, returns a float32 scalar.

        Needed for ``unit="batch"`` (see "Steps per execution" in the module docstring).
        """
        raise NotImplementedError(
            f"{type(self).__name__} with unit='batch' must implement sigma_tensor(k), the "
            "schedule as a function of the optimizer's step count in the graph."
        )

    def set_model(self, model):
        super().set_model(model)
        if self.unit == "batch":
            self._drive(model)

    def _drive(self, model):
        """Makes this schedule the driver of its bandwidths; retraces ``fit`` if that is new."""
        strategy = model.distribute_strategy
        retrace = self._executing is None or self._executing[0] is not strategy
        if retrace:
            with strategy.scope():
                flag = tf.Variable(False, trainable=False, name="sigma_schedule_executing")
            self._executing = (strategy, flag)
        for target in self._targets():
            if target.driver is not self._driver:
                target.drive(self._driver)
                retrace = True
        if retrace:
            model.train_function = None

    def _driven_value(self, held):
        """The value of a driven bandwidth: ``sigma_tensor(iterations)`` inside executions."""
        step = keras.ops.convert_to_tensor(self.model.optimizer.iterations)
        scheduled = tf.cast(self.sigma_tensor(step), held.dtype)
        return tf.where(tf.convert_to_tensor(self._executing[1]), scheduled, held)

    def _targets(self):
        if self.bandwidth is not None:
            return [self.bandwidth]
        return bandwidth_lib.require_bandwidths(self.model)

    def _set(self, sigma):
        sigma = bandwidth_lib.check_sigma(sigma)
        if sigma != self.sigma:
            for target in self._targets():
                target.assign(sigma)
            if self.verbose > 0:
                print(f"\n{type(self).__name__}: sigma = {sigma:.6g}")
        self.sigma = sigma

    def on_train_begin(self, logs=None):
        self.sigma = None
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))

    def on_epoch_begin(self, epoch, logs=None):
        if self.unit == "epoch":
            self._set(self.sigma_at(epoch))

    def on_train_batch_begin(self, batch, logs=None):
        if self.unit == "batch":
            self._executing[1].assign(True)

    def on_train_batch_end(self, batch, logs=None):
        if self.unit == "batch":
            self._executing[1].assign(False)
            steps = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self._set(self.sigma_at(max(steps - 1, 0)))  # the sigma of the last step

    def on_epoch_end(self, epoch, logs=None):
        if self.sigma is None:
            return
        if logs is not None:
            logs[self.log_key] = self.sigma
        if self._writer is not None:
            with self._writer.as_default():
                tf.summary.write(
                    f"epoch_{self.log_key}",
                    tf.constant(self.sigma, "float32"),
                    step=epoch,
                    metadata=compat.scalar_summary_metadata(),
                )

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def get_config(self):
        return {
            "bandwidth": self.bandwidth,
            "unit": self.unit,
            "log_key": self.log_key,
            "log_dir": self.log_dir,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class StagedSigma(SigmaSchedule):
    """The continuation stages of Algorithm 1 (Mobahi 2016, sec. 2).

    Stage ``k`` trains at ``sigmas[k]``; the last stage (``sigma_m = 0``) runs until ``fit``
    ends. A stage ends after ``epochs_per_stage`` epochs, or, with ``monitor``, when the
    monitored metric has not improved by more than ``min_delta`` for ``patience`` epochs
    (``epochs_per_stage`` then caps the stage length, if given).

    A ``fit`` starting at epoch 0 starts at stage 0. A ``fit`` starting later (a resumed run,
    or ``initial_epoch > 0``) continues: from the state restored by
    ``keras_diffusion.callbacks.BackupAndRestore`` (exact); otherwise, without ``monitor``,
    from the stage the epoch index falls in (exact), and with ``monitor`` from the stage whose
    sigma the model holds (e.g. restored by ``keras.callbacks.BackupAndRestore``), with the
    plateau counters starting afresh.

    Args:
        sigmas: the sequence ``sigma_0 > sigma_1 > ... > sigma_m = 0`` (strictly decreasing,
            ending at 0).
        epochs_per_stage: an int >= 1 (every stage) or a list with one int per stage before
            the last; required unless ``monitor`` is given.
        monitor: optional metric name in the epoch logs (e.g. ``"loss"``, ``"val_loss"``)
            whose plateau ends a stage.
        patience: epochs without improvement that end a stage, >= 1.
        min_delta: smallest decrease that counts as improvement, >= 0.
        mode: ``"min"`` (default) or ``"max"``: the direction of improvement.
        **kwargs: ``bandwidth``, ``log_key``, ``log_dir``, ``verbose`` of :class:`SigmaSchedule`.

    Example:

    >>> schedule = StagedSigma([1.0, 0.3, 0.0], monitor="loss", patience=3)
    """

    def __init__(
        self,
        sigmas,
        epochs_per_stage=None,
        monitor=None,
        patience=5,
        min_delta=0.0,
        mode="min",
        **kwargs,
    ):
        super().__init__(unit="epoch", **kwargs)
        self.sigmas = _check_staged(sigmas)
        stages = len(self.sigmas) - 1
        if epochs_per_stage is None:
            if monitor is None:
                raise ValueError(
                    "StagedSigma needs a stopping rule: pass epochs_per_stage (e.g. 10) "
                    "and/or monitor (e.g. 'loss') with patience."
                )
            self._lengths = [None] * stages
        elif isinstance(epochs_per_stage, (list, tuple)):
            if len(epochs_per_stage) != stages:
                raise ValueError(
                    f"epochs_per_stage has {len(epochs_per_stage)} entries but there are "
                    f"{stages} stages before the final sigma = 0 stage."
                )
            self._lengths = [
                validation.positive_int("epochs_per_stage", n) for n in epochs_per_stage
            ]
        else:
            self._lengths = [validation.positive_int("epochs_per_stage", epochs_per_stage)] * stages
        self.epochs_per_stage = epochs_per_stage
        self.monitor = monitor
        self.patience = validation.positive_int("patience", patience)
        self.min_delta = validation.nonnegative("min_delta", min_delta)
        self.mode = validation.one_of("mode", mode, ("min", "max"))
        self._restored = None
        self._first_epoch = False
        self._start_stage(0)

    def _start_stage(self, stage):
        self.stage = stage
        self._epochs_in_stage = 0
        self._best = math.inf
        self._wait = 0

    def get_state(self):
        """Stage, epochs spent in it and the plateau counters (JSON; ``inf`` as ``None``)."""
        return {
            "stage": self.stage,
            "epochs_in_stage": self._epochs_in_stage,
            "best": None if math.isinf(self._best) else self._best,
            "wait": self._wait,
        }

    def set_state(self, state):
        """Restores :meth:`get_state`; applied when the resumed ``fit`` starts its first epoch."""
        self._restored = dict(state)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch:
            self._first_epoch = False
            self._resume(epoch)
        super().on_epoch_begin(epoch, logs)

    def _resume(self, epoch):
        """Sets the stage at the first epoch of a ``fit`` (see the class docstring)."""
        state, self._restored = self._restored, None
        if state is not None:
            self.stage = state["stage"]
            self._epochs_in_stage = state["epochs_in_stage"]
            self._best = math.inf if state["best"] is None else state["best"]
            self._wait = state["wait"]
        elif epoch == 0:
            self._start_stage(0)
        elif self.monitor is None:
            self._start_stage(0)
            for length in self._lengths:
                if epoch < length:
                    break
                epoch -= length
                self._start_stage(self.stage + 1)
            self._epochs_in_stage = epoch if self.stage < len(self._lengths) else 0
        else:
            self._start_stage(self._stage_of_current_sigma())

    def _stage_of_current_sigma(self):
        held = np.float32(keras.ops.convert_to_numpy(self._targets()[0].value))
        matches = [k for k, s in enumerate(self.sigmas) if np.float32(s) == held]
        return matches[0] if matches else 0

    def sigma_at(self, k):
        return self.sigmas[self.stage]

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.stage == len(self.sigmas) - 1:
            return
        self._epochs_in_stage += 1
        done = self._lengths[self.stage] is not None and (
            self._epochs_in_stage >= self._lengths[self.stage]
        )
        if self.monitor is not None:
            done = done or self._plateaued(logs or {})
        if done:
            self._start_stage(self.stage + 1)

    def _plateaued(self, logs):
        if self.monitor not in logs:
            raise KeyError(
                f"StagedSigma monitors {self.monitor!r}, which is not in the epoch logs "
                f"(available: {sorted(logs)}); pass validation_data for 'val_*' metrics."
            )
        value = float(logs[self.monitor])
        value = value if self.mode == "min" else -value
        if value < self._best - self.min_delta:
            self._best = value
            self._wait = 0
            return False
        self._wait += 1
        return self._wait >= self.patience

    def get_config(self):
        config = super().get_config()
        del config["unit"]
        config.update(
            sigmas=list(self.sigmas),
            epochs_per_stage=self.epochs_per_stage,
            monitor=self.monitor,
            patience=self.patience,
            min_delta=self.min_delta,
            mode=self.mode,
        )
        return config


class _DecayingSigma(SigmaSchedule):
    """A closed-form ``sigma(k)`` from ``sigma_0``, snapped to 0 below ``cutoff``."""

    def __init__(self, sigma0, cutoff=0.0, **kwargs):
        super().__init__(**kwargs)
        self.sigma0 = validation.nonnegative("sigma0", sigma0)
        self.cutoff = validation.nonnegative("cutoff", cutoff)

    def decay(self, k):
        """The factor of ``sigma0`` at ``k``: a Python number, or a float64 tensor (written
        with operators that take both, so both paths compute the same formula)."""
        raise NotImplementedError

    def sigma_at(self, k):
        sigma = self.sigma0 * self.decay(k)
        return 0.0 if sigma < self.cutoff else float(sigma)

    def sigma_tensor(self, k):
        sigma = self.sigma0 * self.decay(tf.cast(k, "float64"))
        return tf.cast(tf.where(sigma < self.cutoff, tf.zeros_like(sigma), sigma), "float32")

    def get_config(self):
        config = super().get_config()
        config.update(sigma0=self.sigma0, cutoff=self.cutoff)
        return config


@keras.saving.register_keras_serializable(package="keras_diffusion")
class GeometricSigma(_DecayingSigma):
    """Geometric decay ``sigma_k = sigma_0 * rate**k``.

    Args:
        sigma0: initial sigma, finite and >= 0.
        rate: decay factor in (0, 1].
        cutoff: sigma becomes exactly 0 once ``sigma_0 * rate**k < cutoff`` (default 0: never).
        **kwargs: ``bandwidth``, ``unit``, ``log_key``, ``log_dir``, ``verbose`` of
            :class:`SigmaSchedule`.

    Example:

    >>> GeometricSigma(1.0, rate=0.5, cutoff=0.1).sigma_at(4)
    0.0
    """

    def __init__(self, sigma0, rate, cutoff=0.0, **kwargs):
        super().__init__(sigma0, cutoff, **kwargs)
        self.rate = validation.fraction("rate", rate, hint="(sigma must not increase)")

    def decay(self, k):
        return self.rate**k

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


@keras.saving.register_keras_serializable(package="keras_diffusion")
class PolynomialSigma(_DecayingSigma):
    """Polynomial decay ``sigma_k = sigma_0 / (1 + k)**gamma``.

    Args:
        sigma0: initial sigma, finite and >= 0.
        gamma: decay exponent, finite and >= 0.
        cutoff: sigma becomes exactly 0 once the decayed value is below it (default 0: never).
        **kwargs: ``bandwidth``, ``unit``, ``log_key``, ``log_dir``, ``verbose`` of
            :class:`SigmaSchedule`.

    Example:

    >>> PolynomialSigma(1.0, gamma=1.0).sigma_at(3)
    0.25
    """

    def __init__(self, sigma0, gamma, cutoff=0.0, **kwargs):
        super().__init__(sigma0, cutoff, **kwargs)
        self.gamma = validation.nonnegative("gamma", gamma)

    def decay(self, k):
        return (1.0 + k) ** -self.gamma

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="keras_diffusion")
class LinearSigma(_DecayingSigma):
    """Linear decay to zero: ``sigma_k = sigma_0 * max(0, 1 - k / duration)``.

    Args:
        sigma0: initial sigma, finite and >= 0.
        duration: epochs (or steps, with ``unit="batch"``) until sigma reaches 0, >= 1.
        **kwargs: ``bandwidth``, ``unit``, ``log_key``, ``log_dir``, ``verbose`` of
            :class:`SigmaSchedule`.

    Example:

    >>> LinearSigma(1.0, duration=4).sigma_at(1)
    0.75
    """

    def __init__(self, sigma0, duration, **kwargs):
        super().__init__(sigma0, 0.0, **kwargs)
        self.duration = validation.positive_int("duration", duration)

    def decay(self, k):
        return 1.0 - k / self.duration  # negative from k = duration on: snapped to 0 (cutoff 0)

    def get_config(self):
        config = super().get_config()
        del config["cutoff"]
        return {**config, "duration": self.duration}


def _check_staged(sigmas):
    try:
        values = list(sigmas)
    except TypeError:
        raise TypeError(f"sigmas must be a sequence of numbers, got {sigmas!r}.") from None
    if len(values) < 1:
        raise ValueError("sigmas must not be empty; Algorithm 1 needs sigma_0 > ... > sigma_m = 0.")
    for value in values:
        try:
            bandwidth_lib.check_sigma(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Invalid sigma {value!r} in sigmas={values}: {error}") from None
    values = [float(v) for v in values]
    for before, after in zip(values, values[1:]):
        if not after < before:
            raise ValueError(
                f"sigmas must be strictly decreasing (sigma_0 > ... > sigma_m = 0), but "
                f"{before} is followed by {after} in {values}."
            )
    if values[-1] != 0.0:
        raise ValueError(
            f"sigmas must end at 0 (the undiffused cost, sigma_m = 0), got {values}; "
            "append 0.0."
        )
    return values
