"""Tests for infusion_tf.data: IDX reading, splits, TFDS path, toy densities, statistics, pipelines."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from infusion_tf import data

MNIST_DIR = Path(data.__file__).resolve().parent / "datasets" / "mnist"
# Label counts by digit of the published MNIST files (the ones shipped in infusion_tf/datasets/mnist).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_IMAGES_MD5 = "f68b3c2dcbeaaa9fbdd348bbdeb94873"


@pytest.fixture(scope="module")
def mnist_train_file() -> np.ndarray:
    return data.read_idx(str(MNIST_DIR / "train-images-idx3-ubyte.gz"), TRAIN_IMAGES_MD5)


@pytest.fixture(scope="module")
def mnist() -> data.Splits:
    return data.load_splits("mnist")


def idx_bytes(magic: int, dims: tuple[int, ...], payload: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + bytes(range(256)) * (payload // 256) + bytes(payload % 256)


# ---------------------------------------------------------------------------------------------- read_idx


def test_read_idx_bundled_images(mnist_train_file):
    assert mnist_train_file.shape == (60_000, 28, 28) and mnist_train_file.dtype == np.uint8
    test = data.read_idx(str(MNIST_DIR / "t10k-images-idx3-ubyte.gz"), "9fb629c4189551a2d022fa330f9573f3")
    assert test.shape == (10_000, 28, 28)
    assert mnist_train_file.max() == 255 and mnist_train_file.min() == 0


@pytest.mark.parametrize("stem, counts", [("train", MNIST_TRAIN_COUNTS), ("t10k", MNIST_TEST_COUNTS)])
def test_read_idx_bundled_labels_match_readme(stem, counts):
    labels = data.read_idx(str(MNIST_DIR / f"{stem}-labels-idx1-ubyte.gz"))
    assert labels.dtype == np.uint8 and labels.shape == (sum(counts),)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), counts)


def test_read_idx_raw_file_equals_gzip(tmp_path):
    raw = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "labels").write_bytes(raw)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / "labels")),
                                  data.read_idx(str(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")))


def test_read_idx_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        data.read_idx(str(tmp_path / "nothing-here.gz"))


def test_read_idx_wrong_md5_names_both(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(2049, (3,), 3))
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=f"expected {'0' * 32}, got {actual}"):
        data.read_idx(str(path), "0" * 32)
    assert data.read_idx(str(path), actual).tolist() == [0, 0, 0]


@pytest.mark.parametrize("content, message", [
    (idx_bytes(2050, (2, 2, 2), 8), "magic number 2050"),
    (idx_bytes(2051, (2, 3, 3), 17), "truncated payload.*18 bytes.*17"),
    (idx_bytes(2051, (2, 3, 3), 19), "overlong payload.*18 bytes.*19"),
    (idx_bytes(2049, (0,), 0), "zero dimension"),
    (idx_bytes(2051, (2,), 0), "truncated header"),
    (b"\x00\x00", "too short"),
    (gzip.compress(idx_bytes(2049, (500,), 500))[:30], "corrupt gzip"),
    (b"\x1f\x8b" + b"not gzip at all", "corrupt gzip"),
])
def test_read_idx_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        data.read_idx(str(path))
    assert str(path) in str(info.value)


def test_read_idx_absurd_dimensions_fail_before_allocating(tmp_path):
    path = tmp_path / "huge"
    path.write_bytes(idx_bytes(2051, (2**32 - 1, 2**32 - 1, 2**32 - 1), 10))
    with pytest.raises(ValueError, match="truncated payload"):
        data.read_idx(str(path))


# ------------------------------------------------------------------------------------------- IDX splits


def test_load_idx_splits_mnist(mnist, mnist_train_file):
    assert (len(mnist.train), len(mnist.validation), len(mnist.test)) == (50_000, 10_000, 10_000)
    assert mnist.example_shape == (28, 28, 1) and mnist.train.dtype == np.uint8
    np.testing.assert_array_equal(mnist.validation[..., 0], mnist_train_file[-10_000:])
    np.testing.assert_array_equal(mnist.train[..., 0], mnist_train_file[:50_000])


def test_load_idx_splits_validation_size():
    splits = data.load_idx_splits("mnist", validation_examples=1_000)
    assert (len(splits.train), len(splits.validation)) == (59_000, 1_000)
    for bad in (0, 60_000, 2.5):
        with pytest.raises(ValueError, match="validation_examples"):
            data.load_idx_splits("mnist", validation_examples=bad)


@pytest.mark.shared_data
def test_load_idx_splits_fashion_mnist_from_data_dir(fashion_mnist_dir):
    splits = data.load_splits("fashion_mnist", data_dir=str(fashion_mnist_dir))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (50_000, 10_000, 10_000)
    assert splits.example_shape == (28, 28, 1) and splits.name == "fashion_mnist"


def test_fashion_mnist_without_data_dir_asks_for_it():
    with pytest.raises(ValueError, match="data_dir"):
        data.load_idx_splits("fashion_mnist")


def test_load_idx_splits_missing_folder_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        data.load_idx_splits("mnist", data_dir=str(tmp_path / "no-such-folder"))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes((MNIST_DIR / "train-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        data.load_idx_splits("mnist", data_dir=str(tmp_path))


def test_load_idx_splits_rejects_labels_as_images(tmp_path):
    for stem in ("train", "t10k"):
        labels = (MNIST_DIR / f"{stem}-labels-idx1-ubyte.gz").read_bytes()
        (tmp_path / f"{stem}-images-idx3-ubyte.gz").write_bytes(labels)
    with pytest.raises(ValueError, match="expected IDX images"):
        data.load_idx_splits("mnist", data_dir=str(tmp_path))


@pytest.mark.parametrize("name", ["", "   ", None])
def test_load_splits_blank_name(name):
    with pytest.raises(ValueError, match="non-empty"):
        data.load_splits(name)


def test_splits_checks_consistency():
    with pytest.raises(ValueError, match="example shape"):
        data.Splits("x", np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32))


# ------------------------------------------------------------------------------------------------- TFDS


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)),
                                         ("cifar10", (32, 32, 3))])
def test_load_tfds_splits_with_mock_data(name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=60):
        splits = data.load_tfds_splits(name)
    assert splits.example_shape == shape and splits.train.dtype == np.uint8
    # 60 mock training examples: validation is capped at a sixth of them.
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (50, 10, 60)


def test_fashion_mnist_trains_through_tfds_without_a_data_dir(tmp_path):
    """The path of a user with internet: the fashion_mnist preset without --data-dir reads TFDS (mocked here) and
    records it as the run's data source."""
    import dataclasses
    import json

    from infusion_tf import training
    from infusion_tf.config import PRESETS

    tfds = pytest.importorskip("tensorflow_datasets")
    config = dataclasses.replace(PRESETS["fashion_mnist"], width=16, depth=1, num_steps=2, sampling_steps=2,
                                 batch_size=20, epochs=1, precision="float32")
    with tfds.testing.mock_data(num_examples=60):
        training.train(config, str(tmp_path / "run"), verbose=0, export=False)
    source = json.loads((tmp_path / "run" / "data_source.json").read_text())
    assert source["dataset"] == "fashion_mnist" and source["kind"] == "tfds"
    assert (tmp_path / "run" / "checkpoints" / "last.weights.h5").is_file()


