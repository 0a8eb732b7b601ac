"""The networks of the curvature benchmark, in Keras and as JAX twins with the same weights.

The benchmark of issue 3 times curvature products on three architectures: an MLP
(784-1024-1024-10), LeNet-5 and a recurrent net (length 100, 256 units). Each Keras builder
here has a JAX twin, a pure function of the *same* weight arrays (in
``model.trainable_weights`` order), so TensorFlow and JAX are timed on identical
computations. Tests check that the twins agree with the Keras models numerically.
"""

import keras
import numpy as np

NUM_CLASSES = 10
RNN_INPUT_DIM = 32


def build_mlp(widths=(784, 1024, 1024, NUM_CLASSES)):
    """A ReLU MLP returning logits; ``widths`` lists input, hidden and output sizes."""
    layers = [keras.Input((widths[0],))]
    layers += [keras.layers.Dense(w, activation="relu") for w in widths[1:-1]]
    layers.append(keras.layers.Dense(widths[-1]))
    return keras.Sequential(layers, name="mlp")


def build_lenet5(image_size=28):
    """LeNet-5 (LeCun et al. 1998) with tanh units and average pooling, returning logits."""
    return keras.Sequential(
        [
            keras.Input((image_size, image_size, 1)),
            keras.layers.Conv2D(6, 5, padding="same", activation="tanh"),
            keras.layers.AveragePooling2D(2),
            keras.layers.Conv2D(16, 5, activation="tanh"),
            keras.layers.AveragePooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(120, activation="tanh"),
            keras.layers.Dense(84, activation="tanh"),
            keras.layers.Dense(NUM_CLASSES),
        ],
        name="lenet5",
    )


def build_rnn(length=100, units=256, unroll=False):
    """A tanh ``SimpleRNN`` reading ``length`` steps, then a linear read-out of the last state.

    ``unroll=False`` runs the Keras ``tf.while_loop`` (forward mode does not apply);
    ``unroll=True`` unrolls the loop into a static graph.
    """
    return keras.Sequential(
        [
            keras.Input((length, RNN_INPUT_DIM)),
            keras.layers.SimpleRNN(units, unroll=unroll),
            keras.layers.Dense(NUM_CLASSES),
        ],
        name="rnn_unrolled" if unroll else "rnn_loop",
    )


def random_batch(model, batch_size, seed=0):
    """Inputs and integer labels shaped for ``model``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size,) + tuple(model.input_shape[1:])).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(batch_size,)).astype("int32")
    return x, y


# JAX twins. Imported lazily so the package works without JAX installed.


def jax_cross_entropy(logits, y):
    """Mean softmax cross-entropy of integer labels ``y`` (Keras' sparse CE on logits)."""
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def jax_cross_entropy_hessian(logits, u):
    """``H_L u`` of `jax_cross_entropy` in the logits: ``(diag(p) - p p^T) u / N``."""
    import jax
    import jax.numpy as jnp

    probs = jax.nn.softmax(logits)
    return (probs * u - probs * jnp.sum(probs * u, axis=1, keepdims=True)) / logits.shape[0]


def jax_forward(name):
    """The JAX twin of the Keras model called ``name``: ``f(params, x) -> logits``."""
    import jax
    import jax.numpy as jnp

    def dense_stack(params, h, activation):
        for i in range(0, len(params) - 2, 2):
            h = activation(h @ params[i] + params[i + 1])
        return h @ params[-2] + params[-1]

    def avg_pool(h):
        summed = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return summed / 4.0

    def conv(h, kernel, bias, padding):
        out = jax.lax.conv_general_dilated(
            h, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return out + bias

    def mlp(params, x):
        return dense_stack(params, x, jax.nn.relu)

    def lenet5(params, x):
        h = avg_pool(jnp.tanh(conv(x, params[0], params[1], "SAME")))
        h = avg_pool(jnp.tanh(conv(h, params[2], params[3], "VALID")))
        h = h.reshape(h.shape[0], -1)
        return dense_stack(params[4:], h, jnp.tanh)

    def rnn_loop(params, x):
        kernel, recurrent, bias, w_out, b_out = params
        projected = jnp.einsum("btd,dh->tbh", x, kernel) + bias

        def step(h, u):
            h = jnp.tanh(u + h @ recurrent)
            return h, None

        h0 = jnp.zeros((x.shape[0], recurrent.shape[0]), x.dtype)
        h, _ = jax.lax.scan(step, h0, projected)
        return h @ w_out + b_out

    def rnn_unrolled(params, x):
        kernel, recurrent, bias, w_out, b_out = params
        h = jnp.zeros((x.shape[0], recurrent.shape[0]), x.dtype)
        for t in range(x.shape[1]):
            h = jnp.tanh(x[:, t] @ kernel + bias + h @ recurrent)
        return h @ w_out + b_out

    twins = {"mlp": mlp, "lenet5": lenet5, "rnn_loop": rnn_loop, "rnn_unrolled": rnn_unrolled}
    if name not in twins:
        raise ValueError(f"No JAX twin for model {name!r}; known: {sorted(twins)}.")
    return twins[name]
