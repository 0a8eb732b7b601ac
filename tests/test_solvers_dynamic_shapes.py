"""CG and Lanczos on vectors whose static shape is unknown.

Regression: the buffers for CG's saved iterates and for the Lanczos basis were sized from the
vectors' static shapes, so a GaussNewton step on a model with a ``DiffusedRNN`` (whose gradient
reached the solver with an unknown static shape) failed while tracing with "Expected int32, but
got None". The buffers now take the vectors' dynamic shapes.
"""

import numpy as np
import tensorflow as tf

from keras_diffusion.curvature import solvers, spectra

_MATRIX = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]], np.float32)


def _matvec(v):
    return [tf.linalg.matvec(_MATRIX, v[0])]


def test_conjugate_gradient_with_saved_iterates_on_an_unknown_shape():
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def solve(b):
        return solvers.conjugate_gradient(_matvec, [b], max_iterations=3, tol=0.0,
                                          save_iterates=True).x[0]

    b = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(solve(b), np.linalg.solve(_MATRIX, b), rtol=1e-5)


def test_lanczos_on_an_unknown_shape():
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def ritz_values(v0):
        return spectra.lanczos(_matvec, [v0], num_steps=3)[0]

    values = np.sort(ritz_values(np.array([1.0, 1.0, 1.0], np.float32)))
    np.testing.assert_allclose(values, np.linalg.eigvalsh(_MATRIX), rtol=1e-5)
