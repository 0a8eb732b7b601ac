"""Tests for models/rnn_builders.py and the quick modes of the two Pascanu reproductions."""

import json

import keras
import numpy as np
import pytest

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


def test_bad_builder_arguments():
    task = pathological.PathologicalTask("addition", 20)
    with pytest.raises(ValueError, match="init must be one of"):
        rnn_builders.pathological_rnn(task, init="orthogonal")
    with pytest.raises(ValueError, match="kind must be one of"):
        rnn_builders.char_lm_units("lstm", 1000, 10)
    with pytest.raises(ValueError, match="budget"):
        rnn_builders.char_lm_units("rnn", 10, 50)
    with pytest.raises(ValueError, match="output_units"):
        rnn_builders.char_lm("dots", 10, units=4)


def test_reporting_table_and_json(tmp_path, capsys):
    reporting.print_table(["T", "MSGD"], [[20, "1/2 (0.5%)"], [50, "0/2 (9.0%)"]])
    assert capsys.readouterr().out.splitlines() == [
        "| T | MSGD |", "|---|---|", "| 20 | 1/2 (0.5%) |", "| 50 | 0/2 (9.0%) |"]
    results = [{"error_rate": np.float32(0.25), "success": False}]
    assert reporting.write_json(results, None) is results
    path = tmp_path / "r.json"
    reporting.write_json(results, str(path))
    assert json.loads(path.read_text()) == [{"error_rate": 0.25, "success": False}]


def _run_script(name, *args):
    proc = script_runner.run_script(name, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_figure5_11_quick(tmp_path):
    out_file = tmp_path / "fig.json"
    stdout = _run_script("reproduce_pascanu_figure5_11.py", "--quick", f"--output={out_file}")
    assert "SCALED" in stdout and "| T | MSGD | MSGD-C | MSGD-CR |" in stdout
    runs = json.loads(out_file.read_text())
    assert {r["method"] for r in runs} == {"sgd", "sgd_c", "sgd_cr"}
    for r in runs:
        assert 0.0 <= r["error_rate"] <= 1.0 and r["success"] == (r["error_rate"] < 0.01)


def test_table6_3_quick_on_ptb_format_files(tmp_path):
    rng = np.random.default_rng(0)
    letters = list("abcdefgh")
    for split, lines in (("train", 120), ("valid", 15), ("test", 15)):
        sentences = [" _ ".join(" ".join(rng.choice(letters, 4)) for _ in range(3))
                     for _ in range(lines)]  # e.g. "g f e c _ c a a a _ b g f h"
        (tmp_path / f"ptb.char.{split}.txt").write_text("\n".join(sentences) + "\n")
    out_file = tmp_path / "table.json"
    stdout = _run_script("reproduce_pascanu_table6_3.py", "--quick", "--corpus=ptb",
                         f"--ptb_dir={tmp_path}", f"--output={out_file}")
    assert "| DOT(S)-RNN |" in stdout
    results = json.loads(out_file.read_text())
    assert [r["kind"] for r in results] == list(rnn_builders.CHAR_LM_KINDS)
    vocab = 8 + 3  # letters, "_", end of line, UNK
    for r in results:
        assert abs(r["params"] - 2000) / 2000 < 0.15
        # barely trained: close to the uniform code length log2(vocab)
        assert 0.5 * np.log2(vocab) < r["test_bpc"] < 1.5 * np.log2(vocab)
