"""Closure training under tf.distribute.MirroredStrategy (2 logical CPUs from conftest)."""

import keras
import numpy as np
import tensorflow as tf

import keras_diffusion as kd
from keras_diffusion.optimizers import GaussNewton


class _Penalty(keras.layers.Layer):
    """Identity adding ``0.1 * mean(x^2)`` with ``add_loss`` (a batch-dependent term)."""

    def call(self, x):
        self.add_loss(0.1 * tf.reduce_mean(x**2))
        return x


def _build():
    return kd.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                3, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.01)
            ),
            _Penalty(),
            keras.layers.Dense(2),
        ]
    )


def _train(strategy, init, x, y, w):
    with strategy.scope():
        model = _build()
        model.set_weights(init)
        model.compile(
            # Well conditioned and solved to tolerance: one device runs the looped CG, two
            # replicas the same CG unrolled (unroll=closure.distributed).
            optimizer=GaussNewton(damping=1.0, cg_max_iterations=10, cg_tol=1e-6),
            loss="mse",
            metrics=["mae"],
            jit_compile=False,
        )
    history = model.fit(
        x, y, sample_weight=w, batch_size=8, epochs=2, shuffle=False, verbose=0
    )
    return model, history.history


def test_two_replicas_match_one_device_on_the_same_global_batch(mirrored_strategy):
    mirrored = mirrored_strategy
    assert mirrored.num_replicas_in_sync == 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    w = rng.uniform(0.5, 2.0, size=(16,)).astype("float32")
    keras.utils.set_random_seed(0)
    init = _build().get_weights()

    single, single_history = _train(tf.distribute.get_strategy(), init, x, y, w)
    double, double_history = _train(mirrored, init, x, y, w)

    for key in ("loss", "mae", "rejected_steps"):
        np.testing.assert_allclose(double_history[key], single_history[key], rtol=1e-5)
    for a, b in zip(double.get_weights(), single.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert int(double.optimizer.iterations.numpy()) == int(single.optimizer.iterations.numpy()) == 4

    # The curvature monitor in cross-replica context sees the whole batch: same numbers.
    monitor_data = (x[:8], y[:8], w[:8])
    results = []
    for model in (single, double):
        monitor = kd.CurvatureMonitor(monitor_data, lanczos_num_steps=6, hutchinson_probes=2)
        monitor.set_model(model)
        with model.distribute_strategy.scope():
            results.append(monitor.measure())
    for key, value in results[0].items():
        np.testing.assert_allclose(results[1][key], value, rtol=1e-4, atol=1e-6)



def test_cg_on_a_replica_sum_operator_stops_early_under_the_strategy(mirrored_strategy):
    """One solve across replicas in a tf.while_loop: as many products as iterations taken,
    not the cap (the unrolled loop paid the cap), and the dense solution."""
    from dense_blocks import N, blocks, flat, operator, symmetric

    from keras_diffusion.curvature import solvers
    from keras_diffusion.curvature.cross_replica import ReplicaSumOperator

    halves = np.stack([symmetric(np.linspace(1.0, 3.0, N), seed) for seed in (0, 1)])
    extra = np.diag(np.linspace(0.5, 1.0, N))
    rhs = np.random.default_rng(2).normal(size=N)
    products = tf.Variable(0)  # not mirrored: counts every replica's local product

    @tf.function
    def solve():
        def replica_fn():
            # The replica's share, bound now (a local product runs in cross-replica context).
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            local = operator(tf.gather(tf.constant(halves), replica))

            def counted(v):
                with tf.control_dependencies([products.assign_add(1)]):
                    return [tf.identity(t) for t in local(v)]

            summed = ReplicaSumOperator(
                counted, tf.distribute.get_replica_context(),
                extra=operator(tf.constant(extra)),
            )
            assert summed.distributed
            return solvers.conjugate_gradient(
                summed, blocks(rhs), damping=0.1, max_iterations=100, tol=1e-10,
                unroll=True,  # ignored: the operator drives the solve
            )

        return mirrored_strategy.run(replica_fn)

    result = solve()
    iterations = int(result.num_iterations)
    assert iterations <= N + 2 < 100
    assert int(products.numpy()) == 2 * iterations
    expected = np.linalg.solve(halves.sum(0) + extra + 0.1 * np.eye(N), rhs)
    np.testing.assert_allclose(flat(result.x), expected, rtol=1e-6, atol=1e-8)


def test_gauss_newton_stops_early_on_two_replicas_as_on_one(mirrored_strategy):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    keras.utils.set_random_seed(1)
    init = _build().get_weights()
    runs = []
    for strategy in (tf.distribute.get_strategy(), mirrored_strategy):
        with strategy.scope():
            model = _build()
            model.set_weights(init)
            model.compile(optimizer=GaussNewton(damping=1.0, cg_max_iterations=100,
                                               cg_tol=1e-5), loss="mse")
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        runs.append((model, history.history))
    (single, single_history), (double, double_history) = runs
    np.testing.assert_allclose(double_history["loss"], single_history["loss"], rtol=1e-5)
    assert double_history["cg_iterations"] == single_history["cg_iterations"]
    assert max(single_history["cg_iterations"]) < 100
    for a, b in zip(double.get_weights(), single.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
