"""Exact resume of an interrupted ``model.fit``, from the batch after the last backup.

``keras.callbacks.BackupAndRestore(save_freq=N)`` saves ``model.save_weights`` (layer and
optimizer variables) and the epoch, and on restart runs the interrupted epoch again from its
first batch: the resumed run trains on some batches twice and differs from an uninterrupted
one. :class:`BackupAndRestore` here saves the whole training state and continues with the
batch after the backup, so that a run killed at any moment and restarted with the same
script ends with the same weights, bit for bit, as a run that was never interrupted
(given a deterministic run: ``keras.utils.set_random_seed`` and
``tf.config.experimental.enable_op_determinism()``, and an input whose epoch ``e`` yields
the same batches in a fresh process, see below).

What a backup holds (one ``tf.train.Checkpoint`` of variables plus one JSON file):

* every model variable (``model.variables``: weights, non-trainable state such as the
  shared ``Bandwidth`` and batch statistics, and the seed-generator states of dropout);
* every optimizer variable (``model.optimizer.variables``: ``iterations``, the learning rate,
  slots, and whatever state an optimizer of this package adds in ``build``);
* the metric variables (``model.metrics_variables``), so the resumed epoch's logs equal the
  uninterrupted ones;
* the epoch, the number of batches done in it, the position in the data iterator, the last
  step's logs, and the state of every :class:`~keras_diffusion.callbacks.state
  .StatefulCallback` of the ``fit`` call (the sigma schedules).

Writes are atomic with respect to a kill: each backup goes to a new directory, and a small
pointer file, replaced with ``os.replace``, commits it; older backups are deleted only after
that. When ``fit`` returns, the backup directory is deleted (``delete_checkpoint=True``).

Several workers (``tf.distribute.MultiWorkerMirroredStrategy``): every worker saves at the
same steps (reading the metrics' on-read variables is a collective all-reduce that needs
all of them), but only the chief (``strategy.extended.should_checkpoint``) writes into
``backup_dir``; every other worker writes into ``backup_dir/workertemp_<task id>``, deleted
right after, as ``keras.callbacks.BackupAndRestore`` of Keras 2 did. On restart every worker
restores from the chief's backup, so ``backup_dir`` must be one directory that all workers
see (a shared file system, or one machine). A worker killed mid-epoch stops the others at
their next all-reduce; restart all of them with the same script and they continue from the
chief's last backup.

Skipping batches: on restart ``fit`` starts at the saved epoch (as Keras's backup) and this
callback replaces the first ``train_function`` calls of that epoch by calls that only draw
their batches from the iterator, so the step counter, the callbacks (``on_train_batch_*``
runs for the skipped steps, with the saved logs) and the data stay in step with the
uninterrupted run. Which batches are drawn is the input's business, hence the requirement:
**epoch ``e`` of the input must yield the same batches in a fresh process as in the run that
was interrupted.** This holds for numpy/tensor inputs with ``shuffle=False``, and with
``shuffle=True`` under ``keras.utils.set_random_seed`` (Keras draws each epoch's permutation
from the global seed); for a ``tf.data.Dataset`` without shuffling or shuffled with a fixed
``seed`` and ``reshuffle_each_iteration=False``; and for an infinite dataset
(``dataset.shuffle(n, seed=s).repeat()``) with ``steps_per_epoch``, where Keras keeps one
iterator for the whole ``fit``: the backup records the position in that iterator and the
resumed run draws as many batches before training. Not supported: a finite dataset with a
``steps_per_epoch`` that does not divide its length (Keras itself then warns that the input
ran out of data). Resume with the same ``steps_per_execution``, batch size and callbacks.
"""

import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from keras_diffusion import compat
from keras_diffusion import validation
from keras_diffusion.callbacks import state as state_lib

POINTER = "checkpoint.json"
_PREFIX = "backup-"
_FORMAT = 1


