"""Each entry of keras_diffusion/compat.py against the installed Keras and TensorFlow.

Every private API the package uses is checked three ways: it exists, its signature still takes
what compat passes, and it still does what the package relies on. A failure names the Keras /
TensorFlow API that changed; fix the matching function of compat.py (and TESTED_* there and in
setup.py once it passes again).
"""

import inspect
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from packaging.version import Version
from tensorflow.python.eager import record

import keras_diffusion  # noqa: F401  (checks the backend)
from keras_diffusion import compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def require(owner, attribute, parameters=()):
    """``getattr(owner, attribute)``, failing with the name of the API that changed."""
    where = f"{getattr(owner, '__module__', '')}.{getattr(owner, '__qualname__', owner)}"
    api = f"{where}.{attribute} (Keras {keras.__version__}, TensorFlow {tf.__version__})"
    assert hasattr(owner, attribute), (
        f"{api} no longer exists; keras_diffusion/compat.py relies on it.")
    value = getattr(owner, attribute)
    if parameters:
        accepted = inspect.signature(value).parameters
        missing = [p for p in parameters if p not in accepted]
        assert not missing, (
            f"{api} no longer takes {missing} (signature {inspect.signature(value)}); "
            "keras_diffusion/compat.py passes them.")
    return value


def tiny_model(**dense_kwargs):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, **dense_kwargs)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def data(n=4):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


def test_installed_keras_and_tensorflow_are_in_the_tested_range():
    for name, version, bounds in (("keras", keras.__version__, compat.TESTED_KERAS),
                                  ("tensorflow", tf.__version__, compat.TESTED_TENSORFLOW)):
        low, high = (Version(b.lstrip("<>=")) for b in bounds)
        assert low <= Version(version) < high, (
            f"{name} {version} is outside {bounds}, the range compat.py was tested against; "
            "run tests/test_compat.py and widen TESTED_* and setup.py together.")


# The backend.


def test_check_backend_names_the_backend_and_the_fix(monkeypatch):
    compat.check_backend()  # the suite runs on TensorFlow
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ImportError, match=r"'jax'.*KERAS_BACKEND=tensorflow"):
        compat.check_backend()


def _import_in_subprocess(tmp_path, **env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "PYTHONPATH")}
    env.update(PYTHONPATH=ROOT, KERAS_HOME=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3",
               **env_overrides)
    code = "import keras_diffusion, keras; print('backend', keras.backend.backend())"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def test_import_under_jax_backend_is_refused(tmp_path):
    proc = _import_in_subprocess(tmp_path, KERAS_BACKEND="jax")
    assert proc.returncode != 0
    assert "ImportError: keras_diffusion needs the TensorFlow backend" in proc.stderr
    assert "'jax'" in proc.stderr and "KERAS_BACKEND=tensorflow" in proc.stderr


