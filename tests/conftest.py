"""Shared fixtures: quiet TensorFlow logs, a small slice of real MNIST, and data beside the checkout.

Every test runs on a fresh clone with nothing beside it: MNIST comes from the files shipped in
infusion_tf/datasets/mnist. The few tests that need data the package does not ship (Fashion-MNIST) carry the
`shared_data` marker, read ../shared/data beside the checkout, and skip when it is absent
(`python -m pytest tests -m shared_data` runs only them).
"""

import gzip
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_TRAIN = REPO / "infusion_tf" / "datasets" / "mnist" / "train-images-idx3-ubyte.gz"  # shipped with the package
SHARED_DATA = REPO.parent / "shared" / "data"  # the project's data folder beside the checkout; absent on a clone
NUM_IMAGES = 512


def pytest_configure(config):
    config.addinivalue_line("markers", "shared_data: needs data the package does not ship, from ../shared/data "
                                       "beside the checkout; skipped when that folder is absent")


def shared_data_dir(name: str) -> pathlib.Path:
    """../shared/data/<name> beside the checkout; skips the calling test when it is absent."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"{name} is not shipped with the package and ../shared/data/{name} is not beside the checkout")
    return folder


@pytest.fixture
def fashion_mnist_dir() -> pathlib.Path:
    """The Fashion-MNIST IDX files in ../shared/data/fashion_mnist; the test is skipped without them."""
    return shared_data_dir("fashion_mnist")


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

    Through `infusion_tf.data.load_splits("mnist")` when that works, else read with gzip + numpy from the
    same shipped file, so the model tests do not fail with the data pipeline (tests/test_data.py covers it).
    """
    try:
        from infusion_tf.data import load_splits

        images = np.asarray(load_splits("mnist").train[:NUM_IMAGES])
        if images.dtype != np.uint8 or images.shape != (NUM_IMAGES, 28, 28, 1):
            raise ValueError(f"unexpected MNIST array {images.dtype} {images.shape}")
        return images
    except Exception:  # noqa: BLE001 -- any failure of the other module falls back to the reference reader
        return _read_idx_images(MNIST_TRAIN, NUM_IMAGES)


@pytest.fixture(scope="session")
def mnist_images(mnist_uint8) -> np.ndarray:
    """The same images as the model sees them, float32 in (0, 1): (u + 1/2) / 256 (mid-bin dequantization)."""
    return ((mnist_uint8.astype(np.float32) + 0.5) / 256.0).astype(np.float32)
