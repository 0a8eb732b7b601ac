"""Installs the keras_diffusion library only.

The paper experiments (`models/`) and their entry points (`scripts/`) stay in the clone: run
them from there (`python scripts/train.py`); they find the clone's root themselves.
The keras / tensorflow ranges are the ones `keras_diffusion/compat.py` was tested against
(`TESTED_KERAS`, `TESTED_TENSORFLOW`); `tests/test_packaging.py` checks that both agree.
"""
from setuptools import find_packages, setup

setup(
    name="keras_diffusion",
    version="0.1.0",
    description=(
        "Training hard-to-train networks in Keras by diffusion/continuation and by curvature "
        "(Gauss-Newton, Hessian-free, Saddle-Free Newton)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_diffusion", "keras_diffusion.*"]),
    # The bundled corpus of the char_corpus data set (keras_diffusion/datasets/data).
    package_data={"keras_diffusion.datasets": ["data/*.txt", "data/*.md"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10,<3.16",
        "numpy",
        "absl-py",
        "matplotlib",
        # keras_diffusion.datasets: TFDS builders (importlib_resources: TFDS needs it to
        # prepare a data set but does not declare it), scikit-learn digits, MNIST-1D.
        "tensorflow-datasets>=4.9",
        "importlib_resources",
        "scikit-learn",
        "mnist1d",
        # scripts/train.py writes TensorBoard logs; the package reads them back in tests.
        "tensorboard",
    ],
    extras_require={
        # setuptools and wheel: tests/test_packaging.py builds the wheel without isolation.
        "tests": ["pytest", "pytest-xdist", "scipy", "jax", "setuptools", "wheel"],
        "benchmarks": ["jax"],
    },
)
