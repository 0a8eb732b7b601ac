"""Character-level language modelling data: corpus, vocabulary, BPTT windows.

Pascanu's thesis, ch. 6 (Table 6.3), reports bits-per-character (BPC) on character-level
Penn Treebank: the mean next-symbol cross-entropy in bits,
``BPC = mean(-log p(u_t | u_<t)) / ln 2``. The same pipeline serves two corpora:

* the bundled offline corpus ``data/hamlet.txt`` beside this module (Shakespeare's *Hamlet*,
  public domain; see ``data/SOURCE.md``), split contiguously 90/5/5 into train/valid/test;
* character-level Penn Treebank in its standard files ``ptb.char.{train,valid,test}.txt``
  (Mikolov et al. 2012 format: one sentence per line, symbols separated by spaces, ``_``
  between words). TFDS has no Penn Treebank builder, so PTB is read from a local directory.
  Each line ends with an end-of-line symbol ``"\\n"``.

The vocabulary is built from the training split only; symbols unseen in training map to
``UNK``. ``bptt_dataset`` cuts a split into ``batch_size`` contiguous streams and yields
consecutive windows in order, so a stateful network can carry its state from one window to the
next (truncated BPTT, as in the thesis' sec. 5.9.3 "the hidden state is carried over").

Example:

>>> corpus = CharCorpus.from_text(load_bundled_text())
>>> corpus.vocab_size > 50
True
>>> train = bptt_dataset(corpus.ids("train"), batch_size=32, window=100)
>>> x, y = next(iter(train))        # int32 (32, 100) each; y is x shifted by one symbol
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from keras_diffusion import validation

UNK = "<unk>"
EOS = "\n"
SPLITS = ("train", "valid", "test")
BUNDLED_TEXT = os.path.join(os.path.dirname(__file__), "data", "hamlet.txt")


def load_bundled_text():
    """The bundled public-domain corpus (Shakespeare's *Hamlet*) as one string."""
    with open(BUNDLED_TEXT, encoding="ascii") as f:
        return f.read()


def split_contiguous(symbols, fractions=(0.9, 0.05, 0.05)):
    """Splits a symbol sequence into contiguous train/valid/test parts by ``fractions``."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be 3 positive numbers summing to 1, got {fractions!r}.")
    n = len(symbols)
    a = int(round(fractions[0] * n))
    b = a + int(round(fractions[1] * n))
    if a == 0 or b == a or b == n:
        raise ValueError(f"A corpus of {n} symbols is too short to split by {fractions!r}.")
    return symbols[:a], symbols[a:b], symbols[b:]


def read_ptb_char(directory):
    """Reads ``ptb.char.{train,valid,test}.txt`` under ``directory`` into symbol lists."""
    splits = []
    for split in SPLITS:
        path = os.path.join(directory, f"ptb.char.{split}.txt")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: pass the directory holding the character-level Penn "
                "Treebank files ptb.char.train.txt, ptb.char.valid.txt, ptb.char.test.txt."
            )
        with open(path, encoding="utf-8") as f:
            splits.append([s for line in f if line.strip() for s in line.split() + [EOS]])
    return tuple(splits)


@dataclasses.dataclass(frozen=True)
class CharCorpus:
    """Three symbol sequences with a vocabulary built from the training split.

    Args:
        train, valid, test: sequences (strings or lists) of symbols.
    """

    train: object
    valid: object
    test: object

    @classmethod
    def from_text(cls, text, fractions=(0.9, 0.05, 0.05)):
        """Character corpus from one string, split contiguously by ``fractions``."""
        return cls(*split_contiguous(text, fractions))

    @classmethod
    def from_ptb_char(cls, directory):
        """Character-level Penn Treebank from its three standard files in ``directory``."""
        return cls(*read_ptb_char(directory))

    @property
    def vocabulary(self):
        """Sorted training symbols, then ``UNK``; a symbol's id is its index here."""
        return sorted(set(self.train)) + [UNK]

    @property
    def vocab_size(self):
        return len(self.vocabulary)

    def ids(self, split):
        """int32 ids of one split (``"train"``, ``"valid"`` or ``"test"``)."""
        validation.one_of("split", split, SPLITS)
        index = {s: i for i, s in enumerate(self.vocabulary)}
        unk = index[UNK]
        return np.array([index.get(s, unk) for s in getattr(self, split)], dtype=np.int32)


def bptt_windows(ids, batch_size, window):
    """Inputs and next-symbol targets as arrays ``(num_windows, batch_size, window)``.

    The sequence is cut into ``batch_size`` contiguous streams of equal length (the tail that
    does not fill a whole window is dropped); window ``k`` of row ``b`` continues window
    ``k - 1`` of the same row.
    """
    validation.positive_int("batch_size", batch_size)
    validation.positive_int("window", window)
    ids = np.asarray(ids, dtype=np.int32)
    num_windows = (len(ids) - 1) // (batch_size * window)
    if num_windows == 0:
        raise ValueError(
            f"{len(ids)} symbols cannot fill one window of batch_size={batch_size} x "
            f"window={window}; use smaller values."
        )
    span = num_windows * window
    stream = (len(ids) - 1) // batch_size
    rows = np.arange(batch_size)[:, None] * stream + np.arange(span + 1)[None, :]
    streams = ids[rows]  # (batch, span + 1)
    x = streams[:, :-1].reshape(batch_size, num_windows, window).transpose(1, 0, 2)
    y = streams[:, 1:].reshape(batch_size, num_windows, window).transpose(1, 0, 2)
    return x, y


def bptt_dataset(ids, batch_size, window):
    """``tf.data.Dataset`` of consecutive ``(x, y)`` windows (see ``bptt_windows``)."""
    return tf.data.Dataset.from_tensor_slices(bptt_windows(ids, batch_size, window))