def test_load_splits_dispatches_other_names_to_tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=30):
        splits = data.load_splits("cifar10", validation_examples=3)
    assert splits.train.shape == (27, 32, 32, 3) and splits.validation.shape == (3, 32, 32, 3)


def test_unknown_dataset_name_is_named():
    with pytest.raises(ValueError, match="no_such_dataset_xyz"):
        data.load_splits("no_such_dataset_xyz")


def test_tfds_download_failure_is_data_unavailable(monkeypatch, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    def load(*args, download=True, **kwargs):
        if not download:
            raise AssertionError("Dataset cifar10: could not find data")  # as TFDS says: not prepared
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds, "load", load)
    monkeypatch.setattr(data, "_connection_problem", lambda builder: None)  # the connection check passes
    with pytest.raises(data.DataUnavailableError, match="download or preparation failed.*--data-dir"):
        data.load_tfds_splits("cifar10", data_dir=str(tmp_path))


def test_tfds_dataset_not_prepared_offline_fails_within_seconds(monkeypatch, tmp_path):
    """No connection: one line that says the data could not be fetched and how to point --data-dir at them."""
    pytest.importorskip("tensorflow_datasets")
    calls = []

    def unreachable(address, timeout):
        calls.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(data.socket, "create_connection", unreachable)
    with pytest.raises(data.DataUnavailableError) as error:
        data.load_splits("cifar10", data_dir=str(tmp_path))  # an empty TFDS data folder
    message = str(error.value)
    for words in ("'cifar10'", str(tmp_path), "could not be fetched", "www.cs.toronto.edu", "--data-dir",
                  "TFDS data folder"):
        assert words in message, (words, message)
    assert "\n" not in message and isinstance(error.value, OSError)  # the commands' one error line
    assert calls and calls[0][0] == ("www.cs.toronto.edu", 443) and calls[0][1] <= 10