def test_import_without_keras_backend_uses_keras_default(tmp_path):
    # KERAS_HOME is an empty folder: no keras.json, so Keras's own default decides.
    proc = _import_in_subprocess(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend tensorflow" in proc.stdout


# Models and their compiled loss.


def test_symbolic_build_builds_every_layer_without_a_step():
    require(keras.Model, "_symbolic_build", ["data_batch"])

    class Lazy(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(4)
            self.out = keras.layers.Dense(2)

        def call(self, x):
            return self.out(self.hidden(x))

    model = Lazy()
    model.compile(optimizer="sgd", loss="mse")
    x, y = data()
    compat.symbolic_build(model, (x, y))
    assert model.hidden.built and model.out.built
    assert [tuple(w.shape) for w in model.trainable_weights] == [(3, 4), (4,), (4, 2), (2,)]
    assert int(model.optimizer.iterations) == 0


def test_call_has_training_arg():
    class WithTraining(keras.Model):
        def call(self, x, training=None):
            return x

    class WithoutTraining(keras.Model):
        def call(self, x):
            return x

    require(WithTraining(), "_call_has_training_arg")
    assert compat.call_has_training_arg(WithTraining()) is True
    assert compat.call_has_training_arg(WithoutTraining()) is False


def test_compute_loss_is_the_total_training_loss():
    require(keras.Model, "_compute_loss", ["x", "y", "y_pred", "sample_weight", "training"])
    model = tiny_model(kernel_regularizer=keras.regularizers.L2(0.1))
    x, y = data()
    y_pred = model(x)
    w = np.array([1.0, 2.0, 0.0, 1.0], "float32")
    got = compat.compute_loss(model, x, y, y_pred, w)
    public = model.compute_loss(x, y, y_pred, w, training=True)
    kernel = model.layers[0].kernel.numpy()
    expected = (np.mean(np.mean((y - y_pred.numpy()) ** 2, axis=1) * w)
                + 0.1 * np.sum(kernel**2))
    np.testing.assert_allclose(float(got), float(public), rtol=1e-6)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_loss_tracker_is_the_mean_behind_the_loss_log():
    model = tiny_model()
    require(model, "_loss_tracker")
    x, y = data()
    logs = model.train_on_batch(x, y, return_dict=True)
    tracker = compat.loss_tracker(model)
    assert isinstance(tracker, keras.metrics.Mean)
    np.testing.assert_allclose(float(tracker.result()), logs["loss"], rtol=1e-6)


def test_compile_loss_and_its_flat_losses():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    require(model, "_compile_loss")
    assert compat.compile_loss(model) is None  # not compiled
    model.compile(optimizer="sgd", loss="mse", loss_weights=0.5)
    x, y = data()
    model.evaluate(x, y, verbose=0)  # builds the CompileLoss
    compiled = compat.compile_loss(model)
    require(compiled, "_flat_losses")
    assert compiled.built
    entries = compat.flat_losses(compiled)
    assert len(entries) == 1 and len(entries[0]) == 4, (
        f"CompileLoss._flat_losses entries changed: {entries!r}; compat.flat_losses documents "
        "4-tuples (path, loss, weight, name).")
    _, loss, weight, _ = entries[0]
    assert isinstance(loss, keras.losses.Loss) and weight == 0.5
    # LossFunctionWrapper: a loss given by name is wrapped around the Keras function.
    assert type(loss) is compat.LossFunctionWrapper, type(loss)
    require(loss, "fn")
    assert loss.fn is keras.losses.mean_squared_error


def test_flatten_layers_recurses_and_lists_shared_layers_once():
    require(keras.layers.Layer, "_flatten_layers", ["include_self", "recursive"])
    shared = keras.layers.Dense(3)
    inner = keras.Sequential([keras.Input((3,)), shared, shared])
    outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1)])
    layers = compat.flatten_layers(outer)
    assert layers[0] is outer and inner in layers and shared in layers
    assert sum(layer is shared for layer in layers) == 1
    assert outer not in compat.flatten_layers(outer, include_self=False)
    dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 2  # the shared Dense once, the outer one once


def test_loss_scaling_for_distribution(mirrored_strategy):
    from keras.src.losses import loss as loss_module

    require(loss_module, "scale_loss_for_distribution")
    require(loss_module, "unscale_loss_for_distribution")
    one = tf.constant(1.0)
    assert float(compat.scale_loss_for_distribution(one)) == 1.0  # no strategy
    assert float(compat.unscale_loss_for_distribution(one)) == 1.0
    with mirrored_strategy.scope():
        assert float(compat.scale_loss_for_distribution(one)) == 0.5
        assert float(compat.unscale_loss_for_distribution(one)) == 2.0


# Optimizers.


def test_backend_update_step_is_called_by_apply_with_every_gradient():
    require(keras.optimizers.Optimizer, compat.BACKEND_UPDATE_STEP,
            ["grads", "trainable_variables", "learning_rate"])
    calls = []

    class Recording(keras.optimizers.SGD):
        pass

    def hook(self, grads, trainable_variables, learning_rate):
        calls.append(len(grads))
        return getattr(keras.optimizers.SGD, compat.BACKEND_UPDATE_STEP)(
            self, grads, trainable_variables, learning_rate)

    setattr(Recording, compat.BACKEND_UPDATE_STEP, hook)
    variables = [keras.Variable([1.0, 2.0]), keras.Variable(3.0)]
    optimizer = Recording(learning_rate=0.5)
    optimizer.apply([tf.constant([1.0, 1.0]), tf.constant(2.0)], variables)
    assert calls == [2], (
        f"Optimizer.apply no longer calls {compat.BACKEND_UPDATE_STEP} once with every "
        "gradient; compat.BACKEND_UPDATE_STEP names the hook the package overrides.")
    np.testing.assert_allclose(variables[0].numpy(), [0.5, 1.5])
    np.testing.assert_allclose(variables[1].numpy(), 2.0)


