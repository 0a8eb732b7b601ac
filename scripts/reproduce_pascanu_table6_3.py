"""Pascanu thesis Table 6.3 in small: RNN, DT(S)-RNN, DOT(S)-RNN, sRNN on character-level text.

The thesis (ch. 6, secs. 6.4.1-6.4.3) trains the four models on character-level Penn Treebank
and reports test bits-per-character (RNN 1.414, DT(S)-RNN 1.409, DOT(S)-RNN 1.386, sRNN
1.412) with about 0.4-0.5M parameters each, SGD with gradient clipping, the learning rate
halved whenever the validation cost does not decrease, training stopped when it stops
decreasing. This script trains the same four architectures (sigmoid hidden units, rectifier
deep output, the sec. 6.4.2 initialization) at a common parameter budget (``--budget``) on
the bundled offline corpus (Shakespeare's *Hamlet*, 90/5/5 contiguous split; see
keras_diffusion/datasets/data/SOURCE.md) or on PTB files (``--corpus=ptb --ptb_dir=DIR``),
read through the TFDS data set ``char_corpus``, with stateful truncated-BPTT windows.

Procedure (each step the same for the four models):

1. Per-update time of every model: CPU time of this process (on a shared machine wall time
   mostly measures the other jobs), with the models interleaved (``--timing_rounds`` rounds
   of ``--timing_steps`` updates each; the median per model).
2. Search: every (learning rate, clipping threshold) of ``--search_learning_rates`` x
   ``--search_clipnorms`` trained for ``--search_updates`` updates; the best validation BPC
   picks the setting.
3. Final training with the chosen setting for ``--seconds`` of training-step CPU time, i.e.
   ``seconds / (time per update)`` updates (capped at ``--max_updates``): equal wall-clock.
   Every ``--eval_every`` updates the validation and test BPC are measured (the learning
   curve); the learning rate is halved when the validation BPC does not fall by
   ``--min_improvement``; training stops (converged) after ``--max_halvings`` halvings.
4. Reported: test BPC at the best-validation evaluation within the whole budget (equal
   wall-clock) and within the smallest model's update budget (equal updates), at equal
   parameter count.

BPC is evaluated by a stateless copy of the model reading each split as ``--eval_streams``
contiguous streams in one pass (the first symbol of each stream has no context).

Scaled-down differences from the thesis (2 shared CPU cores): far smaller models and corpus,
Adam by default (``--optimizer=sgd`` for the thesis' plain SGD), minutes of training, and no
layer-wise pretraining of sRNN/DOT(S)-RNN from RNN/DT(S)-RNN.

Writes ``results.json``, ``table.md`` and ``table6_3.png`` to ``--output_dir``.

Usage:
  python scripts/reproduce_pascanu_table6_3.py --quick --output_dir=/tmp/t63    # CI, < 60 s
  python scripts/reproduce_pascanu_table6_3.py --flagfile=scripts/configs/table6_3.cfg
"""

import math
import os
import sys
import time

from absl import app, flags

import keras
import numpy as np
import tensorflow as tf

if __package__ in (None, ""):  # run as `python scripts/<name>.py`: import the clone's code
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_diffusion.datasets import pipelines  # noqa: E402
from models import rnn_builders, text  # noqa: E402
from scripts import reporting  # noqa: E402

FLAGS = flags.FLAGS
NAMES = {"rnn": "RNN", "dts": "DT(S)-RNN", "dots": "DOT(S)-RNN", "srnn": "sRNN (2 levels)"}
THESIS_BPC = {"rnn": 1.414, "dts": 1.409, "dots": 1.386, "srnn": 1.412}


