"""Pascanu thesis Table 6.3 in small: RNN, DT(S)-RNN, DOT(S)-RNN, sRNN on character-level text.

The thesis (ch. 6, secs. 6.4.1-6.4.3) trains the four models on character-level Penn Treebank
and reports test bits-per-character (RNN 1.414, DT(S)-RNN 1.409, DOT(S)-RNN 1.386, sRNN
1.412) with about 0.4-0.5M parameters each. This script trains the same four architectures
at a common parameter budget (``--budget``) on the bundled offline corpus (Shakespeare's
*Hamlet*, 90/5/5 contiguous split; see keras_diffusion/datasets/data/SOURCE.md) or on PTB files
(``--corpus=ptb --ptb_dir=DIR`` with ptb.char.{train,valid,test}.txt), both read through the
TFDS data set ``char_corpus`` (``keras_diffusion.datasets``), with truncated BPTT
windows whose hidden state is carried over (stateful), gradient-norm clipping, the
learning rate halved whenever the validation BPC does not decrease (sec. 6.4.2), and the
best-validation weights evaluated on the test split.

Scaled-down differences from the thesis (2 shared CPU cores): far smaller models and corpus,
a few epochs, Adam by default (``--optimizer=sgd`` for the thesis' plain SGD), and no
layer-wise pretraining of sRNN/DOT(S)-RNN from RNN/DT(S)-RNN.

Usage:
  python scripts/reproduce_pascanu_table6_3.py --quick          # CI smoke run, < 60 s
  python scripts/reproduce_pascanu_table6_3.py --budget=25000 --epochs=20
"""

import math
import os
import sys
import time

from absl import app, flags

import keras
import tensorflow as tf

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_diffusion.datasets import pipelines  # noqa: E402
from models import rnn_builders, text  # noqa: E402
from scripts import reporting  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Tiny CI run: small budget, a few steps, short evaluation.")
flags.DEFINE_enum("corpus", "bundled", ["bundled", "ptb"], "Bundled Hamlet text or PTB files.")
flags.DEFINE_string("ptb_dir", None, "Directory with ptb.char.{train,valid,test}.txt.")
flags.DEFINE_string("data_dir", None, "TFDS data directory of the char_corpus data set.")
flags.DEFINE_list("kinds", list(rnn_builders.CHAR_LM_KINDS), "Models to train.")
flags.DEFINE_integer("budget", 25000, "Target parameter count of every model.")
flags.DEFINE_integer("epochs", 20, "Training epochs.")
flags.DEFINE_integer("batch_size", 16, "Parallel BPTT streams.")
flags.DEFINE_integer("window", 100, "Truncated-BPTT window length.")
flags.DEFINE_integer("max_steps_per_epoch", 0, "Cap on updates per epoch (0: whole split).")
flags.DEFINE_integer("eval_chars", 0, "Evaluate on the first N characters only (0: all).")
flags.DEFINE_enum("optimizer", "adam", ["adam", "sgd"], "Optimizer.")
flags.DEFINE_float("learning_rate", 1e-2, "Initial learning rate (halved on no improvement).")
flags.DEFINE_float("clipnorm", 1.0, "Global gradient-norm clipping threshold.")
flags.DEFINE_enum("activation", "sigmoid", ["sigmoid", "tanh"], "Hidden nonlinearity.")
flags.DEFINE_integer("seed", 0, "Initialization seed.")
flags.DEFINE_string("output", None, "Optional JSON file for the results.")

EVAL_WINDOW = 100


def one_hot_dataset(ids, batch_size, window, vocab_size, max_batches=0):
    """One-hot BPTT windows of ``ids`` (``text.bptt_dataset``), the first ``max_batches``
    of them when that is not 0."""
    ds = text.bptt_dataset(ids, batch_size, window)
    if max_batches:
        ds = ds.take(max_batches)
    return ds.map(lambda x, y: (tf.one_hot(x, vocab_size), y))


def reset_states(model):
    """Zeroes the carried hidden state (also for stacked cells, which Keras' reset misses)."""
    for state in keras.tree.flatten(model.get_layer("rnn").states):
        state.assign(tf.zeros_like(state))


def evaluate_bpc(model, kind, widths, vocab_size, ids):
    """BPC of ``ids`` read as one stream by a batch-1 stateful copy of ``model``."""
    evaluator = rnn_builders.char_lm(
        kind, vocab_size, batch_size=1, activation=FLAGS.activation, **widths
    )
    evaluator.set_weights(model.get_weights())
    reset_states(evaluator)
    window = min(EVAL_WINDOW, len(ids) - 1)
    step = tf.function(lambda x, y: text.bits_per_character(y, evaluator(x, training=False)))
    total_bits, count = 0.0, 0
    for x, y in one_hot_dataset(ids, 1, window, vocab_size):
        total_bits += float(step(x, y)) * int(tf.size(y))
        count += int(tf.size(y))
    return total_bits / count


