"""Test configuration: quiet TensorFlow and two logical CPU devices for distribution tests.

The logical devices must be configured before TensorFlow initializes its runtime, so this
runs at import time, before any test module imports TensorFlow ops.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)
