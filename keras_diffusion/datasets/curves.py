"""CURVES-like images: 28 x 28 pictures of smooth curves through random control points.

Hinton & Salakhutdinov (2006, Science, "Reducing the dimensionality of data with neural
networks") built the CURVES data set for their deep autoencoder from curves drawn through
three random points in the plane, rendered as 28 x 28 grey images (20,000 training and
10,000 test images); Martens (2010, "Deep learning via Hessian-free optimization", sec. 6)
trains the 784-400-200-100-50-25-6 autoencoder on it. The original images are not
redistributed offline, so this module generates images of the same kind:

* three control points ``p0, p1, p2`` uniform in ``[margin, size - 1 - margin]^2`` (pixel
  coordinates, ``margin = 2``);
* the curve is the parametric parabola through them, ``c(t) = (1-t)(1-2t) p0 + 4t(1-t) p1 +
  t(2t-1) p2`` for ``t in [0, 1]`` (Lagrange interpolation at ``t = 0, 1/2, 1``: it passes
  through the three points);
* pixel ``q`` gets the intensity ``max_t exp(-|q - c(t)|^2 / (2 w^2))`` (``w = 0.7`` pixels,
  ``samples`` points along the curve): a smooth, anti-aliased stroke with values in
  ``[0, 1]``, 1 on the curve.

Example:

>>> images = curve_images(4, np.random.default_rng(0))
>>> images.shape, images.dtype
((4, 28, 28), dtype('float32'))
"""

import numpy as np

from keras_diffusion import validation

IMAGE_SIZE = 28
MARGIN = 2.0
STROKE_WIDTH = 0.7


def curve_points(control, samples=64):
    """Points ``(n, samples, 2)`` of the parabolas through the control points ``(n, 3, 2)``."""
    t = np.linspace(0.0, 1.0, samples)[None, :, None]
    p0, p1, p2 = (control[:, None, k] for k in range(3))
    return (1 - t) * (1 - 2 * t) * p0 + 4 * t * (1 - t) * p1 + t * (2 * t - 1) * p2


def curve_images(n, rng, size=IMAGE_SIZE, samples=64, chunk=256):
    """``n`` curve images as float32 ``(n, size, size)`` in ``[0, 1]``, drawn from ``rng``.

    Args:
        n: number of images, >= 1.
        rng: a ``numpy.random.Generator``; the same generator state gives the same images.
        size: image height and width in pixels, >= 8.
        samples: points sampled along each curve.
        chunk: images rendered per vectorized block (memory ``chunk * samples * size^2``).
    """
    validation.positive_int("n", n)
    validation.integer("size", size, minimum=8)
    validation.integer("samples", samples, minimum=3)
    control = rng.uniform(MARGIN, size - 1 - MARGIN, size=(n, 3, 2))
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    grid = np.stack([rows, cols], axis=-1).reshape(1, 1, size * size, 2).astype(np.float32)
    images = np.empty((n, size * size), dtype=np.float32)
    for start in range(0, n, chunk):
        points = curve_points(control[start : start + chunk], samples).astype(np.float32)
        squared = np.sum((points[:, :, None, :] - grid) ** 2, axis=-1)  # (c, samples, pixels)
        images[start : start + chunk] = np.exp(-squared.min(axis=1) / (2 * STROKE_WIDTH**2))
    return images.reshape(n, size, size)