def test_optimizer_strategy(mirrored_strategy):
    optimizer = keras.optimizers.SGD()
    require(optimizer, "_distribution_strategy")
    assert compat.optimizer_strategy(optimizer) is tf.distribute.get_strategy()
    with mirrored_strategy.scope():
        assert compat.optimizer_strategy(keras.optimizers.SGD()) is mirrored_strategy


def test_all_reduce_sum_gradients_sums_over_replicas(mirrored_strategy):
    require(keras.optimizers.SGD(), "_all_reduce_sum_gradients", ["grads_and_vars"])
    with mirrored_strategy.scope():
        optimizer = keras.optimizers.SGD()
        variable = keras.Variable([0.0, 0.0])

    def replica_fn():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        grad = tf.fill([2], tf.cast(replica + 1, tf.float32))
        return compat.all_reduce_sum_gradients(optimizer, [(grad, variable.value)])[0][0]

    per_replica = mirrored_strategy.run(tf.function(replica_fn))
    for value in mirrored_strategy.experimental_local_results(per_replica):
        np.testing.assert_allclose(value.numpy(), [3.0, 3.0])
    grad = tf.constant([1.0, 2.0])
    (pair,) = compat.all_reduce_sum_gradients(keras.optimizers.SGD(), [(grad, variable)])
    np.testing.assert_allclose(pair[0].numpy(), [1.0, 2.0])  # one replica: unchanged


def test_distributed_update_step_applies_update_step():
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    require(optimizer, "_distributed_tf_update_step",
            ["distribution", "grads_and_vars", "learning_rate"])
    variable = keras.Variable([1.0, 2.0])
    optimizer.build([variable])
    compat.distributed_update_step(
        optimizer, tf.distribute.get_strategy(), [(tf.constant([1.0, -1.0]), variable.value)],
        tf.constant(0.1))
    np.testing.assert_allclose(variable.numpy(), [0.9, 2.1])


def test_maybe_merge_call_runs_fn_in_cross_replica_context(mirrored_strategy):
    require(tf.__internal__.distribute.interim, "maybe_merge_call")
    seen = []

    def fn(distribution, value):
        seen.append((distribution, tf.distribute.in_cross_replica_context()))
        return value

    # Without a strategy fn is called directly, with the default strategy.
    assert compat.maybe_merge_call(fn, tf.distribute.get_strategy(), 1.0) == 1.0
    assert seen == [(tf.distribute.get_strategy(), False)]
    mirrored_strategy.run(lambda: compat.maybe_merge_call(fn, mirrored_strategy, tf.constant(2.0)))
    assert seen[1:] == [(mirrored_strategy, True)], (
        "maybe_merge_call no longer runs fn once, in cross-replica context, under a strategy.")


# Autodiff and layers.


def test_tape_is_recording():
    require(record, "could_possibly_record")
    assert not compat.tape_is_recording()
    x = tf.constant(1.0)
    with tf.GradientTape() as tape:
        assert compat.tape_is_recording()
        with tape.stop_recording():
            assert not compat.tape_is_recording()
    with tf.autodiff.ForwardAccumulator(x, tf.constant(1.0)):
        assert compat.tape_is_recording()
    assert not compat.tape_is_recording()


