"""Static binarization of 8-bit images: each pixel u becomes 1 with probability u / 255, drawn once per image from a
hash of (the image's pixels, the pixel's index, a seed), so an image is binarized the same way wherever it is met
(Vahdat et al. 2018 use the statically binarized MNIST of Salakhutdinov & Murray (2008), which cannot be downloaded
here; docs/dvae.md). Used by the `binarized_mnist` dataset (data.py) and by the DVAE models, which binarize their
inputs the same way, so that binary images pass through unchanged.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["static_binarization", "binarize_uint8"]

_MASK31 = (1 << 31) - 1


def static_binarization(x, seed: int):
    """Binary pixels: 1 where a uniform number drawn from a hash of (image, pixel, seed) is below x.

    x: float [B, *shape] in [0, 1], holding u / 255 for 8-bit u. Returns float32 [B, d] in {0, 1}. The same image
    gives the same binary image in every call (a static binarization); P(pixel = 1) = x up to 2^-31.
    """
    b = tf.shape(x)[0]
    u = tf.cast(tf.round(tf.reshape(tf.cast(x, tf.float32), [b, -1]) * 255.0), tf.int64)  # [B, d]
    d = tf.shape(u)[1]
    index = tf.range(d, dtype=tf.int64)  # [d]
    weights = _mix(index + 1) + 1  # fixed pseudo-random weights < 2^31
    image_hash = tf.reduce_sum(u * weights[None, :], axis=1)  # [B]: sum < 784 * 255 * 2^31 < 2^63
    key = _mix(tf.bitwise.bitwise_xor(_mix(image_hash)[:, None] * 1021, index[None, :]))  # [B, d]
    key = _mix(tf.bitwise.bitwise_xor(key, int(seed) & _MASK31))  # in [0, 2^31)
    uniform = (tf.cast(key, tf.float64) + 0.5) / float(1 << 31)
    return tf.cast(uniform < tf.cast(u, tf.float64) / 255.0, tf.float32)


def _mix(k):
    """A 31-bit integer hash (multiply-xorshift rounds with 31-bit factors, so every product fits in int64)."""
    k = tf.bitwise.bitwise_and(k, _MASK31)
    for factor, shift in ((0x5BD1E995 & _MASK31, 15), (0x27D4EB2F, 13), (0x165667B1, 16)):
        k = tf.bitwise.bitwise_xor(k, tf.bitwise.right_shift(k, tf.constant(shift, tf.int64)))
        k = tf.bitwise.bitwise_and(k * factor, _MASK31)
    return k



def binarize_uint8(images: np.ndarray, seed: int = 0, chunk: int = 10_000) -> np.ndarray:
    """uint8 images [n, ...] -> uint8 [n, ...] in {0, 255}: static_binarization(u / 255) x 255, in chunks."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"binarize_uint8 takes uint8 images, got {images.dtype}")
    out = np.empty_like(images)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        bits = static_binarization(tf.constant(part, tf.float32) / 255.0, seed).numpy()  # [b, d]
        out[start:start + chunk] = (bits * 255).astype(np.uint8).reshape(part.shape)
    return out