@keras.saving.register_keras_serializable(package="keras_diffusion")
class BackupAndRestore(keras.callbacks.Callback):
    """Backs up the whole training state; a restarted ``fit`` continues at the next batch.

    A drop-in for ``keras.callbacks.BackupAndRestore`` that, unlike it, does not run the
    interrupted epoch again from its first batch (see the module docstring for what is saved
    and for the requirement on the input).

    Args:
        backup_dir: a local directory used only by this callback (the backup lives there
            while ``fit`` runs; it is created if needed).
        save_freq: ``"epoch"`` (a backup at every epoch boundary, written just before the
            first step of the next epoch) or an integer ``N >= 1``: a backup after every
            ``N`` trained batches (with ``steps_per_execution = S``, after the execution that
            reaches ``N``).
        delete_checkpoint: delete the backup directory when ``fit`` returns (default).

    Example:
    ```python
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    backup = keras_diffusion.callbacks.BackupAndRestore("/tmp/backup", save_freq=100)
    model.fit(x, y, epochs=10, callbacks=[schedule, backup])  # run again after a kill
    ```
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__()
        if not backup_dir:
            raise ValueError(f"backup_dir must be a directory path, got {backup_dir!r}.")
        self.backup_dir = os.fspath(backup_dir)
        if save_freq != "epoch":
            save_freq = validation.positive_int("save_freq", save_freq, hint='Or use "epoch".')
        self.save_freq = save_freq
        self.delete_checkpoint = bool(delete_checkpoint)
        self._reset()

    def _reset(self):
        self._resume = None  # the restored state, until the resumed epoch starts
        self._metrics_from = None  # the restored state, until the resumed epoch's first step
        self._iterator = None  # the data iterator of the last step, and the position in it
        self._position = 0
        self._drop = 0  # batches to draw before the first step (iterator position)
        self._skips = 0  # train_function calls to replace by draws
        self._skip_logs = {}
        self._skipped = False
        self._expecting_step = False
        self._epoch = 0
        self._unsaved = 0
        self._epoch_save_due = False
        self._serial = 0

    # Fit hooks.

    def on_train_begin(self, logs=None):
        self._reset()
        function = self.model.train_function
        if isinstance(function, _TrainFunction):  # left behind by a fit that raised
            function = function.function
        self.model.train_function = _TrainFunction(self, function)
        if self._write_dir() != self.backup_dir:
            shutil.rmtree(self._write_dir(), ignore_errors=True)  # left by a killed worker
        pointer = _read_json(os.path.join(self.backup_dir, POINTER))
        if pointer is not None:
            self._serial = pointer["serial"]
            self._restore(os.path.join(self.backup_dir, pointer["directory"]))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._resume is None:
            return
        resume, self._resume = self._resume, None
        if resume["epoch"] != epoch:
            return  # the fit starts elsewhere (initial_epoch beyond the backup)
        # fit reset the metrics before this hook; the backup's come back at the first step.
        self._metrics_from = resume if resume["batch"] else None
        steps = self.model.steps_per_execution
        if resume["batch"] % steps:
            raise ValueError(
                f"The backup in {self.backup_dir!r} was written after batch {resume['batch']} "
                f"of epoch {epoch}, which steps_per_execution={steps} cannot reach; resume "
                f"with the steps_per_execution of the interrupted run "
                f"({resume['steps_per_execution']})."
            )
        self._skips = resume["batch"] // steps
        self._drop = resume["position"] - resume["batch"]
        self._skip_logs = resume["logs"]

    def on_train_batch_begin(self, batch, logs=None):
        self._expecting_step = True

    def on_train_batch_end(self, batch, logs=None):
        if self._skipped or self.save_freq == "epoch":
            return
        self._unsaved += self.model.steps_per_execution
        if self._unsaved >= self.save_freq:
            self._save(self._epoch, batch + 1, logs)

    def on_epoch_end(self, epoch, logs=None):
        # Saved just before the next epoch's first step (see _TrainFunction): by then every
        # callback has finished this epoch (a schedule's stage update is in the backup
        # whatever the order of the callbacks list) and the data iterator is known.
        self._epoch_save_due = self.save_freq == "epoch"

    def on_train_end(self, logs=None):
        function = self.model.train_function
        if isinstance(function, _TrainFunction):
            self.model.train_function = function.function
        compat.set_initial_epoch(self.model, None)
        if self.delete_checkpoint and self._write_dir() == self.backup_dir:
            shutil.rmtree(self.backup_dir, ignore_errors=True)
        self._reset()

    # Saving and restoring.

    def _write_dir(self):
        """``backup_dir`` on the chief (one device, one worker: always); on another worker
        of a multi-worker strategy its temporary ``backup_dir/workertemp_<task id>``."""
        strategy = self.model.distribute_strategy
        if strategy.extended.should_checkpoint:
            return self.backup_dir
        resolver = getattr(strategy, "cluster_resolver", None)
        task = resolver.task_id if resolver is not None else "worker"
        return os.path.join(self.backup_dir, f"workertemp_{task}")

    def _variables(self):
        optimizer = self.model.optimizer
        return {
            "model": list(self.model.variables),
            "optimizer": list(optimizer.variables) if optimizer is not None else [],
            "metrics": list(self.model.metrics_variables),
        }

    def _save(self, epoch, batch, logs):
        """Writes a new backup directory, then commits it by replacing the pointer file."""
        self._unsaved = 0
        self._serial += 1
        name = f"{_PREFIX}{self._serial:09d}"
        root = self._write_dir()
        directory = os.path.join(root, name)
        shutil.rmtree(directory, ignore_errors=True)  # a partial write of a killed run
        os.makedirs(directory)
        variables = self._variables()
        _checkpoint(**variables).write(os.path.join(directory, "variables"))
        state = {
            "format": _FORMAT,
            "epoch": epoch,
            "batch": batch,
            "position": self._position,
            "steps_per_execution": self.model.steps_per_execution,
            "logs": _scalar_logs(logs),
            "callbacks": {
                key: callback.get_state()
                for key, callback in state_lib.fit_callbacks(self.model, self.params).items()
            },
            "variables": {group: len(values) for group, values in variables.items()},
        }
        if root != self.backup_dir:  # not the chief: its copy only took part in the saving
            shutil.rmtree(root, ignore_errors=True)
            return
        _write_json(os.path.join(directory, "state.json"), state)
        for filename in os.listdir(directory):
            _fsync(os.path.join(directory, filename))
        _fsync(directory)
        _write_json(os.path.join(root, POINTER), {"directory": name, "serial": self._serial})
        for old in os.listdir(root):
            if old.startswith(_PREFIX) and old != name:
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)

    def _restore(self, directory):
        """Restores the variables (metrics at the resumed epoch's first step) and the state."""
        if not self.model.built:
            raise ValueError(
                f"Resuming from {directory!r} needs a built model before fit() (its "
                "variables must exist to receive the backup): call the model on a batch or "
                "give it a keras.Input first."
            )
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        state = _read_json(os.path.join(directory, "state.json"))
        if state is None or state.get("format") != _FORMAT:
            raise ValueError(
                f"{directory!r} holds no backup of format {_FORMAT}; delete "
                f"{self.backup_dir!r} to start afresh."
            )
        prefix = os.path.join(directory, "variables")
        variables = self._variables()
        del variables["metrics"]  # built at the first step (see _step)
        self._read(prefix, state, **variables)
        callbacks = state_lib.fit_callbacks(self.model, self.params)
        if set(callbacks) != set(state["callbacks"]):
            raise ValueError(
                f"The backup in {directory!r} holds the state of the callbacks "
                f"{sorted(state['callbacks'])}, but this fit has {sorted(callbacks)}; pass "
                "the callbacks list of the interrupted run."
            )
        for key, callback in callbacks.items():
            callback.set_state(state["callbacks"][key])
        compat.set_initial_epoch(self.model, state["epoch"])
        self._resume = {**state, "prefix": prefix}

    def _read(self, prefix, state, **groups):
        """Reads the ``groups`` of variables from the checkpoint at ``prefix``."""
        counts = {group: len(values) for group, values in groups.items()}
        saved = {group: state["variables"][group] for group in groups}
        if saved != counts:
            raise ValueError(
                f"The backup {prefix!r} does not fit this run: it holds {saved} variables, "
                f"this model has {counts}. Resume with the model, compile arguments and "
                f"callbacks of the interrupted run, or delete {self.backup_dir!r} to start "
                "afresh."
            )
        status = _checkpoint(**groups).read(prefix).expect_partial()
        status.assert_existing_objects_matched()

    # The data position (called by _TrainFunction around every step).

    def _step(self, function, iterator):
        if iterator is not self._iterator:
            self._iterator, self._position = iterator, 0
        if self._epoch_save_due:
            self._epoch_save_due = False
            self._save(self._epoch, 0, None)
        if self._metrics_from is not None:
            resume, self._metrics_from = self._metrics_from, None
            if len(self.model.metrics_variables) != resume["variables"]["metrics"]:
                # Compiled metrics are built when the train step is first traced.
                compat.symbolic_build(self.model, iterator.element_spec)
            self._read(resume["prefix"], resume, metrics=self.model.metrics_variables)
        if self._drop:
            drawn = _draw(iterator, self._drop)
            if drawn < self._drop:
                raise ValueError(
                    f"The input ran out after {self._position + drawn} batches while resuming "
                    f"at position {self._position + self._drop} of its iterator: it yields "
                    "fewer batches than in the interrupted run. The input must yield the same "
                    "batches for each epoch as in that run (see "
                    "keras_diffusion.callbacks.BackupAndRestore)."
                )
            self._position += drawn
            self._drop = 0
        steps = self.model.steps_per_execution
        self._skipped = self._skips > 0
        if self._skipped:
            self._skips -= 1
            # A last, partial execution of the epoch draws what is left, as the step would.
            if not _draw(iterator, steps):
                raise StopIteration
            self._position += steps
            return dict(self._skip_logs)
        logs = function(iterator)
        self._position += steps
        return logs

    def get_config(self):
        return {
            "backup_dir": self.backup_dir,
            "save_freq": self.save_freq,
            "delete_checkpoint": self.delete_checkpoint,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _TrainFunction:
    """Stands in for ``model.train_function`` while a :class:`BackupAndRestore` runs.

    If a ``fit`` raised, its ``on_train_end`` never ran; a later ``fit`` without the callback
    then finds this wrapper, which notices that no ``on_train_batch_begin`` of its callback
    preceded the call, puts the real function back and steps aside.
    """

    def __init__(self, callback, function):
        self.callback = callback
        self.function = function

    def __call__(self, iterator):
        callback = self.callback
        if not callback._expecting_step:
            callback.model.train_function = self.function
            return self.function(iterator)
        callback._expecting_step = False
        return callback._step(self.function, iterator)


def _draw(iterator, count):
    """Draws up to ``count`` batches from ``iterator`` without training; returns how many."""
    for drawn in range(count):
        try:
            next(iterator)
        except (StopIteration, tf.errors.OutOfRangeError):
            return drawn
    return count


def _checkpoint(**groups):
    return tf.train.Checkpoint(**{name: list(values) for name, values in groups.items()})


def _scalar_logs(logs):
    """The scalar entries of a step's logs as Python floats (JSON)."""
    scalars = {}
    for key, value in (logs or {}).items():
        value = np.asarray(value)
        if value.ndim == 0 and np.issubdtype(value.dtype, np.number):
            scalars[key] = float(value)
    return scalars


def _read_json(path):
    try:
        with open(path) as file:
            return json.load(file)
    except FileNotFoundError:
        return None


def _write_json(path, data):
    """Writes ``data`` to ``path`` atomically: a temporary file, synced, then renamed."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump(data, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync(os.path.dirname(path) or ".")


def _fsync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
