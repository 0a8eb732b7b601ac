"""Every private Keras / TensorFlow API the package relies on, in one place.

Keras 3 exposes no public way to run a model's compiled loss outside ``train_step``, to hook
an optimizer's all-gradients update, or to drive the recurrent loop of ``keras.layers.RNN``;
TensorFlow none to ask whether a tape is recording or to call ``merge_call`` from optimizer
code. The package needs each of these; it reaches them only through this module, and
``tests/test_compat.py`` checks each entry against the installed Keras and TensorFlow, so
that a release that changes one fails loudly there instead of silently elsewhere.

Public names are used wherever they exist (``keras.StatelessScope``,
``keras.random.SeedGenerator``, ``keras.utils.unpack_x_y_sample_weight``): they are not here.

``TESTED_KERAS`` and ``TESTED_TENSORFLOW`` are the version ranges this module was checked
against; ``setup.py`` pins the same ranges.
"""

import keras
import tensorflow as tf
from keras import tree
from keras.src import backend as _keras_backend
from keras.src.backend.common import global_state as _global_state
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell
from keras.src.losses import loss as _loss_module
from keras.src.losses.losses import LossFunctionWrapper
from tensorflow.core.framework import summary_pb2
from tensorflow.python.eager import forwardprop_util as _forwardprop_util
from tensorflow.python.eager import record as _record

TESTED_KERAS = (">=3.10", "<3.16")
TESTED_TENSORFLOW = (">=2.21", "<2.22")

__all__ = [
    "DropoutRNNCell",
    "LossFunctionWrapper",
    "all_reduce_sum_gradients",
    "autocast_scope",
    "call_has_training_arg",
    "check_backend",
    "compile_loss",
    "compute_loss",
    "distributed_update_step",
    "flat_losses",
    "fix_multi_worker_fit",
    "flatten_layers",
    "has_forward_tangents",
    "in_object_sharing_scope",
    "loss_tracker",
    "maybe_merge_call",
    "optimizer_strategy",
    "rnn_loop",
    "scalar_summary_metadata",
    "scale_loss_for_distribution",
    "set_initial_epoch",
    "symbolic_build",
    "tape_is_recording",
    "unscale_loss_for_distribution",
]


def check_backend():
    """Raises ``ImportError`` unless Keras runs on the TensorFlow backend.

    The package builds on ``tf.GradientTape``, ``tf.autodiff.ForwardAccumulator`` and
    ``tf.distribute``; it does not choose the backend for the user.
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ImportError(
            f"keras_diffusion needs the TensorFlow backend of Keras 3, but Keras is running on "
            f"{backend!r}. Set the environment variable KERAS_BACKEND=tensorflow before "
            "importing keras (or edit ~/.keras/keras.json)."
        )


# Models and their compiled loss.


def symbolic_build(model, data_batch):
    """Builds every layer of ``model`` from one batch without running a step."""
    model._symbolic_build(data_batch=data_batch)


def call_has_training_arg(model):
    """Whether ``model.call`` takes a ``training`` argument."""
    return model._call_has_training_arg


def compute_loss(model, x, y, y_pred, sample_weight, training=True):
    """The total loss ``keras.Model.train_step`` minimizes (compiled loss, ``add_loss``
    terms, regularizers), scaled by ``1 / num_replicas`` under a strategy."""
    return model._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
    )


def loss_tracker(model):
    """The ``Mean`` metric behind the ``loss`` entry of ``fit``'s logs."""
    return model._loss_tracker


def compile_loss(model):
    """The ``CompileLoss`` made by ``model.compile(loss=...)``, or ``None``."""
    return model._compile_loss


def flat_losses(compiled):
    """The entries of a built ``CompileLoss``: 4-tuples ``(path, loss, weight, name)``, one per
    loss (``loss`` a ``keras.losses.Loss``, ``weight`` ``None`` or a float)."""
    return compiled._flat_losses


def set_initial_epoch(model, epoch):
    """Makes the next ``fit`` start at ``epoch`` whatever its ``initial_epoch`` argument (set
    during ``on_train_begin``, as ``keras.callbacks.BackupAndRestore`` does); ``None`` clears it."""
    model._initial_epoch = epoch


def flatten_layers(model, include_self=True):
    """Every layer inside ``model`` (recursively, shared layers once)."""
    return list(model._flatten_layers(include_self=include_self, recursive=True))


def unscale_loss_for_distribution(loss):
    """Undoes Keras's ``1 / num_replicas`` scaling of a replica's loss."""
    return _loss_module.unscale_loss_for_distribution(loss)


def scale_loss_for_distribution(loss):
    """Applies Keras's ``1 / num_replicas`` scaling to a replica's loss."""
    return _loss_module.scale_loss_for_distribution(loss)


# Optimizers.

#: Name of the hook ``keras.optimizers.Optimizer.apply`` calls with every gradient at once
#: (``(grads, trainable_variables, learning_rate)``); overriding it gives an optimizer the
#: global view of a step (a global norm, a non-finite check) under ``tf.distribute``.
BACKEND_UPDATE_STEP = "_backend_update_step"


def optimizer_strategy(optimizer):
    """The ``tf.distribute`` strategy an optimizer was built under."""
    return optimizer._distribution_strategy


