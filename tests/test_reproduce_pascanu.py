"""Tests for models/rnn_builders.py and the quick modes of the two Pascanu reproductions."""

import importlib
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import script_runner
from models import pathological, rnn_builders
from scripts import reporting


@pytest.mark.parametrize("kind", rnn_builders.CHAR_LM_KINDS)
def test_char_lm_param_count_and_budget(kind):
    widths = rnn_builders.char_lm_units(kind, budget=12000, vocab_size=30)
    model = rnn_builders.char_lm(kind, 30, batch_size=2, **widths)
    count = rnn_builders.char_lm_param_count(kind, 30, **widths)
    assert model.count_params() == count
    assert abs(count - 12000) / 12000 < 0.05
    if kind == "dots":
        assert widths["output_units"] == round(1.5 * widths["units"])


@pytest.mark.parametrize("kind", ["dts", "srnn"])
def test_char_lm_carries_state_across_windows(kind):
    model = rnn_builders.char_lm(kind, 7, units=6, output_units=9, batch_size=2, seed=1)
    x = np.eye(7, dtype="float32")[np.random.default_rng(0).integers(0, 7, size=(2, 10))]
    whole = np.concatenate([model(x[:, :4]), model(x[:, 4:])], axis=1)
    fresh = rnn_builders.char_lm(kind, 7, units=6, output_units=9, batch_size=2, seed=1)
    fresh.set_weights(model.get_weights())
    np.testing.assert_allclose(whole, fresh(x), atol=1e-5)  # two windows == one long window
    stateless = rnn_builders.char_lm(kind, 7, units=6, batch_size=2, stateful=False, seed=1,
                                     output_units=9)
    stateless.set_weights(model.get_weights())
    assert not np.allclose(stateless(x[:, 4:]), whole[:, 4:], atol=1e-5)


def test_char_lm_initialization_follows_sec_6_4_2():
    model = rnn_builders.char_lm("dots", 40, units=30, output_units=45, batch_size=1)
    cell = model.get_layer("rnn").cell
    recurrent = keras.ops.convert_to_numpy(cell.recurrent_kernel)
    np.testing.assert_array_equal(np.count_nonzero(recurrent, axis=0), 20)
    assert np.linalg.norm(recurrent, 2) == pytest.approx(1.0, rel=1e-5)
    kernel = keras.ops.convert_to_numpy(cell.kernel)
    assert np.std(kernel) == pytest.approx(0.01, rel=0.1)
    deep = model.get_layer("deep_output")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(deep.biases[0]), 0.1)


@pytest.mark.parametrize("init,std", [("sigmoid", 0.01), ("basic_tanh", 0.1), ("smart_tanh", 0.01)])
def test_pathological_rnn_initializations(init, std):
    task = pathological.PathologicalTask("temporal_order", 20)
    net = rnn_builders.pathological_rnn(task, units=50, init=init, seed=3)
    cell = net.get_layer("rnn").cell
    rec = keras.ops.convert_to_numpy(cell.recurrent_kernel)
    if init == "smart_tanh":
        np.testing.assert_array_equal(np.count_nonzero(rec, axis=0), 15)
        assert np.max(np.abs(np.linalg.eigvals(rec))) == pytest.approx(0.95, rel=1e-4)
    else:
        assert np.std(rec) == pytest.approx(std, rel=0.1)
    assert np.std(keras.ops.convert_to_numpy(cell.kernel)) == pytest.approx(std, rel=0.2)
    assert np.std(keras.ops.convert_to_numpy(net.get_layer("readout").kernel)) == pytest.approx(
        std, rel=0.2)
    assert cell.activation == ("sigmoid" if init == "sigmoid" else "tanh")