def define_flags():
    """Defines the script's flags (called from ``main`` only, so importing is side-effect free)."""
    flags.DEFINE_bool("quick", False, "Tiny CI run: small budget, a few updates.")
    flags.DEFINE_enum("corpus", "bundled", ["bundled", "ptb"], "Bundled Hamlet text or PTB files.")
    flags.DEFINE_string("ptb_dir", None, "Directory with ptb.char.{train,valid,test}.txt.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory of the char_corpus data set.")
    flags.DEFINE_list("kinds", list(rnn_builders.CHAR_LM_KINDS), "Models to train.")
    flags.DEFINE_integer("budget", 25000, "Target parameter count of every model.")
    flags.DEFINE_enum("optimizer", "adam", ["adam", "sgd"], "Optimizer.")
    flags.DEFINE_list("search_learning_rates", ["0.003", "0.01", "0.03"],
                      "Initial learning rates tried for every model.")
    flags.DEFINE_list("search_clipnorms", ["1.0"], "Global clipping thresholds tried.")
    flags.DEFINE_integer("search_updates", 400, "Updates per search trial.")
    flags.DEFINE_float("seconds", 60.0,
                       "Training-step CPU seconds per model (the equal wall-clock budget).")
    flags.DEFINE_integer("max_updates", 20000, "Cap on the updates of the final training.")
    flags.DEFINE_integer("eval_every", 200, "Updates between validation/test evaluations.")
    flags.DEFINE_float("min_improvement", 0.003, "Validation BPC decrease counted as progress.")
    flags.DEFINE_integer("max_halvings", 4, "Learning-rate halvings before stopping.")
    flags.DEFINE_integer("batch_size", 16, "Parallel BPTT streams.")
    flags.DEFINE_integer("window", 100, "Truncated-BPTT window length.")
    flags.DEFINE_integer("eval_streams", 8, "Contiguous streams per evaluated split.")
    flags.DEFINE_integer("timing_steps", 30, "Updates per timing measurement.")
    flags.DEFINE_integer("timing_rounds", 3, "Interleaved timing rounds.")
    flags.DEFINE_enum("activation", "sigmoid", ["sigmoid", "tanh"], "Hidden nonlinearity.")
    flags.DEFINE_bool("jit_compile", True, "XLA-compile the train step.")
    flags.DEFINE_integer("seed", 0, "Initialization seed.")
    flags.DEFINE_string("output_dir", None, "Directory for results.json, table.md, table6_3.png.")


def train_windows(ids, vocab_size):
    """Endless one-hot BPTT windows of the training split (wrapping around at its end)."""
    ds = text.bptt_dataset(ids, FLAGS.batch_size, FLAGS.window)
    return ds.map(lambda x, y: (tf.one_hot(x, vocab_size), y)).cache().repeat()


