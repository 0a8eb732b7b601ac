"""Callbacks: sigma schedules (Mobahi 2016, Algorithm 1) and exact resume of ``fit``.

* ``schedules``: :class:`StagedSigma`, :class:`GeometricSigma`, :class:`PolynomialSigma`,
  :class:`LinearSigma` and their base :class:`SigmaSchedule`.
* ``backup``: :class:`BackupAndRestore`, which continues an interrupted ``fit`` at the batch
  after its last backup.
* ``state``: :class:`StatefulCallback`, the protocol by which a callback's Python state goes
  into that backup.
"""

from keras_diffusion.callbacks.backup import BackupAndRestore
from keras_diffusion.callbacks.schedules import (
    UNITS,
    GeometricSigma,
    LinearSigma,
    PolynomialSigma,
    SigmaSchedule,
    StagedSigma,
)
from keras_diffusion.callbacks.state import StatefulCallback

__all__ = [
    "UNITS",
    "BackupAndRestore",
    "GeometricSigma",
    "LinearSigma",
    "PolynomialSigma",
    "SigmaSchedule",
    "StagedSigma",
    "StatefulCallback",
]
