"""models/builders.py: the Figure 6 network's output unit and input-weight initialization."""

import keras
import numpy as np
import pytest
from scipy import special

from models import builders


def test_erf_output_is_the_paper_unit_and_fits_the_halved_target():
    # Eqs. 3-4: prediction erf(W h(m_T) + b). At sigma = 0 the network is the plain RNN, so a
    # numpy forward pass of its weights must give the model's output.
    model = builders.build_adding_rnn("sgd", units=3, output_activation="erf", length=4, seed=2,
                                      input_initializer="lecun_normal")
    x = np.random.default_rng(0).uniform(size=(5, 4, 2)).astype("float32")
    cell, output = model.get_layer("rnn").cell, model.get_layer("output")
    kernel, recurrent, bias = (v.numpy() for v in (cell.kernel, cell.recurrent_kernel, cell.bias))
    m = np.broadcast_to(cell.initial_state.numpy(), (5, 3))
    for t in range(4):
        m = x[:, t] @ kernel + special.erf(m) @ recurrent + bias
    expected = special.erf(special.erf(m) @ output.kernel.numpy() + output.bias.numpy())
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(model(x).numpy()) < 1)
    y = np.array([[0.3], [1.9]])
    np.testing.assert_allclose(builders.halved_target(y), [[0.15], [0.95]])


def test_input_initializer_is_an_argument_and_the_default_is_unchanged():
    def kernel(model):
        return model.get_layer("rnn").cell.kernel.numpy()

    default = kernel(builders.build_adding_rnn("diffusion", length=10, seed=4))
    glorot = keras.initializers.GlorotUniform(seed=4)((2, 10)).numpy()
    np.testing.assert_array_equal(default, glorot)
    lecun = kernel(builders.build_adding_rnn("diffusion", length=10, seed=4,
                                             input_initializer="lecun_normal"))
    np.testing.assert_array_equal(lecun, keras.initializers.LecunNormal(seed=4)((2, 10)).numpy())
    # Variance 1 / fan_in = 1/2 (truncated normal) against 2 / (2 + 10) = 1/6.
    big = [kernel(builders.build_adding_rnn("sgd", length=10, seed=s,
                                            input_initializer=name)).std()
           for s in range(8) for name in builders.INPUT_INITIALIZERS]
    glorot_std, lecun_std = np.mean(big[0::2]), np.mean(big[1::2])
    assert glorot_std == pytest.approx(np.sqrt(1 / 6), rel=0.2)
    assert lecun_std == pytest.approx(np.sqrt(1 / 2), rel=0.2)


def test_bad_input_initializer_names_the_value():
    with pytest.raises(ValueError, match="`input_initializer` must be one of .*got 'he_normal'"):
        builders.build_adding_rnn("sgd", input_initializer="he_normal")