def test_fashion_mnist_without_local_files_comes_from_tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=60):
        splits = data.load_splits("fashion_mnist")
    assert splits.name == "fashion_mnist" and splits.example_shape == (28, 28, 1)


def test_idx_or_tfds_folder_for_the_image_datasets(tmp_path):
    assert data._reads_idx("mnist", None) and not data._reads_idx("fashion_mnist", None)
    assert data._reads_idx("fashion_mnist", str(tmp_path))  # a folder without a TFDS layout: its IDX files
    (tmp_path / "fashion_mnist" / "3.0.1").mkdir(parents=True)
    assert not data._reads_idx("fashion_mnist", str(tmp_path))  # a TFDS data folder
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    assert data._reads_idx("fashion_mnist", str(tmp_path))  # IDX files win


def test_not_bundled_idx_dataset_names_the_flag():
    with pytest.raises(ValueError, match=r"data_dir=.*\(--data-dir on the command line\)"):
        data.load_idx_splits("fashion_mnist")


# ---------------------------------------------------------------------------------------------- toy data


def assert_within(estimate: float, target: float, standard_error: float, z: float = 4.0) -> None:
    assert abs(estimate - target) <= z * standard_error, (estimate, target, standard_error)


def assert_moments(x: np.ndarray, mean: float, variance: float) -> None:
    """Sample mean and variance of x against exact values, within 4 standard errors."""
    n, centred = len(x), x - x.mean()
    assert_within(x.mean(), mean, np.sqrt(variance / n))
    assert_within(centred.var(), variance, np.sqrt((np.mean(centred**4) - centred.var() ** 2) / n))


@pytest.mark.parametrize("name", data.TOY_DATASETS)
def test_toy_samples_in_unit_square_and_reproducible(name):
    x = data.toy_samples(name, 20_000, seed=3)
    assert x.dtype == np.float32 and x.shape == (20_000, 2)
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(x, data.toy_samples(name, 20_000, seed=3))
    assert not np.array_equal(x, data.toy_samples(name, 20_000, seed=4))
    np.testing.assert_allclose(data.toy_to_raw(name, [[0.05, 0.05], [0.95, 0.95]]),
                               np.stack(data._TOY_BOXES[name]), rtol=1e-12, atol=1e-12)


def test_banana_samples_match_exact_moments_and_entropy():
    raw = data.toy_to_raw("banana", data.toy_samples("banana", 40_000, seed=0))
    x1, x2 = raw[:, 0], raw[:, 1]
    assert_moments(x2, 0.0, 4.0)  # x2 ~ N(0, 4)
    assert_moments(x1, 1.0, 3.0)  # E[x2^2 / 4] = 1, Var = Var(x2^2) / 16 + 1 = 32 / 16 + 1
    log_p = data.banana_log_density(raw)
    entropy = np.log(2 * np.pi * np.e) + 0.5 * np.log(4.0)  # H(x2) + H(x1 | x2)
    assert_within(log_p.mean(), -entropy, log_p.std() / np.sqrt(len(log_p)))


def test_mixture_samples_match_modes_and_entropy():
    raw = data.toy_to_raw("mixture_of_gaussians", data.toy_samples("mixture_of_gaussians", 40_000, seed=0))
    n = len(raw)
    for column in raw.T:
        assert_moments(column, 0.0, 0.5 + 0.01)  # E[cos^2] over 8 equal angles = 1/2, plus 0.1^2
    angles = np.round(np.arctan2(raw[:, 1], raw[:, 0]) / (2 * np.pi / 8)).astype(int) % 8
    for count in np.bincount(angles, minlength=8):
        assert_within(count, n / 8, np.sqrt(n * (1 / 8) * (7 / 8)))
    grid = np.linspace(-1.8, 1.8, 901)  # reference E[log p] by quadrature
    points = np.stack(np.meshgrid(grid, grid), axis=-1)
    log_grid = data.mixture_of_gaussians_log_density(points)
    expected = np.sum(np.exp(log_grid) * log_grid) * (grid[1] - grid[0]) ** 2
    log_p = data.mixture_of_gaussians_log_density(raw)
    assert_within(log_p.mean(), expected, log_p.std() / np.sqrt(n))


