"""Test configuration: quiet TensorFlow and two logical CPU devices for distribution tests.

The logical devices must be configured before TensorFlow initializes its runtime, so this
runs at import time, before any test module imports TensorFlow ops.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One 2-replica MirroredStrategy for the whole session.

    Collective all-reduce instance keys are counted per strategy; two strategies in one
    process reuse the same keys, and a later all-reduce of another dtype under a reused key
    aborts ("Collective instance 100 expected ... data_type"). Sharing the strategy keeps
    the keys unique, so test order does not matter.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
