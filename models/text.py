"""Bits per character, the metric of Pascanu's thesis, Table 6.3 (ch. 6).

``BPC = mean(-log p(u_t | u_<t)) / ln 2``: the mean next-symbol cross-entropy in bits. The
corpus, vocabulary and BPTT windows live in ``keras_diffusion.datasets.text`` (re-exported
here, so ``models.text`` keeps offering the whole character-level pipeline).
"""

import math

import keras

from keras_diffusion.datasets.text import (  # noqa: F401
    BUNDLED_TEXT,
    EOS,
    SPLITS,
    UNK,
    CharCorpus,
    bptt_dataset,
    bptt_windows,
    load_bundled_text,
    read_ptb_char,
    split_contiguous,
)


def _bits(y_true, logits):
    """Per-symbol code length ``-log2 softmax(logits)[y]`` of integer targets."""
    nats = keras.losses.sparse_categorical_crossentropy(
        keras.ops.convert_to_tensor(y_true), keras.ops.convert_to_tensor(logits), from_logits=True
    )
    return nats / math.log(2.0)


def bits_per_character(y_true, logits):
    """Mean next-symbol cross-entropy in bits: ``mean(-log softmax(logits)[y]) / ln 2``."""
    return keras.ops.mean(_bits(y_true, logits))


@keras.saving.register_keras_serializable(package="keras_diffusion")
class BitsPerCharacter(keras.metrics.Mean):
    """Running bits-per-character of integer targets under logits (Table 6.3's metric).

    Example:

    >>> m = BitsPerCharacter()
    >>> m.update_state([[0, 1]], [[[0.0, 0.0], [0.0, 0.0]]])   # uniform over 2 symbols
    >>> float(m.result())
    1.0
    """

    def __init__(self, name="bits_per_character", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(_bits(y_true, y_pred), sample_weight=sample_weight)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}