def all_reduce_sum_gradients(optimizer, grads_and_vars):
    """Sums ``(gradient, variable)`` pairs over replicas (a no-op on one device)."""
    return optimizer._all_reduce_sum_gradients(grads_and_vars)


def distributed_update_step(optimizer, distribution, grads_and_vars, learning_rate):
    """Applies ``optimizer.update_step`` to each pair on every replica's variable copy."""
    return optimizer._distributed_tf_update_step(distribution, grads_and_vars, learning_rate)


def maybe_merge_call(fn, strategy, *args, **kwargs):
    """Calls ``fn(distribution, *args)`` in cross-replica context (directly outside one)."""
    return tf.__internal__.distribute.interim.maybe_merge_call(fn, strategy, *args, **kwargs)


# Autodiff and layers.


def tape_is_recording():
    """Whether any ``GradientTape`` or ``ForwardAccumulator`` may record the ops run now."""
    return _record.could_possibly_record()


def has_forward_tangents(tensors):
    """Whether a ``tf.autodiff.ForwardAccumulator`` carries a tangent for any of ``tensors``
    (forward-mode products are being computed through them)."""
    return bool(_forwardprop_util.pack_tangents(list(tensors)).tangents)


def rnn_loop(step_function, inputs, initial_states, **kwargs):
    """The time loop of ``keras.layers.RNN`` (``keras.src.backend.rnn``).

    Keras reads a missing ``input_length`` as ``inputs.shape[1]``, which is the *batch* axis
    when ``time_major=True``: traced with an unknown number of steps (e.g. fed by a
    ``tf.data`` generator), the loop would stop after ``batch`` steps and leave the later
    outputs zero. Such a call runs batch-major instead (inputs, mask and outputs
    transposed here), where the missing length is read from the time axis.
    """
    if not (kwargs.get("time_major") and kwargs.get("input_length") is None):
        return _keras_backend.rnn(step_function, inputs, initial_states, **kwargs)

    def swap(tensor):
        return tf.transpose(tensor, [1, 0, *range(2, len(tensor.shape))])

    mask = kwargs.get("mask")
    kwargs.update(time_major=False, mask=None if mask is None else swap(mask))
    last, outputs, states = _keras_backend.rnn(
        step_function, tree.map_structure(swap, inputs), initial_states, **kwargs
    )
    return last, tree.map_structure(swap, outputs), states


def scalar_summary_metadata():
    """Summary metadata that marks a ``tf.summary.write`` as a TensorBoard scalar without
    the ``tensorboard`` package."""
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )


# Saving and dtype policies.


def in_object_sharing_scope():
    """Whether Keras is serializing or deserializing inside its shared-object scope.

    ``.keras`` saving and loading open that scope (``ObjectSharingScope``): there Keras itself
    matches the ``shared_object_id`` of configs to one object. ``model.to_json``,
    ``keras.models.model_from_json`` and ``from_config`` run outside it.
    """
    return _global_state.get_global_attribute(
        "shared_objects/id_to_config_map"
    ) is not None


def autocast_scope(dtype):
    """The context in which ``Layer.__call__`` runs a layer: float variables read as ``dtype``.

    A layer that runs another layer's computation without calling it (an RNN wrapper running
    its cell's step) enters the cell's scope, so the cell computes in its own dtype policy as
    it would inside ``keras.layers.RNN``.
    """
    return _keras_backend.AutocastScope(dtype)


# Multi-worker training.


def fix_multi_worker_fit():
    """Makes ``model.fit`` run under ``tf.distribute.MultiWorkerMirroredStrategy``.

    Keras 3's TensorFlow trainer fails there (keras-team/keras#20585), in two places that
    only run with several workers: before the first step it all-reduces a whole nested data
    batch to build the model symbolically (``strategy.reduce`` takes one value, not a nest:
    "Attempt to convert a value (PerReplica ...) to a Tensor"), and after every step it
    averages each log over replicas with ``strategy.reduce("MEAN", v, axis=0)``, which also
    averages over the first axis and fails on scalars ("Invalid reduction dimension 0").
    This replaces both, for multi-worker strategies only (every other strategy keeps Keras's
    code): the symbolic build takes the shapes from this worker's first replica batch, and
    the logs are averaged over replicas (``axis=None``), as Keras does on one worker.
    Idempotent; ``keras_diffusion`` calls it on import.
    """
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer.reduce_per_replica, "_keras_diffusion_fix", False):
        return
    multi_worker = trainer._collective_all_reduce_multi_worker
    keras_build = trainer.TensorFlowTrainer._maybe_symbolic_build
    keras_reduce = trainer.reduce_per_replica

    def local_batch(strategy, batch):
        def first(value):
            if isinstance(value, tf.distribute.DistributedValues):
                return strategy.experimental_local_results(value)[0]
            return value

        return tf.nest.map_structure(first, batch)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not multi_worker(strategy):
            return keras_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = local_batch(strategy, next(batches))
            break
        return keras_build(self, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not multi_worker(strategy):
            return keras_reduce(values, strategy, reduction)
        return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)

    reduce_per_replica._keras_diffusion_fix = True
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