@pytest.mark.parametrize("name, box", [("mixture_of_gaussians", ((-2, 2), (-2, 2))),
                                       ("banana", ((-8, 45), (-14, 14)))])
def test_toy_log_densities_are_normalised(name, box):
    (a, b), (c, d) = box
    x1, x2 = np.meshgrid(np.linspace(a, b, 1201), np.linspace(c, d, 1201))
    log_density = {"banana": data.banana_log_density,
                   "mixture_of_gaussians": data.mixture_of_gaussians_log_density}[name]
    area = (x1[0, 1] - x1[0, 0]) * (x2[1, 0] - x2[0, 0])
    assert np.sum(np.exp(log_density(np.stack([x1, x2], axis=-1)))) * area == pytest.approx(1.0, abs=1e-4)


def test_load_splits_toy_uses_independent_seeds():
    splits = data.load_splits("banana", validation_examples=5_000, seed=7)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (50_000, 5_000, 10_000)
    assert splits.example_shape == (2,) and splits.train.dtype == np.float32
    assert not np.array_equal(splits.validation, splits.test[:5_000])
    np.testing.assert_array_equal(splits.train, data.load_splits("banana", validation_examples=5_000, seed=7).train)
    with pytest.raises(ValueError, match="seed"):
        data.load_splits("banana", seed=-1)


@pytest.mark.parametrize("draw", [lambda: data._toy_raw_samples("bananas", 10, np.random.default_rng(0)),
                                  lambda: data.toy_samples("bananas", 10, seed=0),
                                  lambda: data.toy_to_raw("bananas", np.zeros((1, 2)))])
def test_unknown_toy_dataset_raises_rather_than_drawing_bananas(draw):
    with pytest.raises(ValueError, match="unknown toy dataset 'bananas'.*mixture_of_gaussians"):
        draw()


# ------------------------------------------------------------------------------- statistics and scaling


def test_pixel_statistics_closed_form_matches_monte_carlo(mnist):
    pixels = mnist.train[:500]
    mean, variance = data.pixel_statistics(pixels, dequantize=True)
    assert mean.shape == (28, 28, 1) and mean.dtype == np.float64
    replicas = 40  # x = (u + U[0, 1)) / 256, 20000 draws per pixel
    rng = np.random.default_rng(0)
    x = (np.tile(pixels, (replicas, 1, 1, 1)) + rng.random((replicas * 500, 28, 28, 1))) / 256
    n, centred = len(x), x - x.mean(axis=0)
    assert np.all(np.abs(x.mean(axis=0) - mean) <= 5 * np.sqrt(variance / n))
    sample_variance = centred.var(axis=0)
    variance_se = np.sqrt((np.mean(centred**4, axis=0) - sample_variance**2) / n)
    assert np.all(np.abs(sample_variance - variance) <= 5 * variance_se)
    always_black = pixels.max(axis=0) == 0  # variance is the dequantization noise alone there
    np.testing.assert_allclose(variance[always_black], 1 / (12 * 256**2), rtol=1e-12)


