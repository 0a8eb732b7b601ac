"""``CurvatureMonitor``: extreme eigenvalues and trace of the Hessian / Gauss-Newton matrix.

Pascanu (2014, thesis), Sec. 4.1 and 4.3: the curvature of the training loss (its largest
eigenvalue, whether negative directions exist, its scale) explains why first-order training
stalls and what damping a second-order method needs. This callback measures it during
``model.fit`` on a fixed batch, at the end of every ``every``-th epoch, with Lanczos (extreme
eigenvalues) and Hutchinson's estimator (trace) from ``keras_diffusion.curvature.spectra``,
and writes the numbers into the epoch's ``logs``: they reach ``History`` and, if this
callback is listed BEFORE ``keras.callbacks.TensorBoard``, TensorBoard.

Saddle points (sec. 4.4-4.5, Figure 4.5 c, d): ``hessian_max`` is the largest positive
eigenvalue and ``hessian_most_negative`` the most negative one (0 when none is found): a
training run that stalls with a clearly negative ``hessian_most_negative`` sits near a
saddle point, not a minimum.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_diffusion import validation
from keras_diffusion.curvature import linear_operator, spectra
from keras_diffusion.training.closure import Closure

MATRICES = ("hessian", "ggn")


class CurvatureMonitor(keras.callbacks.Callback):
    """Logs ``{prefix}{matrix}_max``, ``_min``, ``_trace`` and ``{prefix}hessian_most_negative``.

    ``_max``/``_min`` are the largest and smallest (most negative) Ritz values of
    ``lanczos_num_steps`` Lanczos steps (exact eigenvalues when ``lanczos_num_steps`` is the
    number of weights); ``_trace`` is Hutchinson's estimate with ``hutchinson_probes`` Rademacher probes.
    For the Hessian, ``hessian_most_negative`` is ``min(hessian_min, 0)``: the most negative
    eigenvalue of Pascanu (2014, thesis) Figure 4.5 (d), 0 when the Hessian has no negative
    Ritz value (Figure 4.5 (c) is ``hessian_max``). The extreme Ritz values converge first
    (Lanczos is more accurate than the power method of the thesis for the same number of
    Hessian-vector products).
    The matrices are those of the total training loss (compiled loss, ``add_loss`` terms and
    regularizers; ``"ggn"`` omits ``add_loss`` terms, see ``Closure.ggn_vp``) on the batch,
    evaluated as in training (``training=True``), at the weights at the end of the epoch.
    Works for any compiled Keras model (it does not need ``keras_diffusion.Model``).

    Args:
        data: the batch: a tuple ``(x, y)`` or ``(x, y, sample_weight)``, or a
            ``tf.data.Dataset`` whose first element is used.
        every: measure at the end of epochs ``every - 1, 2 * every - 1, ...``.
        matrices: a subset of ``("hessian", "ggn")``.
        lanczos_num_steps: Lanczos steps (capped at the number of weights).
        hutchinson_probes: probes of the trace estimate (>= 2); 0 skips the trace.
        seed: integer seed of the Lanczos start vector and the probes.
        prefix: prefix of the log keys.

    Example:
    ```python
    monitor = CurvatureMonitor((x[:256], y[:256]), every=5)
    history = model.fit(x, y, epochs=20, callbacks=[monitor, keras.callbacks.TensorBoard(d)])
    history.history["curvature/hessian_max"]
    ```
    """

    def __init__(
        self,
        data,
        every=1,
        matrices=("hessian",),
        lanczos_num_steps=20,
        hutchinson_probes=10,
        seed=0,
        prefix="curvature/",
    ):
        super().__init__()
        every = validation.positive_int(
            "every", every, "Use every=1 to measure after every epoch."
        )
        matrices = (matrices,) if isinstance(matrices, str) else tuple(matrices)
        if not matrices:
            raise ValueError(
                f"matrices must be a non-empty subset of {MATRICES}, got (); e.g. "
                "matrices=(\"hessian\", \"ggn\")."
            )
        for matrix in matrices:
            validation.one_of("matrices entry", matrix, MATRICES)
        lanczos_num_steps = validation.positive_int(
            "lanczos_num_steps", lanczos_num_steps, "e.g. 20."
        )
        hutchinson_probes = validation.integer(
            "hutchinson_probes", hutchinson_probes, hint="Pass 0 (no trace) or e.g. 10."
        )
        if hutchinson_probes == 1:
            raise ValueError(
                "`hutchinson_probes` must be 0 (no trace) or >= 2, got 1: the estimate's "
                "standard error needs two probes."
            )
        if isinstance(data, tf.data.Dataset):
            data = next(iter(data))
        if not isinstance(data, (tuple, list)) or not 1 <= len(data) <= 3:
            raise ValueError(
                "data must be (x, y), (x, y, sample_weight) or a tf.data.Dataset of such "
                f"tuples; got {type(data).__name__}. Pass e.g. (x[:256], y[:256])."
            )
        self.data = tuple(data)
        self.every = every
        self.matrices = matrices
        self.lanczos_num_steps = lanczos_num_steps
        self.hutchinson_probes = hutchinson_probes
        self.seed = seed
        self.prefix = prefix
        self._measure_fn = None

    def _measure(self):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(self.data)
        closure = Closure(self.model, x, y, sample_weight)
        size = sum(int(np.prod(p.shape)) for p in closure.params)
        steps = min(self.lanczos_num_steps, size)
        v0 = linear_operator.random_normal_like(closure.params, seed=(self.seed, 1))
        results = {}
        for name in self.matrices:
            matvec = closure.hvp if name == "hessian" else closure.ggn_vp
            ritz = spectra.lanczos(matvec, v0, steps, seed=(self.seed, 2)).ritz_values
            results[f"{self.prefix}{name}_max"] = ritz[-1]
            results[f"{self.prefix}{name}_min"] = ritz[0]
            if name == "hessian":
                results[f"{self.prefix}hessian_most_negative"] = tf.minimum(ritz[0], 0.0)
            if self.hutchinson_probes:
                trace = spectra.hutchinson_trace(
                    matvec, closure.params, self.hutchinson_probes, seed=(self.seed, 3)
                )
                results[f"{self.prefix}{name}_trace"] = trace.trace
        return results

    def measure(self):
        """The curvature numbers at the model's current weights (a dict of floats)."""
        if self._measure_fn is None:
            self._measure_fn = tf.function(self._measure)
        return {k: float(v) for k, v in self._measure_fn().items()}

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        if logs is not None:
            logs.update(self.measure())
