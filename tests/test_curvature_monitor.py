"""CurvatureMonitor: extreme eigenvalues and trace against the dense Hessian / GGN."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from closure_reference import terms

import keras_diffusion as kd

L2 = 0.05


def _setup(n=6):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = rng.normal(size=(n, 2)).astype("float32")
    w = rng.uniform(0.5, 2.0, size=(n,)).astype("float32")
    keras.utils.set_random_seed(1)
    model = keras.Sequential(  # any Keras model: the monitor does not need kd.Model
        [
            keras.Input((3,)),
            keras.layers.Dense(
                2, activation="tanh", kernel_regularizer=keras.regularizers.L2(L2)
            ),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
    return model, x, y, w


def test_monitor_matches_dense_eigendecomposition():
    model, x, y, w = _setup()
    probes = 40
    monitor = kd.CurvatureMonitor(
        tf.data.Dataset.from_tensor_slices((x, y, w)).batch(6),  # its first batch
        matrices=("hessian", "ggn"),
        lanczos_num_steps=50,  # capped at the 8 weights: exact eigenvalues
        hutchinson_probes=probes,
    )
    history = model.fit(
        x, y, sample_weight=w, batch_size=6, epochs=2, verbose=0, callbacks=[monitor]
    ).history
    W, b = (v.numpy() for v in model.trainable_weights)
    _, _, _, _, ggn, hessian = terms(W, b, x, y, w, L2)
    for name, matrix in (("hessian", hessian), ("ggn", ggn)):
        values = history[f"curvature/{name}_max"]
        assert len(values) == 2
        eigs = np.linalg.eigvalsh(matrix)
        np.testing.assert_allclose(values[-1], eigs[-1], rtol=1e-4)
        np.testing.assert_allclose(history[f"curvature/{name}_min"][-1], eigs[0], atol=1e-5)
        # Rademacher probes: variance 2 * sum_{i != j} A_ij^2 per probe.
        off = matrix - np.diag(np.diag(matrix))
        sigma = np.sqrt(2.0 * np.sum(off**2) / probes)
        assert abs(history[f"curvature/{name}_trace"][-1] - np.trace(matrix)) <= 5 * sigma + 1e-6
    assert np.linalg.eigvalsh(hessian)[0] < 0 < np.linalg.eigvalsh(ggn)[0]  # saddle, PSD GGN


def test_monitor_every_and_arguments():
    model, x, y, _ = _setup()
    monitor = kd.CurvatureMonitor((x, y), every=2, lanczos_num_steps=3, hutchinson_probes=0)
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[monitor]).history
    assert len(history["curvature/hessian_max"]) == 1  # epoch 2 only
    assert "curvature/hessian_trace" not in history
    with pytest.raises(ValueError, match="`matrices entry` must be one of .*'fisher'"):
        kd.CurvatureMonitor((x, y), matrices=("fisher",))
    with pytest.raises(ValueError, match="matrices must be a non-empty subset"):
        kd.CurvatureMonitor((x, y), matrices=())
    with pytest.raises(ValueError, match="`hutchinson_probes` must be 0 .* or >= 2, got 1"):
        kd.CurvatureMonitor((x, y), hutchinson_probes=1)
    with pytest.raises(ValueError, match="`hutchinson_probes` must be an integer >= 0, got -2"):
        kd.CurvatureMonitor((x, y), hutchinson_probes=-2)
    with pytest.raises(ValueError, match="`every` must be an integer >= 1, got 0. Use every=1"):
        kd.CurvatureMonitor((x, y), every=0)
    with pytest.raises(ValueError, match="`lanczos_num_steps` must be an integer >= 1, got 2.5"):
        kd.CurvatureMonitor((x, y), lanczos_num_steps=2.5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_monitor_on_mixed_precision_model_gives_float32_numbers(policy):
    reference, x, y, w = _setup()
    keras.mixed_precision.set_global_policy(policy)
    try:
        mixed, _, _, _ = _setup()  # same seed: same weights, half-precision compute
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.layers[0].compute_dtype != "float32"
    numbers = []
    for model in (mixed, reference):
        monitor = kd.CurvatureMonitor(
            (x, y, w), matrices=("hessian", "ggn"), lanczos_num_steps=50, hutchinson_probes=4
        )
        monitor.set_model(model)
        numbers.append(monitor.measure())
    assert numbers[0].keys() == numbers[1].keys()
    for key in numbers[1]:
        np.testing.assert_allclose(numbers[0][key], numbers[1][key], rtol=1e-5, err_msg=key)
    W, b = (v.numpy() for v in mixed.trainable_weights)
    _, _, _, _, ggn, hessian = terms(W, b, x, y, w, L2)
    for name, matrix in (("hessian", hessian), ("ggn", ggn)):
        eigs = np.linalg.eigvalsh(matrix)
        np.testing.assert_allclose(numbers[0][f"curvature/{name}_max"], eigs[-1], rtol=1e-4)
        np.testing.assert_allclose(numbers[0][f"curvature/{name}_min"], eigs[0], atol=1e-5)
