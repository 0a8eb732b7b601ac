"""models/autoencoder.py (the Martens 2010 CURVES autoencoder) and
scripts/reproduce_martens_curves.py (its scaled reproduction: the --quick CI run, the
interleaved equal-wall-clock scheduler)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_diffusion as kd
import script_runner
from models import autoencoder
from scripts import reproduce_martens_curves as curves_script


def _kernels(model):
    return [layer.kernel.shape for layer in model.layers]


def test_builder_has_the_papers_layer_sizes_and_a_mirrored_decoder():
    model = autoencoder.deep_autoencoder(seed=0)
    assert isinstance(model, kd.Sequential)
    widths = [784, 400, 200, 100, 50, 25, 6, 25, 50, 100, 200, 400, 784]
    assert _kernels(model) == list(zip(widths[:-1], widths[1:]))
    assert autoencoder.decoder_widths() == (25, 50, 100, 200, 400)
    names = [layer.name for layer in model.layers]
    assert names[5] == "code" and names[-1] == "logits"
    activations = [layer.activation.__name__ for layer in model.layers]
    # Logistic hidden units, a linear 6-unit code, linear logits (the sigmoid is in the loss).
    assert activations == ["sigmoid"] * 5 + ["linear"] + ["sigmoid"] * 5 + ["linear"]
    small = autoencoder.deep_autoencoder(input_dim=10, encoder=(7, 5, 3))
    assert _kernels(small) == [(10, 7), (7, 5), (5, 3), (3, 5), (5, 7), (7, 10)]


def test_builder_rejects_bad_sizes():
    with pytest.raises(ValueError, match="encoder"):
        autoencoder.deep_autoencoder(encoder=())
    with pytest.raises(ValueError, match="input_dim"):
        autoencoder.deep_autoencoder(input_dim=0)


def test_sparse_initialization_has_15_gaussian_inputs_per_unit():
    model = autoencoder.deep_autoencoder(seed=3)
    for layer in model.layers:
        kernel = layer.kernel.numpy()
        per_unit = np.count_nonzero(kernel, axis=0)
        assert np.all(per_unit == min(15, kernel.shape[0])), layer.name
        assert not np.any(layer.bias.numpy())
    first = model.layers[0].kernel.numpy()
    assert 0.8 < np.std(first[first != 0]) < 1.2  # N(0, 1) entries (6,000 of them)
    again = autoencoder.deep_autoencoder(seed=3).layers[0].kernel.numpy()
    other = autoencoder.deep_autoencoder(seed=4).layers[0].kernel.numpy()
    np.testing.assert_array_equal(first, again)
    assert np.any(first != other)
    init = autoencoder.SparseGaussian(nonzeros=2, stddev=0.5, seed=1)
    clone = keras.initializers.deserialize(keras.initializers.serialize(init))
    np.testing.assert_array_equal(init((6, 4)), clone((6, 4)))
    with pytest.raises(ValueError, match="nonzeros"):
        autoencoder.SparseGaussian(nonzeros=0)


def _numpy_logits(weights, x):
    """float64 forward pass of the 5-4-2-4-5 autoencoder (sigmoid, linear code)."""
    h = x.astype(np.float64)
    activations = ["sigmoid", "linear", "sigmoid", "linear"]
    for (kernel, bias), act in zip(zip(weights[::2], weights[1::2]), activations):
        h = h @ kernel + bias
        if act == "sigmoid":
            h = 1.0 / (1.0 + np.exp(-h))
    return h


def test_loss_from_logits_gives_the_analytic_gauss_newton_matrix():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 5)).astype("float32")
    model = autoencoder.deep_autoencoder(input_dim=5, encoder=(4, 2), nonzeros=3, seed=1)
    loss = autoencoder.reconstruction_loss()
    assert isinstance(loss, keras.losses.BinaryCrossentropy) and loss.get_config()["from_logits"]
    model.compile(optimizer=kd.optimizers.HessianFree(), loss=loss)
    closure = kd.Closure(model, x, x)
    closure.check_gauss_newton("HessianFree")  # raises for a loss on probabilities
    weights = [p.numpy().astype(np.float64) for p in closure.params]
    sizes = [w.size for w in weights]
    theta = np.concatenate([w.ravel() for w in weights])

    def logits(flat):
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        return _numpy_logits([p.reshape(w.shape) for p, w in zip(parts, weights)], x).ravel()

    eps = 1e-6
    jacobian = np.stack([(logits(theta + eps * e) - logits(theta - eps * e)) / (2 * eps)
                         for e in np.eye(theta.size)], axis=1)
    s = 1.0 / (1.0 + np.exp(-logits(theta)))
    # Mean over images and pixels: H_L = diag(s (1 - s)) / (n d) (Pascanu 2014, eq. 4.38).
    dense = jacobian.T @ np.diag(s * (1 - s) / x.size) @ jacobian
    v = rng.normal(size=theta.size)
    parts = np.split(v, np.cumsum(sizes)[:-1])
    product = closure.gauss_newton_operator()(
        [tf.constant(p.reshape(w.shape), "float32") for p, w in zip(parts, weights)])
    got = np.concatenate([np.ravel(p) for p in product])
    np.testing.assert_allclose(got, dense @ v, rtol=2e-4, atol=1e-7)
    # The training loss is the per-pixel mean of the per-image cross-entropy.
    logit_values = np.asarray(model(x))
    assert float(closure.loss()) == pytest.approx(
        autoencoder.cross_entropy(x, logit_values) / 5, rel=1e-5)


def test_reported_errors_against_direct_formulas():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(4, 3, 3))
    logits = rng.normal(size=(4, 9)) * 3
    p = 1 / (1 + np.exp(-logits))
    flat = x.reshape(4, 9)
    assert autoencoder.squared_error(x, logits) == pytest.approx(
        np.mean(np.sum((p - flat) ** 2, axis=1)))
    assert autoencoder.cross_entropy(x, logits) == pytest.approx(
        np.mean(np.sum(-flat * np.log(p) - (1 - flat) * np.log(1 - p), axis=1)))


class _FakeRun:
    """A run whose steps cost ``cost`` seconds; records the global step order."""

    def __init__(self, cost, log, fail_at=None):
        self.cost, self.log, self.fail_at = cost, log, fail_at
        self.clock, self.steps, self.failed, self.evaluated_at = 0.0, 0, False, []

    def step(self):
        self.log.append((self, self.clock))
        self.clock += self.cost
        self.steps += 1
        self.failed = self.steps == self.fail_at

    def evaluate(self):
        self.evaluated_at.append(self.clock)


def test_race_steps_the_run_with_the_least_time_and_evaluates_at_the_marks():
    log = []
    fast, slow, broken = _FakeRun(1.0, log), _FakeRun(2.5, log), _FakeRun(0.5, log, fail_at=3)
    curves_script.race([fast, slow, broken], budget=10.0, evaluations=2)
    current = {id(run): 0.0 for run in (fast, slow, broken)}
    last = {id(run): i for i, (run, _) in enumerate(log)}
    for i, (run, clock) in enumerate(log):  # each step went to the active run with least time
        assert all(clock <= current[key] for key in current if last[key] >= i)
        current[id(run)] = clock + run.cost


def test_quick_run_writes_table_curves_and_figure(tmp_path):
    proc = script_runner.run_script(
        "reproduce_martens_curves.py", "--quick", f"--output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    quick = curves_script.QUICK
    best = results["search"]["best"]
    for method in curves_script.METHODS:
        assert best[method] in quick.grid(method)
        trials = results["search"]["trials"][method]
        assert best[method] == min(trials, key=lambda t: t["final_train_cross_entropy"])[
            "learning_rate"]
    assert len(results["runs"]) == quick.seeds * len(curves_script.METHODS)
    for run in results["runs"]:
        assert run["learning_rate"] == best[run["method"]] and not run["failed"]
        curve = run["curve"]
        assert len(curve) == quick.evaluations + 1  # the initial point, then each mark
        assert curve[0]["seconds"] == 0 and curve[-1]["seconds"] >= quick.budget_seconds
        assert curve[-1]["train_squared_error"] < curve[0]["train_squared_error"]
        assert curve[-1]["passes"] == pytest.approx(
            run["steps"] * (quick.hf_batch_size if run["method"] == "hessian_free"
                            else quick.batch_size) / quick.num_train)
        summary = results["summary"][f"{run['method']}@{run['learning_rate']:g}"]
        assert summary["train_squared_error"]["median"] == pytest.approx(
            curve[-1]["train_squared_error"])
    hf = [r for r in results["runs"] if r["method"] == "hessian_free"][0]
    assert hf["curve"][-1]["cg_iterations"] >= 1 and hf["curve"][-1]["damping"] > 0
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {label} |" in table for label in curves_script.LABELS.values())
    assert (tmp_path / "curves.png").stat().st_size > 1000


def _fake_results(method, learning_rate, finals):
    settings = {"num_train": 10, "encoder": [3, 2], "budget_seconds": 1.0, "seeds": len(finals)}
    runs = [{"method": method, "learning_rate": learning_rate, "seed": seed, "failed": False,
             "steps": 4, "curve": [
                 {"seconds": 0.0, "passes": 0.0, "train_squared_error": 9.0,
                  "train_cross_entropy": 20.0, "test_squared_error": 9.0},
                 {"seconds": 1.0, "passes": 2.0, "train_squared_error": final,
                  "train_cross_entropy": 2 * final, "test_squared_error": final}]}
            for seed, final in enumerate(finals)]
    return {"settings": settings, "runs": runs}


def test_merge_tables_runs_of_several_results_by_method_and_learning_rate(tmp_path):
    paths = []
    for name, results in (("a", _fake_results("hessian_free", 2.0, [5.0, 7.0, 6.0])),
                          ("b", _fake_results("hessian_free", 1.0, [3.0, 1.0, 2.0]))):
        paths.append(str(tmp_path / f"{name}.json"))
        with open(paths[-1], "w") as f:
            json.dump(results, f)
    merged = curves_script.merge(paths, str(tmp_path / "merged"))
    assert set(merged["summary"]) == {"hessian_free@2", "hessian_free@1"}
    assert merged["summary"]["hessian_free@2"]["train_squared_error"] == {
        "median": 6.0, "min": 5.0, "max": 7.0}
    assert merged["summary"]["hessian_free@1"]["train_cross_entropy"]["median"] == 4.0
    table = (tmp_path / "merged" / "table.md").read_text().splitlines()
    assert table[2].startswith("| Hessian-free (GN) | 2 | 6.00 (5.00-7.00) |")
    assert table[3].startswith("| Hessian-free (GN) | 1 | 2.00 (1.00-3.00) |")
    assert (tmp_path / "merged" / "curves.png").stat().st_size > 1000


@pytest.mark.parametrize("changes, message", [
    ({"hf_batch_size": 6000}, "hf_batch_size"),
    ({"curvature_fraction": 1.5}, "curvature_fraction"),
    ({"budget_seconds": 0.0}, "budget_seconds"),
    ({"methods": ("lbfgs",)}, "lbfgs"),
    ({"grids": (("hessian_free", (1.0, -2.0)),)}, "hessian_free_grid"),
])
def test_bad_settings_name_the_value(changes, message):
    with pytest.raises(ValueError, match=message):
        curves_script.Settings(**{"methods": ("hessian_free",), **changes})
