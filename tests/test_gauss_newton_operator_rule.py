"""The "auto" product mode of the Gauss-Newton operator picks what the README's measurement
says (scripts/benchmark_hessian_free.py; README, Benchmarks, "Hessian-free step")."""

import os
import re

import keras
import pytest

import keras_diffusion as kd
from keras_diffusion.curvature import gauss_newton_operator as gn_operator
from keras_diffusion.optimizers import HessianFree
from scripts import benchmark_curvature

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
NAMES = {"MLP": "mlp", "LeNet-5": "lenet5", "RNN unrolled": "rnn_unrolled",
         "RNN while-loop": "rnn_loop"}


def _measured_fastest():
    """``{network: mode}`` with the smallest "TF ms" in the README's HF step table."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("**Hessian-free step**"):]
    section = section[:section.index("\n\n**", 1)]
    times = {}
    for model, mode, tf_ms in re.findall(
            r"^\| ([^|]+?) \| (recorded|forward|double_backward) \| ([0-9.]+) \|", section,
            flags=re.MULTILINE):
        times.setdefault(NAMES[model], {})[mode] = float(tf_ms)
    assert set(times) == set(NAMES.values())
    return {name: min(modes, key=modes.get) for name, modes in times.items()}


@pytest.mark.parametrize("name", sorted(NAMES.values()))
def test_auto_mode_is_the_measured_fastest(name):
    model = benchmark_curvature.keras_model(name, quick=True)
    assert gn_operator.choose_mode("auto", model) == _measured_fastest()[name]


@pytest.mark.parametrize("name, structure", [
    ("mlp", "dense"), ("lenet5", "convolution"), ("rnn_unrolled", "dense"),
    ("rnn_loop", "while_loop")])
def test_structure_of_the_benchmark_networks(name, structure):
    assert gn_operator.structure(benchmark_curvature.keras_model(name, quick=True)) == structure


def test_structure_finds_nested_layers_and_package_rnns():
    inner = keras.Sequential([keras.Input((4, 2)), keras.layers.GRU(3)])
    outer = keras.Sequential([keras.Input((4, 2)), inner, keras.layers.Dense(1)])
    assert gn_operator.structure(outer) == "while_loop"
    deep = kd.Sequential([keras.Input((4, 2)), kd.layers.DeepTransitionRNN(kd.layers.DeepTransitionRNNCell(3), unroll=True)])
    assert gn_operator.structure(deep) == "dense"


def test_explicit_modes_pass_through_and_bad_ones_are_named():
    model = benchmark_curvature.keras_model("mlp", quick=True)
    for mode in ("recorded", "forward", "double_backward"):
        assert gn_operator.choose_mode(mode, model) == mode
    assert gn_operator.choose_mode("auto") == gn_operator.DEFAULT_MODE
    with pytest.raises(ValueError, match="product_mode.*'reverse'"):
        HessianFree(product_mode="reverse")
    assert HessianFree(product_mode="forward").get_config()["product_mode"] == "forward"
