"""The deep autoencoder of Hinton & Salakhutdinov (2006) and Martens (2010, sec. 6) for CURVES.

Encoder ``784-400-200-100-50-25-6``, decoder mirrored (``6-25-50-100-200-400-784``): logistic
hidden units, a linear 6-unit code layer (Hinton & Salakhutdinov 2006, the CURVES net; Martens
2010 trains the same architecture), and 784 logistic output units whose sigmoid is folded into
the loss: the model outputs *logits* and is compiled with
``keras.losses.BinaryCrossentropy(from_logits=True)``, the sigmoid cross-entropy on pixels. Output
non-linearity and loss then match, so the Gauss-Newton matrix ``J^T diag(s(1-s)) J`` has its
analytic form (Pascanu 2014, thesis, sec. 4.3.2, eq. 4.38;
``keras_diffusion.curvature.loss_hessians``).

Initialization: Martens' (2010) sparse initialization: each unit has ``nonzeros = 15``
non-zero incoming weights drawn from ``N(0, 1)`` (all of them when the layer has fewer inputs),
biases zero (:class:`SparseGaussian`).

Example:

>>> model = deep_autoencoder(seed=0)
>>> model.compile(optimizer=keras_diffusion.optimizers.HessianFree(), loss=reconstruction_loss())
>>> model.fit(images, images, batch_size=5000, epochs=10)
>>> squared_error(images, model.predict(images))   # Martens' per-image squared error
"""

import keras
import numpy as np

import keras_diffusion
from keras_diffusion import validation

ENCODER = (400, 200, 100, 50, 25, 6)  # Hinton & Salakhutdinov (2006), CURVES
INPUT_DIM = 784
SPARSE_NONZEROS = 15  # Martens (2010)


@keras.saving.register_keras_serializable(package="models")
class SparseGaussian(keras.initializers.Initializer):
    """Martens' (2010) sparse initialization: ``nonzeros`` ``N(0, stddev^2)`` incoming
    weights per unit at random rows (``min(nonzeros, fan_in)``), the others zero.

    Args:
        nonzeros: non-zero incoming weights per unit (Martens: 15).
        stddev: their standard deviation (Martens: 1).
        seed: int for a reproducible draw, or ``None`` (drawn once per instance).
    """

    def __init__(self, nonzeros=SPARSE_NONZEROS, stddev=1.0, seed=None):
        self.nonzeros = validation.positive_int("nonzeros", nonzeros, "Martens (2010) uses 15.")
        self.stddev = validation.positive("stddev", stddev, "Martens (2010) uses 1.")
        if seed is not None:
            validation.integer("seed", seed, 0, "An int >= 0 or None.")
        self.seed = seed
        self._draw_seed = np.random.SeedSequence(seed).entropy

    def __call__(self, shape, dtype=None):
        if len(shape) != 2:
            raise ValueError(f"SparseGaussian makes (fan_in, fan_out) matrices, got shape "
                             f"{tuple(shape)}; use it for Dense kernels.")
        fan_in, fan_out = (int(d) for d in shape)
        rng = np.random.default_rng(self._draw_seed)
        # The nonzeros smallest of fan_in uniform keys per column: a uniform random subset.
        keys = rng.random((fan_in, fan_out))
        chosen = keys <= np.sort(keys, axis=0)[min(self.nonzeros, fan_in) - 1]
        weights = np.where(chosen, self.stddev * rng.standard_normal((fan_in, fan_out)), 0.0)
        return keras.ops.convert_to_tensor(weights, dtype=dtype or "float32")

    def get_config(self):
        return {"nonzeros": self.nonzeros, "stddev": self.stddev, "seed": self.seed}


def decoder_widths(encoder=ENCODER):
    """Hidden widths of the mirrored decoder: the encoder's, reversed, without the code."""
    return tuple(reversed(tuple(encoder)[:-1]))


def deep_autoencoder(input_dim=INPUT_DIM, encoder=ENCODER, activation="sigmoid",
                     code_activation="linear", nonzeros=SPARSE_NONZEROS, seed=0):
    """The deep autoencoder as a ``keras_diffusion.Sequential`` mapping images to logits.

    Args:
        input_dim: pixels per (flattened) image (CURVES: 784).
        encoder: encoder widths, the last one the code (Hinton & Salakhutdinov: 400, 200, 100,
            50, 25, 6); the decoder mirrors them (:func:`decoder_widths`).
        activation: hidden units (Martens 2010: logistic, ``"sigmoid"``).
        code_activation: the code layer's units (Hinton & Salakhutdinov: ``"linear"``).
        nonzeros: incoming non-zero weights per unit of :class:`SparseGaussian`.
        seed: seed of the initial weights (each layer draws from ``seed`` and its index).

    Returns:
        An uncompiled ``keras_diffusion.Sequential`` with layers ``encoder_1 ... code``,
        ``decoder_1 ...`` and ``logits`` (linear, ``input_dim`` units: compile with
        :func:`reconstruction_loss`).
    """
    validation.positive_int("input_dim", input_dim)
    encoder = tuple(encoder)
    if not encoder:
        raise ValueError("encoder needs at least the code width, e.g. (400, 200, 100, 50, 25, 6).")
    for width in encoder:
        validation.positive_int("encoder width", width)
    validation.integer("seed", seed, 0, "An int >= 0.")
    names = ([f"encoder_{i + 1}" for i in range(len(encoder) - 1)] + ["code"]
             + [f"decoder_{i + 1}" for i in range(len(encoder) - 1)] + ["logits"])
    widths = encoder + decoder_widths(encoder) + (input_dim,)
    activations = ([activation] * (len(encoder) - 1) + [code_activation]
                   + [activation] * (len(encoder) - 1) + ["linear"])
    layers = [keras.Input((input_dim,))]
    for index, (name, width, act) in enumerate(zip(names, widths, activations)):
        layers.append(keras.layers.Dense(
            width, activation=act, name=name,
            kernel_initializer=SparseGaussian(nonzeros, seed=seed * 1000 + index)))
    return keras_diffusion.Sequential(layers, name="deep_autoencoder")


def reconstruction_loss():
    """Sigmoid cross-entropy on pixels from the logits (mean over pixels and images)."""
    return keras.losses.BinaryCrossentropy(from_logits=True)


def _sigmoid(logits):
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def squared_error(images, logits):
    """Martens' (2010) reported error: per-image squared reconstruction error
    ``mean_n sum_pixels (sigmoid(logits) - x)^2`` (numpy; images flattened)."""
    x = np.reshape(images, (len(images), -1))
    return float(np.mean(np.sum((_sigmoid(logits) - x) ** 2, axis=1)))


def cross_entropy(images, logits):
    """Per-image sigmoid cross-entropy ``mean_n sum_pixels`` (the training loss times the
    pixel count), computed stably from the logits (numpy)."""
    x = np.reshape(images, (len(images), -1)).astype(np.float64)
    z = np.asarray(logits, dtype=np.float64)
    per_pixel = np.maximum(z, 0) - z * x + np.log1p(np.exp(-np.abs(z)))
    return float(np.mean(np.sum(per_pixel, axis=1)))
