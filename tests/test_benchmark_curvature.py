"""The curvature benchmark's networks and its smoke run.

The JAX twins must compute exactly what the Keras models compute (else the side-by-side
timing compares different work), and the quick benchmark must produce a full table.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import curvature_nets
from scripts import benchmark_curvature

jax = pytest.importorskip("jax")


@pytest.mark.parametrize(
    "model",
    [
        curvature_nets.build_mlp((20, 16, 16, 10)),
        curvature_nets.build_lenet5(image_size=12),
        curvature_nets.build_rnn(length=6, units=8, unroll=False),
        curvature_nets.build_rnn(length=6, units=8, unroll=True),
    ],
    ids=lambda m: m.name,
)
def test_jax_twin_computes_the_keras_model(model):
    x, _ = curvature_nets.random_batch(model, 3)
    params = [np.asarray(v.numpy()) for v in model.trainable_variables]
    twin = curvature_nets.jax_forward(model.name)(params, jax.numpy.asarray(x))
    np.testing.assert_allclose(np.asarray(twin), model(x), rtol=1e-5, atol=1e-5)


def test_jax_hvp_of_the_twin_matches_the_library_hvp():
    import tensorflow as tf

    from keras_diffusion import curvature

    model = curvature_nets.build_rnn(length=5, units=6, unroll=False)
    x, y = curvature_nets.random_batch(model, 4)
    params = [v.numpy() for v in model.trainable_variables]
    rng = np.random.default_rng(0)
    v = [rng.normal(size=p.shape).astype("float32") for p in params]
    forward = curvature_nets.jax_forward(model.name)

    def jax_loss(p):
        logp = jax.nn.log_softmax(forward(p, x))
        return -jax.numpy.mean(jax.numpy.take_along_axis(logp, y[:, None], axis=1))

    expected = jax.jvp(jax.grad(jax_loss), ([jax.numpy.asarray(p) for p in params],), (v,))[1]
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    non_trainable = [w.value for w in model.non_trainable_variables]
    got = curvature.hvp(
        lambda p: ce(y, model.stateless_call(p, non_trainable, x)[0]),
        [tf.constant(p) for p in params],
        [tf.constant(t) for t in v],
    )
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, np.asarray(e), rtol=2e-4, atol=2e-5)


def test_quick_benchmark_reports_every_product_for_every_mode():
    results = benchmark_curvature.run(
        ["mlp"], batch_size=8, rnn_batch_size=4, repeats=1, use_jax=True, quick=True
    )
    for modes in results.values():
        assert set(modes) == {"tf", "xla", "jax"}
        for rows in modes.values():
            assert set(rows) == set(benchmark_curvature.PRODUCTS)
            for seconds, _ in rows.values():
                assert np.isfinite(seconds) and seconds > 0
    # XLA reports its temporary buffers: every JAX product needs some.
    assert all(memory > 0 for _, memory in results["mlp"]["jax"].values())
    table = benchmark_curvature._format_table(results)
    assert len(table.splitlines()) == 2 + len(benchmark_curvature.PRODUCTS)


def test_peak_bytes_sees_a_known_allocation():
    size = 1000 * 1000 * 4  # one float32 matrix of 1000 x 1000
    x = tf.ones([1000, 1000])
    product = tf.function(lambda a: tf.reduce_sum(a * 3.0))
    call = lambda: product(x)  # noqa: E731
    block = lambda out: out.numpy()  # noqa: E731
    block(call())  # trace first
    assert size <= benchmark_curvature._peak_bytes(call, block) < 10 * size