class Evaluator:
    """BPC of a split under the weights of a ``kind`` model: a stateless copy reads the split
    as ``streams`` contiguous streams in one call (each stream's first symbol has no context).

    Args:
        kind, widths, vocab_size, activation: the model, as for ``rnn_builders.char_lm``.
        streams: number of contiguous streams (at most half the split's length is used).
        jit_compile: XLA-compile the evaluation.
    """

    def __init__(self, kind, widths, vocab_size, activation="sigmoid", streams=8,
                 jit_compile=False):
        self.model = rnn_builders.char_lm(kind, vocab_size, activation=activation,
                                          stateful=False, **widths)
        self.vocab_size, self.streams = vocab_size, streams
        self.bits = tf.function(lambda x, y: text.bits_per_character(y, self.model(x)),
                                jit_compile=jit_compile)

    def __call__(self, weights, ids):
        self.model.set_weights(weights)
        streams = max(1, min(self.streams, (len(ids) - 1) // 2))
        length = len(ids) // streams
        block = np.asarray(ids[: streams * length]).reshape(streams, length)
        x = tf.one_hot(block[:, :-1], self.vocab_size)
        return float(self.bits(x, tf.constant(block[:, 1:])))


def reset_states(model):
    """Zeroes the carried hidden state (also for stacked cells, which Keras' reset misses)."""
    for state in keras.tree.flatten(model.get_layer("rnn").states):
        state.assign(tf.zeros_like(state))


def build(kind, widths, vocab_size, learning_rate, clipnorm):
    """A compiled stateful ``kind`` language model."""
    keras.utils.set_random_seed(FLAGS.seed)
    model = rnn_builders.char_lm(kind, vocab_size, batch_size=FLAGS.batch_size,
                                 activation=FLAGS.activation, seed=FLAGS.seed, **widths)
    optimizer = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[FLAGS.optimizer]
    model.compile(optimizer=optimizer(learning_rate=learning_rate, global_clipnorm=clipnorm),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=FLAGS.jit_compile,
                  steps_per_execution=min(FLAGS.eval_every, FLAGS.timing_steps))
    reset_states(model)
    return model


def time_per_update(models, data):
    """Median CPU seconds of this process per update of each model, measured in interleaved
    rounds (CPU time, not wall time: other jobs on a shared machine do not count)."""
    samples = {kind: [] for kind in models}
    for model in models.values():  # compile outside the measurement
        model.fit(data, steps_per_epoch=FLAGS.timing_steps, epochs=1, verbose=0)
    for _ in range(FLAGS.timing_rounds):
        for kind, model in models.items():
            start = time.process_time()
            model.fit(data, steps_per_epoch=FLAGS.timing_steps, epochs=1, verbose=0)
            samples[kind].append((time.process_time() - start) / FLAGS.timing_steps)
    return {kind: float(np.median(s)) for kind, s in samples.items()}


def train(model, evaluator, data, corpus, updates):
    """Trains ``model`` for up to ``updates`` updates with the sec. 6.4.2 halving rule.

    Returns the learning curve (updates, valid and test BPC, learning rate per evaluation),
    the updates done and why training stopped ("converged" or "budget").
    """
    valid_ids, test_ids = corpus.ids("valid"), corpus.ids("test")
    curve, best, halvings, done = [], math.inf, 0, 0
    while done < updates:
        chunk = min(FLAGS.eval_every, updates - done)
        model.fit(data, steps_per_epoch=chunk, epochs=1, verbose=0)
        done += chunk
        weights = model.get_weights()
        valid, test = evaluator(weights, valid_ids), evaluator(weights, test_ids)
        lr = float(model.optimizer.learning_rate)
        curve.append({"updates": done, "valid_bpc": valid, "test_bpc": test,
                      "learning_rate": lr})
        if not math.isfinite(valid):
            return curve, done, "diverged"
        if valid < best - FLAGS.min_improvement:
            best = valid
        else:
            halvings += 1
            if halvings > FLAGS.max_halvings:
                return curve, done, "converged"
            model.optimizer.learning_rate.assign(lr * 0.5)
    return curve, done, "budget"


def best_point(curve, limit=None):
    """The evaluation with the lowest validation BPC among those at <= ``limit`` updates
    (non-finite ones last; the first evaluation when none is that early)."""
    points = [p for p in curve if limit is None or p["updates"] <= limit] or curve[:1]
    return min(points, key=lambda p: _finite_or_inf(p["valid_bpc"]))


def _finite_or_inf(value):
    return value if math.isfinite(value) else math.inf


def search(kind, widths, vocab_size, evaluator, data, corpus):
    """Trains every searched setting for ``--search_updates``; returns the trials, best first."""
    trials = []
    for lr in FLAGS.search_learning_rates:
        for clip in FLAGS.search_clipnorms:
            model = build(kind, widths, vocab_size, float(lr), float(clip))
            curve, _, stop = train(model, evaluator, data, corpus, FLAGS.search_updates)
            point = best_point(curve)
            trials.append({"learning_rate": float(lr), "clipnorm": float(clip),
                           "valid_bpc": point["valid_bpc"], "stop": stop})
            print(f"  search {kind} lr {lr} clip {clip}: valid BPC {point['valid_bpc']:.3f}",
                  flush=True)
    return sorted(trials, key=lambda t: _finite_or_inf(t["valid_bpc"]))


def plot(results, path):
    """Test BPC against updates and against training-step seconds, one line per model."""
    by_updates, by_seconds = [], []
    for kind, r in results.items():
        xs = [p["updates"] for p in r["curve"]]
        ys = [p["test_bpc"] for p in r["curve"]]
        label = f"{NAMES[kind]} ({r['params']:,} params, lr {r['learning_rate']:g})"
        by_updates.append((label, xs, ys, {"marker": "."}))
        by_seconds.append((label, [x * r["seconds_per_update"] for x in xs], ys, {"marker": "."}))
    note = "thesis (PTB, ~0.5M params): " + ", ".join(
        f"{NAMES[k]} {v}" for k, v in THESIS_BPC.items())
    reporting.plot_panels(path, [
        {"title": "test BPC against updates", "xlabel": "updates", "ylabel": "test BPC",
         "series": by_updates},
        {"title": "test BPC against training-step CPU seconds (time per update x updates)",
         "xlabel": "CPU seconds", "ylabel": "test BPC", "series": by_seconds},
    ], title="Pascanu (2014) Table 6.3 in small: character-level language models\n" + note)


def run():
    """Times, searches and trains every ``--kinds`` model; prints and writes the results."""
    if FLAGS.quick:
        FLAGS.budget, FLAGS.batch_size, FLAGS.window = 2000, 8, 20
        FLAGS.search_learning_rates, FLAGS.search_updates = ["0.03"], 2
        FLAGS.seconds, FLAGS.max_updates, FLAGS.eval_every = 5.0, 4, 2
        FLAGS.timing_steps, FLAGS.timing_rounds, FLAGS.jit_compile = 2, 1, False
    for kind in FLAGS.kinds:
        if kind not in rnn_builders.CHAR_LM_KINDS:
            raise app.UsageError(
                f"--kinds entries must be in {rnn_builders.CHAR_LM_KINDS}, got {kind!r}.")
    if FLAGS.corpus == "ptb" and not FLAGS.ptb_dir:
        raise app.UsageError("--corpus=ptb needs --ptb_dir (ptb.char.*.txt files).")
    config = "ptb" if FLAGS.corpus == "ptb" else "hamlet"
    corpus = pipelines.char_corpus(config, data_dir=FLAGS.data_dir, manual_dir=FLAGS.ptb_dir)
    vocab = corpus.vocab_size
    source = (f"PTB char files in {FLAGS.ptb_dir}" if config == "ptb" else
              "bundled Hamlet (keras_diffusion/datasets/data/hamlet.txt), 90/5/5 contiguous split")
    setting = (
        f"Corpus: {source}, TFDS char_corpus/{config}; vocabulary {vocab}; train/valid/test "
        f"{len(corpus.train)}/{len(corpus.valid)}/{len(corpus.test)} symbols. Models at "
        f"{FLAGS.budget} parameters, {FLAGS.activation} units, batch {FLAGS.batch_size} x "
        f"window {FLAGS.window} (stateful), {FLAGS.optimizer}. Search per model: lr in "
        f"{FLAGS.search_learning_rates} x clipnorm in {FLAGS.search_clipnorms}, "
        f"{FLAGS.search_updates} updates each, best validation BPC. Final: {FLAGS.seconds:g} "
        f"CPU seconds of training steps per model (<= {FLAGS.max_updates} updates), "
        f"evaluation every {FLAGS.eval_every} updates, lr halved when validation BPC falls by < "
        f"{FLAGS.min_improvement}, stop after {FLAGS.max_halvings} halvings"
        f"{'; QUICK smoke run' if FLAGS.quick else ''}.")
    print(setting, flush=True)
    data = train_windows(corpus.ids("train"), vocab)
    widths = {k: rnn_builders.char_lm_units(k, FLAGS.budget, vocab) for k in FLAGS.kinds}
    timing = time_per_update(
        {k: build(k, widths[k], vocab, 1e-3, 1.0) for k in FLAGS.kinds}, data)
    print("CPU time per update: " + ", ".join(f"{k} {1000 * t:.1f} ms" for k, t in timing.items()),
          flush=True)
    results = {}
    for kind in FLAGS.kinds:
        evaluator = Evaluator(kind, widths[kind], vocab, FLAGS.activation, FLAGS.eval_streams,
                              FLAGS.jit_compile)
        trials = search(kind, widths[kind], vocab, evaluator, data, corpus)
        best = trials[0]
        updates = min(FLAGS.max_updates, max(1, int(FLAGS.seconds / timing[kind])))
        model = build(kind, widths[kind], vocab, best["learning_rate"], best["clipnorm"])
        start = time.time()
        curve, done, stop = train(model, evaluator, data, corpus, updates)
        results[kind] = {
            "kind": kind, "widths": widths[kind], "params": model.count_params(),
            "learning_rate": best["learning_rate"], "clipnorm": best["clipnorm"],
            "search": trials, "seconds_per_update": timing[kind], "update_budget": updates,
            "updates": done, "stop": stop, "wall_seconds": time.time() - start, "curve": curve,
        }
        print(f"  {kind}: {done} updates ({stop}), best test BPC "
              f"{best_point(curve)['test_bpc']:.3f}", flush=True)
        report = write_results(setting, results, final=kind == FLAGS.kinds[-1])
    return report


def write_results(setting, results, final=True):
    """Tabulates the models trained so far; prints the table when ``final``; writes the report
    files (after every model, so that an interrupted run keeps what it finished)."""
    equal_updates = min(r["update_budget"] for r in results.values())
    header = ["model", "widths", "params", "lr, clip (search)", "CPU ms/update", "updates (stop)",
              f"test BPC @ {equal_updates} updates", "test BPC @ equal wall-clock",
              "thesis PTB test BPC"]
    rows = []
    for kind, r in results.items():
        r["test_bpc_equal_updates"] = best_point(r["curve"], equal_updates)["test_bpc"]
        r["test_bpc"] = best_point(r["curve"])["test_bpc"]
        rows.append([NAMES[kind], ", ".join(str(v) for v in r["widths"].values()),
                     f"{r['params']:,}", f"{r['learning_rate']:g}, {r['clipnorm']:g}",
                     f"{1000 * r['seconds_per_update']:.1f}", f"{r['updates']} ({r['stop']})",
                     f"{r['test_bpc_equal_updates']:.3f}", f"{r['test_bpc']:.3f}",
                     THESIS_BPC[kind]])
    if final:
        print()
        reporting.print_table(header, rows)
    report = {"setting": setting, "equal_updates": equal_updates, "models": results}
    if FLAGS.output_dir:
        reporting.write_report(FLAGS.output_dir, report, header, rows, preamble=setting)
        plot(results, os.path.join(FLAGS.output_dir, "table6_3.png"))
    return report


def main(argv):
    del argv
    run()


if __name__ == "__main__":
    define_flags()
    app.run(main)
