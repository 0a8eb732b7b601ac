"""CurvatureMonitor's most negative Hessian eigenvalue (Pascanu 2014, Figure 4.5 c, d)."""

import keras
import numpy as np
from closure_reference import L2, data, terms, tiny_model

import keras_diffusion as kd


def test_most_negative_eigenvalue_at_a_saddle_and_zero_on_a_convex_loss():
    x, y, w = data()
    model = tiny_model(cls=keras.Sequential)  # any Keras model and optimizer
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
    monitor = kd.CurvatureMonitor((x, y, w), lanczos_num_steps=8, hutchinson_probes=0)
    history = model.fit(
        x, y, sample_weight=w, batch_size=6, epochs=1, verbose=0, callbacks=[monitor]
    ).history
    W, b = (v.numpy() for v in model.trainable_weights)
    eigs = np.linalg.eigvalsh(terms(W, b, x, y, w, L2)[-1])
    assert eigs[0] < 0
    np.testing.assert_allclose(history["curvature/hessian_most_negative"], [eigs[0]], atol=1e-5)
    np.testing.assert_allclose(history["curvature/hessian_max"], [eigs[-1]], rtol=1e-4)

    linear = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    linear.compile(optimizer="sgd", loss="mse")
    monitor = kd.CurvatureMonitor((x, y), lanczos_num_steps=8, hutchinson_probes=0)
    monitor.set_model(linear)
    numbers = monitor.measure()
    assert numbers["curvature/hessian_most_negative"] == 0.0
    assert numbers["curvature/hessian_min"] > 0.0