def test_pathological_rnn_reads_the_last_target_steps_and_round_trips(tmp_path):
    task = pathological.PathologicalTask("memorization_20bit", 15)
    net = rnn_builders.pathological_rnn(task, units=12, seed=0)
    x, _ = task.sample(3, np.random.default_rng(0))
    out = net(x)
    assert tuple(out.shape) == (3, 10, 5)
    states = keras.Model(net.input, net.get_layer("rnn").output)(x)
    readout = net.get_layer("readout")
    np.testing.assert_allclose(out, readout(states[:, -10:]), atol=1e-6)
    path = str(tmp_path / "net.keras")
    net.save(path)
    np.testing.assert_allclose(keras.models.load_model(path)(x), out, atol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_pathological_rnn_traced_with_unknown_length_runs_every_step(jit_compile):
    """Fed by a tf.data generator the number of steps is unknown when traced; every step must
    still run (Keras' loop once stopped the time-major DeepTransitionRNN after ``batch``
    steps, here 4 of 30, leaving the later states zero)."""
    task = pathological.PathologicalTask("temporal_order", 30)
    net = rnn_builders.pathological_rnn(task, units=6, seed=0)
    rnn = net.get_layer("rnn")
    x, _ = task.sample(4, np.random.default_rng(0))
    traced = tf.function(rnn, input_signature=[tf.TensorSpec((4, None, 6), tf.float32)],
                         jit_compile=jit_compile)
    np.testing.assert_allclose(traced(x), rnn(x), atol=1e-6)
    assert np.all(np.any(np.asarray(traced(x)) != 0, axis=(0, 2)))


def test_bad_builder_arguments():
    task = pathological.PathologicalTask("addition", 20)
    with pytest.raises(ValueError, match="`init` must be one of"):
        rnn_builders.pathological_rnn(task, init="orthogonal")
    with pytest.raises(ValueError, match="`kind` must be one of"):
        rnn_builders.char_lm_units("lstm", 1000, 10)
    with pytest.raises(ValueError, match="budget"):
        rnn_builders.char_lm_units("rnn", 10, 50)
    with pytest.raises(ValueError, match="output_units"):
        rnn_builders.char_lm("dots", 10, units=4)
    with pytest.raises(ValueError, match="`units` must be an integer >= 1, got 0"):
        rnn_builders.pathological_rnn(task, units=0)
    with pytest.raises(ValueError, match="`kind` must be one of"):
        rnn_builders.char_lm_param_count("gru", 10, 4)


def test_reporting_table_and_json(tmp_path, capsys):
    reporting.print_table(["T", "MSGD"], [[20, "1/2 (0.5%)"], [50, "0/2 (9.0%)"]])
    assert capsys.readouterr().out.splitlines() == [
        "| T | MSGD |", "|---|---|", "| 20 | 1/2 (0.5%) |", "| 50 | 0/2 (9.0%) |"]
    results = [{"error_rate": np.float32(0.25), "success": False}]
    assert reporting.write_json(results, None) is results
    path = tmp_path / "r.json"
    reporting.write_json(results, str(path))
    assert json.loads(path.read_text()) == [{"error_rate": 0.25, "success": False}]


def test_reporting_report_files_and_plot(tmp_path):
    assert reporting.write_report(None, {}, ["a"], [[1]]) == []
    out = tmp_path / "new"
    paths = reporting.write_report(str(out), {"x": np.float64(0.5)}, ["a", "b"], [[1, 2]],
                                   preamble="Setting.")
    assert sorted(os.path.basename(p) for p in paths) == ["results.json", "table.md"]
    assert json.loads((out / "results.json").read_text()) == {"x": 0.5}
    assert (out / "table.md").read_text() == "Setting.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    png = tmp_path / "p.png"
    reporting.plot_panels(str(png), [
        {"title": "one", "series": [("a", [1, 2], [3, 4], {"marker": "o"})], "note": "n",
         "ylim": (0, 5)},
        {"series": [("b", [1, 10], [1, 100], {})], "xscale": "log", "yscale": "log",
         "xticks": [1, 10]},
    ], title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_the_scripts_defines_no_flags():
    before = set(flags.FLAGS)
    for name in ("reproduce_pascanu_figure5_11", "reproduce_pascanu_table6_3"):
        importlib.reload(importlib.import_module(f"scripts.{name}"))
    assert set(flags.FLAGS) == before


def test_figure5_11_summary_counts_successes_and_medians():
    from scripts import reproduce_pascanu_figure5_11 as figure

    runs = [{"length": 20, "method": "sgd", "success": s, "updates": u, "error_rate": e}
            for s, u, e in ((True, 500, 0.0), (True, 1500, 0.005), (False, 3000, 0.4))]
    summary = figure.summarize(runs, [20], ["sgd"])["20/sgd"]
    assert summary == {"successes": 2, "runs": 3, "success_rate": 2 / 3,
                       "median_updates_to_success": 1000.0, "median_error_rate": 0.005}


def test_table6_3_best_point_is_the_best_validation_within_the_limit():
    from scripts import reproduce_pascanu_table6_3 as table

    curve = [{"updates": 100, "valid_bpc": 3.0, "test_bpc": 3.1},
             {"updates": 200, "valid_bpc": 2.5, "test_bpc": 2.6},
             {"updates": 300, "valid_bpc": float("nan"), "test_bpc": float("nan")},
             {"updates": 400, "valid_bpc": 2.4, "test_bpc": 2.7}]
    assert table.best_point(curve)["test_bpc"] == 2.7
    assert table.best_point(curve, limit=300)["test_bpc"] == 2.6
    assert table.best_point(curve, limit=100)["test_bpc"] == 3.1
    assert table.best_point(curve, limit=50)["test_bpc"] == 3.1  # none that early: the first


@pytest.mark.parametrize("kind", ["dots", "srnn"])
def test_table6_3_evaluator_matches_a_windowed_stateful_reading(kind):
    """One stream read whole equals the training model's stateful reading window by window;
    two streams equal the mean over the two halves read separately."""
    from scripts import reproduce_pascanu_table6_3 as table

    vocab, widths = 7, {"units": 5, "output_units": 6} if kind == "dots" else {"units": 5}
    ids = np.random.default_rng(0).integers(0, vocab, size=41)
    stateful = rnn_builders.char_lm(kind, vocab, batch_size=1, seed=2, **widths)
    bits = []
    for start in range(0, 40, 10):  # four windows of 10 symbols, state carried
        x = np.eye(vocab, dtype="float32")[ids[None, start:start + 10]]
        logits = keras.ops.convert_to_numpy(stateful(x))[0]
        log_p = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
        bits += list(-log_p[np.arange(10), ids[start + 1:start + 11]] / np.log(2.0))
    evaluator = table.Evaluator(kind, widths, vocab, streams=1)
    assert evaluator(stateful.get_weights(), ids) == pytest.approx(np.mean(bits), rel=1e-5)
    halves = [evaluator(stateful.get_weights(), ids[:20]), evaluator(stateful.get_weights(),
                                                                     ids[20:40])]
    two = table.Evaluator(kind, widths, vocab, streams=2)
    assert two(stateful.get_weights(), ids[:40]) == pytest.approx(np.mean(halves), rel=1e-5)


def _run_script(name, *args):
    proc = script_runner.run_script(name, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_figure5_11_quick(tmp_path):
    stdout = _run_script("reproduce_pascanu_figure5_11.py", "--quick", f"--output_dir={tmp_path}")
    assert "SCALED" in stdout and "| T | MSGD | MSGD-C | MSGD-CR |" in stdout
    report = json.loads((tmp_path / "results.json").read_text())
    runs = report["runs"]
    assert {r["method"] for r in runs} == {"sgd", "sgd_c", "sgd_cr"}
    for r in runs:
        assert 0.0 <= r["error_rate"] <= 1.0 and r["success"] == (r["error_rate"] < 0.01)
        assert [u for u, _ in r["curve"]] == [10, 20][:len(r["curve"])]
    assert set(report["summary"]) == {"20/sgd", "20/sgd_c", "20/sgd_cr"}
    assert "| T | MSGD | MSGD-C | MSGD-CR |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "figure5_11.png").stat().st_size > 0


def test_table6_3_quick_on_ptb_format_files(tmp_path):
    rng = np.random.default_rng(0)
    letters = list("abcdefgh")
    for split, lines in (("train", 120), ("valid", 15), ("test", 15)):
        sentences = [" _ ".join(" ".join(rng.choice(letters, 4)) for _ in range(3))
                     for _ in range(lines)]  # e.g. "g f e c _ c a a a _ b g f h"
        (tmp_path / f"ptb.char.{split}.txt").write_text("\n".join(sentences) + "\n")
    out = tmp_path / "out"
    stdout = _run_script("reproduce_pascanu_table6_3.py", "--quick", "--corpus=ptb",
                         f"--ptb_dir={tmp_path}", f"--output_dir={out}")
    assert "| DOT(S)-RNN |" in stdout
    report = json.loads((out / "results.json").read_text())
    results = report["models"]
    assert list(results) == list(rnn_builders.CHAR_LM_KINDS)
    vocab = 8 + 3  # letters, "_", end of line, UNK
    for r in results.values():
        assert abs(r["params"] - 2000) / 2000 < 0.15
        assert r["seconds_per_update"] > 0 and len(r["search"]) == 1
        assert [p["updates"] for p in r["curve"]] == [2, 4][:len(r["curve"])]
        # barely trained: close to the uniform code length log2(vocab)
        assert 0.5 * np.log2(vocab) < r["test_bpc"] < 1.5 * np.log2(vocab)
    assert (out / "table6_3.png").stat().st_size > 0