def train_one(kind, corpus):
    """Trains one ``kind`` at ``--budget`` parameters; returns its sizes, BPCs and history."""
    vocab = corpus.vocab_size
    widths = rnn_builders.char_lm_units(kind, FLAGS.budget, vocab)
    keras.utils.set_random_seed(FLAGS.seed)
    model = rnn_builders.char_lm(
        kind, vocab, batch_size=FLAGS.batch_size, activation=FLAGS.activation,
        seed=FLAGS.seed, **widths
    )
    optimizer = (keras.optimizers.Adam if FLAGS.optimizer == "adam" else keras.optimizers.SGD)(
        learning_rate=FLAGS.learning_rate, global_clipnorm=FLAGS.clipnorm
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[text.BitsPerCharacter()],
    )
    train = one_hot_dataset(
        corpus.ids("train"), FLAGS.batch_size, FLAGS.window, vocab, FLAGS.max_steps_per_epoch
    )
    limit = FLAGS.eval_chars or None
    valid_ids, test_ids = corpus.ids("valid")[:limit], corpus.ids("test")[:limit]
    best_valid, best_weights, start = math.inf, None, time.time()
    history = []
    for epoch in range(FLAGS.epochs):
        reset_states(model)
        fit = model.fit(train, epochs=1, verbose=0, shuffle=False)
        valid = evaluate_bpc(model, kind, widths, vocab, valid_ids)
        history.append({"epoch": epoch + 1, "train_bpc": fit.history["bits_per_character"][-1],
                        "valid_bpc": valid})
        print(f"  {kind} epoch {epoch + 1}: train BPC {history[-1]['train_bpc']:.3f}, "
              f"valid BPC {valid:.3f}", flush=True)
        if valid < best_valid:
            best_valid, best_weights = valid, model.get_weights()
        else:
            optimizer.learning_rate.assign(optimizer.learning_rate * 0.5)
    model.set_weights(best_weights)
    return {
        "kind": kind,
        "params": model.count_params(),
        "widths": widths,
        "valid_bpc": best_valid,
        "test_bpc": evaluate_bpc(model, kind, widths, vocab, test_ids),
        "seconds": time.time() - start,
        "history": history,
    }


NAMES = {"rnn": "RNN", "dts": "DT(S)-RNN", "dots": "DOT(S)-RNN", "srnn": "sRNN (2 levels)"}
THESIS_BPC = {"rnn": 1.414, "dts": 1.409, "dots": 1.386, "srnn": 1.412}


def run():
    """Trains and evaluates every ``--kinds`` model; prints and returns the results."""
    if FLAGS.quick:
        FLAGS.budget, FLAGS.epochs, FLAGS.batch_size, FLAGS.window = 2000, 1, 8, 20
        FLAGS.max_steps_per_epoch, FLAGS.eval_chars = 3, 300
    for kind in FLAGS.kinds:
        if kind not in rnn_builders.CHAR_LM_KINDS:
            raise app.UsageError(
                f"--kinds entries must be in {rnn_builders.CHAR_LM_KINDS}, got {kind!r}."
            )
    if FLAGS.corpus == "ptb" and not FLAGS.ptb_dir:
        raise app.UsageError("--corpus=ptb needs --ptb_dir (ptb.char.*.txt files).")
    config = "ptb" if FLAGS.corpus == "ptb" else "hamlet"
    corpus = pipelines.char_corpus(config, data_dir=FLAGS.data_dir, manual_dir=FLAGS.ptb_dir)
    source = (f"PTB char files in {FLAGS.ptb_dir}" if config == "ptb" else
              "bundled Hamlet (keras_diffusion/datasets/data/hamlet.txt), 90/5/5 contiguous split")
    source += f", TFDS char_corpus/{config}"
    print(f"Corpus: {source}; vocabulary {corpus.vocab_size}; train/valid/test "
          f"{len(corpus.train)}/{len(corpus.valid)}/{len(corpus.test)} symbols.")
    print(f"Scaling: budget {FLAGS.budget} params, {FLAGS.epochs} epochs, batch "
          f"{FLAGS.batch_size} x window {FLAGS.window}, {FLAGS.optimizer} lr "
          f"{FLAGS.learning_rate}, clipnorm {FLAGS.clipnorm}, {FLAGS.activation} units"
          f"{', QUICK smoke run' if FLAGS.quick else ''}.", flush=True)
    results = [train_one(kind, corpus) for kind in FLAGS.kinds]
    print()
    reporting.print_table(
        ["model", "widths", "params", "valid BPC", "test BPC", "thesis PTB test BPC", "s"],
        [[NAMES[r["kind"]], ", ".join(str(v) for v in r["widths"].values()), r["params"],
          f"{r['valid_bpc']:.3f}", f"{r['test_bpc']:.3f}", THESIS_BPC[r["kind"]],
          f"{r['seconds']:.0f}"] for r in results],
    )
    return reporting.write_json(results, FLAGS.output)


def main(argv):
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