def test_pixel_statistics_without_dequantization_and_floats(mnist):
    pixels = mnist.validation[:3_000]  # more than one chunk
    mean, variance = data.pixel_statistics(pixels, dequantize=False)
    np.testing.assert_allclose(mean, (pixels / 255).mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(variance, (pixels / 255).var(axis=0), rtol=1e-10, atol=1e-15)
    points = data.toy_samples("banana", 5_000, seed=1)
    mean, variance = data.pixel_statistics(points, dequantize=True)
    np.testing.assert_allclose(mean, points.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(variance, points.astype(np.float64).var(axis=0), rtol=1e-10)
    with pytest.raises(ValueError, match="int32"):
        data.pixel_statistics(np.zeros((4, 3), np.int32), dequantize=False)


def test_to_unit_interval_dequantizes_within_each_bin():
    pixels = np.tile(np.arange(256, dtype=np.uint8), 16_384).reshape(-1, 256)  # 4M pixels, 16k of each value
    x = data.to_unit_interval(pixels, True, tf.constant([1, 2])).numpy()
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() < 1.0
    np.testing.assert_array_equal(np.floor(x.astype(np.float64) * 256), pixels)
    fraction = x.astype(np.float64) * 256 - pixels  # U[0, 1)
    assert_within(fraction.mean(), 0.5, np.sqrt(1 / 12 / fraction.size))
    np.testing.assert_array_equal(x, data.to_unit_interval(pixels, True, tf.constant([1, 2])).numpy())
    assert not np.array_equal(x, data.to_unit_interval(pixels, True, tf.constant([1, 3])).numpy())


def test_to_unit_interval_plain_and_errors():
    pixels = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_allclose(data.to_unit_interval(pixels, False, None).numpy(), pixels / 255, rtol=1e-6)
    points = np.array([[0.25, 0.75]], np.float64)
    assert data.to_unit_interval(points, True, None).dtype == tf.float32
    with pytest.raises(ValueError, match="seed"):
        data.to_unit_interval(pixels, True, None)
    with pytest.raises(ValueError, match="int32"):
        data.to_unit_interval(np.zeros((1, 2), np.int32), False, None)


# ------------------------------------------------------------------------------------------- pipelines


def batch_indices(dataset: tf.data.Dataset) -> list[np.ndarray]:
    """Example ids of each batch: the pixel value u = floor(256 x) of arange data."""
    return [np.floor(batch.numpy()[:, 0].astype(np.float64) * 256).astype(int) for batch in dataset]


def test_train_dataset_epochs_are_permutations_and_resumable():
    ids = np.arange(100, dtype=np.uint8)[:, None]  # [100, 1]
    full, steps = data.make_train_dataset(ids, 16, seed=5, dequantize=True, epochs=2)
    assert steps == 6 and full.cardinality().numpy() == 12
    assert full.element_spec.shape == (16, 1) and full.element_spec.dtype == tf.float32
    batches = list(full)
    order = batch_indices(batches)
    epoch0, epoch1 = np.concatenate(order[:6]), np.concatenate(order[6:])
    for epoch in (epoch0, epoch1):  # 96 distinct ids per epoch, the remainder dropped
        assert len(np.unique(epoch)) == 96 and epoch.max() < 100
    assert not np.array_equal(epoch0, epoch1)
    resumed, _ = data.make_train_dataset(ids, 16, seed=5, dequantize=True, initial_epoch=1, epochs=2)
    resumed_batches = list(resumed)
    assert len(resumed_batches) == 6
    for expected, got in zip(batches[6:], resumed_batches):
        np.testing.assert_array_equal(expected.numpy(), got.numpy())
    other, _ = data.make_train_dataset(ids, 16, seed=6, dequantize=True, epochs=1)
    assert not np.array_equal(np.concatenate(batch_indices(other)), epoch0)


def test_train_dataset_on_mnist_and_toy_data(mnist):
    dataset, steps = data.make_train_dataset(mnist.test, 256, seed=0, dequantize=False)
    assert steps == 39
    batch = next(iter(dataset)).numpy()
    assert batch.shape == (256, 28, 28, 1) and batch.max() <= 1.0
    points = data.toy_samples("mixture_of_gaussians", 1_000, seed=0)
    dataset, steps = data.make_train_dataset(points, 100, seed=0, dequantize=True)
    got = np.concatenate([b.numpy() for b in dataset])
    np.testing.assert_array_equal(np.sort(got[:, 0]), np.sort(points[:, 0]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=True), "batch_size"),
    (dict(batch_size=11), "10 examples, fewer than batch_size=11"), (dict(seed=-1), "seed"),
    (dict(epochs=0), "epochs"), (dict(initial_epoch=2, epochs=2), "initial_epoch"),
])
def test_train_dataset_rejects_bad_arguments(kwargs, message):
    arguments = dict(batch_size=4, seed=0, dequantize=False) | kwargs
    with pytest.raises(ValueError, match=message):
        data.make_train_dataset(np.zeros((10, 2), np.uint8), **arguments)


def test_eval_dataset_in_order_with_partial_batch():
    ids = np.arange(50, dtype=np.uint8)[:, None]
    plain = [b.numpy() for b in data.make_eval_dataset(ids, 16, seed=0, dequantize=False)]
    assert [len(b) for b in plain] == [16, 16, 16, 2]
    np.testing.assert_allclose(np.concatenate(plain), ids / 255, rtol=1e-6)
    noisy = data.make_eval_dataset(ids, 16, seed=3, dequantize=True)
    first, again = list(noisy), list(data.make_eval_dataset(ids, 16, seed=3, dequantize=True))
    np.testing.assert_array_equal(np.concatenate(batch_indices(first)), np.arange(50))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="batch_size"):
        data.make_eval_dataset(ids, 0, seed=0, dequantize=False)


