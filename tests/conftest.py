"""Shared fixtures: quiet TensorFlow logs and a small slice of real MNIST."""

import gzip
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_TRAIN = REPO.parent / "shared" / "data" / "mnist" / "train-images-idx3-ubyte.gz"
NUM_IMAGES = 512


def _read_idx_images(path: pathlib.Path, count: int) -> np.ndarray:
    """The first `count` images of a gzipped IDX file, uint8 [count, 28, 28, 1]."""
    with gzip.open(path, "rb") as f:
        magic, _, rows, cols = np.frombuffer(f.read(16), dtype=">u4")
        assert magic == 2051, f"{path} is not an IDX image file"
        pixels = np.frombuffer(f.read(count * int(rows) * int(cols)), dtype=np.uint8)
    return pixels.reshape(count, int(rows), int(cols), 1)


@pytest.fixture(scope="session")
def mnist_uint8() -> np.ndarray:
    """512 real MNIST training images, uint8 [512, 28, 28, 1].

    Through `infusion_tf.data.load_splits("mnist")` when that works, else read with gzip + numpy from
    ../shared/data, so the model tests do not fail with the data pipeline (tests/test_data.py covers it).
    """
    try:
        from infusion_tf.data import load_splits

        images = np.asarray(load_splits("mnist").train[:NUM_IMAGES])
        if images.dtype != np.uint8 or images.shape != (NUM_IMAGES, 28, 28, 1):
            raise ValueError(f"unexpected MNIST array {images.dtype} {images.shape}")
        return images
    except Exception:  # noqa: BLE001 -- any failure of the other module falls back to the reference reader
        path = MNIST_TRAIN if MNIST_TRAIN.is_file() else REPO / "infusion_tf" / "datasets" / "mnist" / MNIST_TRAIN.name
        return _read_idx_images(path, NUM_IMAGES)


@pytest.fixture(scope="session")
def mnist_images(mnist_uint8) -> np.ndarray:
    """The same images as the model sees them, float32 in (0, 1): (u + 1/2) / 256 (mid-bin dequantization)."""
    return ((mnist_uint8.astype(np.float32) + 0.5) / 256.0).astype(np.float32)
