"""Every package optimizer under ``mixed_float16`` and ``mixed_bfloat16`` against float32.

Closure optimizers (Gauss-Newton, Hessian-free, Saddle-Free Newton, Gaussian continuation,
Entropy-SGD, HJ, HEAT) evaluate the loss, gradients and curvature products through a
``Closure``, which runs the layers in float32 under a mixed policy: their steps are the float32
steps (the same float32 operations), so weights and optimizer state agree with the float32
run to float32 rounding (rtol 1e-6). ``AnnealedStep`` is a gradient optimizer: its gradient
comes from the half-precision backward pass (under ``mixed_float16`` through Keras's
``LossScaleOptimizer``), but its step is normalized to the length ``eta * sigma``; the
direction has a relative error of a few units of the policy's rounding ``eps`` (2^-11 for
float16, 2^-8 for bfloat16), so after ``n`` steps the weights differ by at most
``n * eta * sigma * 4 eps``. The logged loss comes from the train step's forward pass in the
policy's precision: a handful of roundings of O(1) numbers, within ``16 eps``.

Overflow. A float16-only overflow (inputs above 65504) poisons the half-precision forward
pass only: closure optimizers still take the float32 step; ``AnnealedStep``'s wrapper skips the
step and halves the loss scale (published as ``loss_scale``), or, without loss scaling, the
package's guard rejects it and counts it in ``rejected_steps``. An overflow in float32 too
(targets of 1e20, whose squared error is inf) is rejected and counted by every optimizer, and
no NaN/inf reaches the weights or the optimizer's state (its published diagnostics may
report the refused step's non-finite values); training then goes on.
"""

import keras
import numpy as np
import pytest
from optimizer_cases import INNER_STEPS, OPTIMIZERS, build_model, compiled, data

from keras_diffusion.optimizers import diagnostics

POLICIES = ("mixed_float16", "mixed_bfloat16")
# Unit roundoff of the policies' compute dtypes.
EPS = {"mixed_float16": 2.0**-11, "mixed_bfloat16": 2.0**-8}
STEP_LENGTH = 0.1 * 0.3  # AnnealedStep: learning rate (eta) times sigma of the model
STEPS = 2  # one outer step of the local-entropy optimizers


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def _state(model, published=True):
    """The optimizer's variables; without the published diagnostics if not ``published``
    (those report the last step, a refused one included: e.g. a non-finite gradient norm)."""
    optimizer = diagnostics.unwrap(model.optimizer)
    logged = {id(v) for v in optimizer.diagnostics.values()}
    return [
        keras.ops.convert_to_numpy(v)
        for v in optimizer.variables
        if published or id(v) not in logged
    ]


def _largest_difference(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


def _assert_same(a, b):
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_mixed_precision_runs_match_float32(name):
    x, y = data()
    initial = _weights(build_model())
    runs = {}
    for policy in ("float32",) + POLICIES:
        model = compiled(name, policy)
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        runs[policy] = (model, history.history)
    reference, reference_logs = runs["float32"]
    moved = _largest_difference(_weights(reference), initial)
    for policy in POLICIES:
        mixed, logs = runs[policy]
        assert mixed.layers[0].compute_dtype == policy.split("_")[1]
        assert all(w.dtype == "float32" for w in mixed.get_weights())
        if name == "annealed_step":
            tolerance = STEPS * STEP_LENGTH * 4 * EPS[policy]
            assert _largest_difference(_weights(mixed), _weights(reference)) <= tolerance
            assert moved > 10 * tolerance
        else:
            _assert_same(_weights(mixed) + _state(mixed), _weights(reference) + _state(reference))
            assert moved > 1e-2
        np.testing.assert_allclose(logs["loss"], reference_logs["loss"], rtol=16 * EPS[policy])
        assert logs["rejected_steps"] == reference_logs["rejected_steps"] == [0.0]
        wrapped = isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
        assert wrapped == (policy == "mixed_float16")
        # Only a gradient optimizer uses (and publishes) the loss scale.
        assert ("loss_scale" in logs) == (wrapped and name == "annealed_step")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_overflow_never_reaches_the_weights(name):
    x, y = data(8)
    mixed, reference = compiled(name, "mixed_float16"), compiled(name)
    initial = _weights(mixed)
    # 1. Inputs above float16's largest value 65504: only the float16 forward pass overflows.
    logs = mixed.train_on_batch(x * 1e5, y, return_dict=True)
    reference.train_on_batch(x * 1e5, y)
    assert not np.isfinite(logs["loss"])
    assert logs["rejected_steps"] == 0.0
    if name == "annealed_step":
        # Keras's LossScaleOptimizer refuses the step and halves its scale (2^15 -> 2^14).
        assert _largest_difference(_weights(mixed), initial) == 0.0
        assert logs["loss_scale"] == 2.0**14
    else:  # the closure computes in float32: the step is the float32 model's step
        _assert_same(_weights(mixed) + _state(mixed), _weights(reference) + _state(reference))
    before = _weights(mixed)
    # 2. Targets of 1e20: the squared error overflows float32 too; the step is refused.
    logs = mixed.train_on_batch(x, np.full_like(y, 1e20), return_dict=True)
    assert not np.isfinite(logs["loss"])
    assert _largest_difference(_weights(mixed), before) == 0.0
    assert all(np.all(np.isfinite(s)) for s in _state(mixed, published=False))
    if name == "annealed_step":
        assert logs["rejected_steps"] == 0.0 and logs["loss_scale"] == 2.0**13
    else:
        assert logs["rejected_steps"] == 1.0
    # 3. Training goes on (the local-entropy optimizers move at their outer step).
    for _ in range(INNER_STEPS):
        logs = mixed.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    assert all(np.all(np.isfinite(w)) for w in _weights(mixed))
    assert _largest_difference(_weights(mixed), before) > 1e-3


@pytest.mark.parametrize(
    "policy, compile_kwargs",
    [("mixed_float16", {"auto_scale_loss": False}), ("mixed_bfloat16", {})],
)
def test_gradient_optimizer_overflow_without_loss_scaling_is_rejected_and_counted(
    policy, compile_kwargs
):
    x, y = data(8)
    model = compiled("annealed_step", policy, **compile_kwargs)
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    initial = _weights(model)
    # float16: inputs above 65504 overflow; bfloat16 has float32's range: overflow the loss.
    batch = (x * 1e5, y) if policy == "mixed_float16" else (x, np.full_like(y, 1e20))
    logs = model.train_on_batch(*batch, return_dict=True)
    assert logs["rejected_steps"] == 1.0 and "loss_scale" not in logs
    assert _largest_difference(_weights(model), initial) == 0.0
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["rejected_steps"] == 1.0
    assert _largest_difference(_weights(model), initial) > 1e-3