def test_eval_points_are_the_eval_dataset_in_one_array():
    """What estimators, figures and export checks evaluate: make_eval_dataset's batches of 1000, concatenated; the
    first rows do not depend on how many follow (the noise of batch b is seeded by (seed, b))."""
    pixels = np.random.default_rng(0).integers(0, 256, (2100, 3, 3, 1), dtype=np.uint8)
    points = data.eval_points(pixels, seed=5, dequantize=True)
    batches = [b.numpy() for b in data.make_eval_dataset(pixels, 1000, seed=5, dequantize=True)]
    assert points.dtype == np.float32 and points.shape == (2100, 3, 3, 1)
    np.testing.assert_array_equal(points, np.concatenate(batches))
    np.testing.assert_array_equal(data.eval_points(pixels[:10], seed=5, dequantize=True), points[:10])
    np.testing.assert_array_equal(np.floor(points * 256), pixels)  # each value inside its own bin
    np.testing.assert_allclose(data.eval_points(pixels, seed=5, dequantize=False), pixels / 255, rtol=1e-6)


def test_read_idx_in_finds_gzip_or_raw_and_checks_the_kind(tmp_path):
    labels = MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(labels.read_bytes()))  # uncompressed
    read = data.read_idx_in(tmp_path, "t10k-labels-idx1-ubyte", kind="labels")
    np.testing.assert_array_equal(read, data.read_idx(str(labels)))
    with pytest.raises(ValueError, match="expected IDX images .magic 2051., found labels"):
        data.read_idx_in(tmp_path, "t10k-labels-idx1-ubyte", kind="images")
    with pytest.raises(FileNotFoundError, match="IDX label file not found: .*no-such.gz .or uncompressed no-such"):
        data.read_idx_in(tmp_path, "no-such", kind="labels")


def test_pipelines_run_without_the_autotuning_thread():
    """Deleting an iterator waits for tf.data's autotuning thread, whose period backs off to 60 s: with it, a
    training run stopped by SIGTERM seemed to hang (docs/reliability.md)."""
    array = np.zeros((20, 2), np.uint8)
    train, _ = data.make_train_dataset(array, 4, seed=0, dequantize=False, epochs=2)
    for dataset in (train, data.make_eval_dataset(array, 4, seed=0, dequantize=False)):
        assert dataset.options().autotune.enabled is False


def test_data_source_fingerprints_content_not_files(tmp_path):
    """The same images from an uncompressed copy elsewhere give the same fingerprint (a hashlib reference over the
    arrays); one image fewer gives another; the kind says where the data came from."""
    bundled = data.load_splits("mnist")
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):  # uncompressed copies
        (tmp_path / name).write_bytes(gzip.decompress((data._BUNDLED_DIR / "mnist" / f"{name}.gz").read_bytes()))
    copy = data.load_splits("mnist", str(tmp_path))
    reference = hashlib.sha256()
    for split in ("train", "validation", "test"):
        array = getattr(bundled, split)
        reference.update(f"{split} {array.dtype.str} {array.shape}\n".encode() + array.tobytes())
    assert data.splits_fingerprint(bundled) == data.splits_fingerprint(copy) == reference.hexdigest()
    shorter = data.Splits("mnist", bundled.train, bundled.validation, bundled.test[:-1])
    assert data.splits_fingerprint(shorter) != reference.hexdigest()
    source = data.data_source("mnist", str(tmp_path), copy)
    assert (source["kind"], source["data_dir"]) == ("idx", str(tmp_path.resolve()))
    assert source["examples"] == {"train": 50_000, "validation": 10_000, "test": 10_000}
    assert data.data_source("mnist", None, bundled)["kind"] == "bundled"
    toy = data.load_splits("banana", seed=3)
    assert data.data_source("banana", str(tmp_path), toy)["kind"] == "toy"  # generated: no folder
    assert data.data_source("banana", None, toy)["data_dir"] is None
    assert data.splits_fingerprint(toy) != data.splits_fingerprint(data.load_splits("banana", seed=4))
