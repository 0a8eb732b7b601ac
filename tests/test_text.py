"""Character corpus (keras_diffusion.datasets.text) and bits per character (models.text)."""

import math

import keras
import numpy as np
import pytest

from models import text


def test_bundled_corpus_is_english_and_split_90_5_5():
    raw = text.load_bundled_text()
    assert len(raw) > 150_000 and "To be, or not to be" in raw
    corpus = text.CharCorpus.from_text(raw)
    assert corpus.train + corpus.valid + corpus.test == raw
    n = len(raw)
    assert abs(len(corpus.train) - 0.9 * n) <= 1 and abs(len(corpus.valid) - 0.05 * n) <= 1
    assert corpus.vocabulary[-1] == text.UNK
    assert set(corpus.vocabulary[:-1]) == set(corpus.train)
    ids = corpus.ids("valid")
    decoded = "".join(corpus.vocabulary[i] for i in ids)
    assert decoded == corpus.valid  # every valid character was seen in training


def test_unseen_symbols_map_to_unk():
    corpus = text.CharCorpus.from_text("abab" * 5 + "abz" + "ab", fractions=(0.8, 0.1, 0.1))
    assert corpus.vocabulary == ["a", "b", text.UNK]
    assert "z" in corpus.valid + corpus.test
    all_ids = np.concatenate([corpus.ids("valid"), corpus.ids("test")])
    assert np.sum(all_ids == 2) == 1


def test_ptb_char_format(tmp_path):
    lines = {
        "train": ["a e r _ b a n k", "t h e _ c a t"],
        "valid": ["t h e _ b a t"],
        "test": ["a _ q"],
    }
    for split, content in lines.items():
        (tmp_path / f"ptb.char.{split}.txt").write_text("\n".join(" " + l for l in content) + "\n")
    corpus = text.CharCorpus.from_ptb_char(str(tmp_path))
    assert list(corpus.train) == list("aer_bank") + ["\n"] + list("the_cat") + ["\n"]
    assert sorted(set(corpus.train)) == corpus.vocabulary[:-1]
    vocab = corpus.vocabulary
    np.testing.assert_array_equal(
        corpus.ids("test"), [vocab.index("a"), vocab.index("_"), len(vocab) - 1, vocab.index("\n")]
    )
    train_ids = corpus.ids("train")
    x, y = next(iter(text.bptt_dataset(train_ids, batch_size=2, window=3)))
    stream = (len(train_ids) - 1) // 2  # row b starts at symbol b * stream
    np.testing.assert_array_equal(x.numpy(), [train_ids[0:3], train_ids[stream:stream + 3]])
    np.testing.assert_array_equal(y.numpy(), [train_ids[1:4], train_ids[stream + 1:stream + 4]])


def test_ptb_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ptb.char.train.txt"):
        text.CharCorpus.from_ptb_char(str(tmp_path))


def test_bptt_windows_are_consecutive_streams():
    ids = np.arange(103, dtype=np.int32)
    x, y = text.bptt_windows(ids, batch_size=4, window=5)
    stream = 102 // 4  # 25 symbols per row, 5 whole windows
    assert x.shape == (5, 4, 5)
    for b in range(4):
        row_x = np.concatenate([x[k, b] for k in range(5)])
        row_y = np.concatenate([y[k, b] for k in range(5)])
        np.testing.assert_array_equal(row_x, ids[b * stream : b * stream + 25])
        np.testing.assert_array_equal(row_y, row_x + 1)  # next-symbol targets
    ds = list(text.bptt_dataset(ids, 4, 5))
    np.testing.assert_array_equal(ds[2][0].numpy(), x[2])


def test_bptt_bad_arguments():
    with pytest.raises(ValueError, match="`window` must be an integer >= 1, got 0"):
        text.bptt_windows(np.arange(10), 2, 0)
    with pytest.raises(ValueError, match="cannot fill one window"):
        text.bptt_windows(np.arange(10), 4, 5)
    with pytest.raises(ValueError, match="fractions"):
        text.split_contiguous("abc", (0.5, 0.5, 0.0))


def test_bits_per_character_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32)
    y = rng.integers(0, 11, size=(3, 7))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean(np.take_along_axis(logp, y[..., None], -1)) / math.log(2)
    assert float(text.bits_per_character(y, logits)) == pytest.approx(expected, rel=1e-5)
    metric = text.BitsPerCharacter()
    metric.update_state(y[:2], logits[:2])
    metric.update_state(y[2:], logits[2:])
    assert float(metric.result()) == pytest.approx(expected, rel=1e-5)
    uniform = np.zeros((1, 4, 8), np.float32)
    assert float(text.bits_per_character(np.zeros((1, 4)), uniform)) == pytest.approx(3.0)


def test_bits_per_character_metric_in_compile_and_round_trip(tmp_path):
    inputs = keras.Input((None,), dtype="int32")
    outputs = keras.layers.Dense(5)(keras.layers.Embedding(5, 4)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[text.BitsPerCharacter()],
    )
    x = np.random.default_rng(1).integers(0, 5, size=(4, 6))
    results = model.evaluate(x, x, verbose=0, return_dict=True)
    assert results["bits_per_character"] == pytest.approx(results["loss"] / math.log(2), rel=1e-5)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    again = loaded.evaluate(x, x, verbose=0, return_dict=True)
    assert again["bits_per_character"] == pytest.approx(results["bits_per_character"], rel=1e-6)
