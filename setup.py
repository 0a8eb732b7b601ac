"""Installs keras_diffusion, the paper experiments (`models`) and the entry points (`scripts`)."""
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
    packages=find_packages(include=["keras_diffusion", "keras_diffusion.*", "models", "models.*", "scripts"]),
    package_data={"models": ["data/*"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10",
        "numpy",
        "absl-py",
        "matplotlib",
    ],
    extras_require={
        "tests": ["pytest", "pytest-xdist", "scipy", "jax"],
        "benchmarks": ["jax"],
    },
)