@pytest.mark.parametrize("unroll", [False, True])
def test_rnn_loop_matches_a_python_loop(unroll):
    from keras.src import backend as keras_backend

    require(keras_backend, "rnn", [
        "step_function", "inputs", "initial_states", "go_backwards", "mask", "unroll",
        "input_length", "time_major", "zero_output_for_mask", "return_all_outputs"])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    w = rng.normal(size=(3, 4)).astype("float32")
    u = rng.normal(size=(4, 4)).astype("float32")

    def step(inputs, states):
        h = tf.tanh(tf.matmul(inputs, w) + tf.matmul(states[0], u))
        return h, [h]

    last, outputs, states = compat.rnn_loop(
        step, tf.constant(x), [tf.zeros([2, 4])], go_backwards=False, mask=None, unroll=unroll,
        input_length=5, time_major=False, zero_output_for_mask=False, return_all_outputs=True)
    h, expected = np.zeros((2, 4), "float32"), []
    for t in range(5):
        h = np.tanh(x[:, t] @ w + h @ u)
        expected.append(h)
    np.testing.assert_allclose(outputs.numpy(), np.stack(expected, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last.numpy(), h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states[0].numpy(), h, rtol=1e-5, atol=1e-6)


def test_dropout_rnn_cell_caches_one_mask_per_batch():
    for name in ("get_dropout_mask", "get_recurrent_dropout_mask", "reset_dropout_mask",
                 "reset_recurrent_dropout_mask"):
        require(compat.DropoutRNNCell, name)

    class Cell(keras.layers.Layer, compat.DropoutRNNCell):
        def __init__(self):
            super().__init__()
            self.dropout, self.recurrent_dropout = 0.5, 0.0
            self.seed_generator = keras.random.SeedGenerator(0)

    cell = Cell()
    inputs = tf.ones([64, 8])
    mask = cell.get_dropout_mask(inputs)
    assert set(np.unique(mask.numpy())) <= {0.0, 2.0} and 0.0 in mask.numpy()
    assert cell.get_dropout_mask(inputs) is mask  # one mask for every step of a batch
    assert cell.get_recurrent_dropout_mask(inputs) is None  # rate 0: no mask
    cell.reset_dropout_mask()
    assert cell.get_dropout_mask(inputs) is not mask


def test_scalar_summary_metadata_marks_a_tensorboard_scalar(tmp_path):
    metadata = compat.scalar_summary_metadata()
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        tf.summary.write("sigma", tf.constant(0.5), step=3, metadata=metadata)
    writer.close()
    (event_file,) = tmp_path.iterdir()
    values = [value for event in tf.compat.v1.train.summary_iterator(str(event_file))
              for value in event.summary.value]
    assert [(v.tag, v.metadata.plugin_data.plugin_name) for v in values] == [("sigma", "scalars")]
    assert values[0].metadata.data_class == 1  # DATA_CLASS_SCALAR
    assert float(tf.make_ndarray(values[0].tensor)) == 0.5



def test_in_object_sharing_scope_follows_keras_scope():
    from keras.src.saving.serialization_lib import ObjectSharingScope

    assert not compat.in_object_sharing_scope()
    with ObjectSharingScope():
        assert compat.in_object_sharing_scope(), (
            "keras.src.saving.serialization_lib.ObjectSharingScope no longer sets the global "
            "attribute compat.in_object_sharing_scope reads.")
    assert not compat.in_object_sharing_scope()


def test_autocast_scope_casts_float32_variables():
    variable = keras.Variable(np.float32(0.1))
    with compat.autocast_scope("float16"):
        assert keras.ops.convert_to_tensor(variable).dtype == "float16"
        with compat.autocast_scope("float32"):
            assert keras.ops.convert_to_tensor(variable).dtype == "float32"
    assert keras.ops.convert_to_tensor(variable).dtype == "float32"


def test_set_initial_epoch_is_read_by_fit():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((4, 2), "float32"), np.ones((4, 1), "float32")

    class Start(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            compat.set_initial_epoch(self.model, 2)

    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[Start()])
    assert history.epoch == [2], "Keras's fit no longer reads model._initial_epoch"
    compat.set_initial_epoch(model, None)
    assert model.fit(x, y, epochs=2, verbose=0).epoch == [0, 1]


def test_has_forward_tangents_sees_forward_accumulators():
    x = tf.constant([1.0, 2.0])
    assert not compat.has_forward_tangents([x])
    with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)):
        y = 2.0 * x
        assert compat.has_forward_tangents([y]), (
            "tensorflow.python.eager.forwardprop_util.pack_tangents no longer reports the "
            "tangents of a ForwardAccumulator")
        assert not compat.has_forward_tangents([tf.constant(1.0)])
