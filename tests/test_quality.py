"""Tests for infusion_tf.quality: Inception score, Frechet distance, nearest neighbours, labels, classifiers."""

import json

import numpy as np
import pytest
import tensorflow as tf

from infusion_tf import data, quality

# Label counts by class of the published MNIST files (train = our train + validation).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_classifier():
    return quality.load_classifier("mnist")


@pytest.fixture(scope="module")
def mnist():
    return data.load_splits("mnist")


# ---------------------------------------------------------------------------------------- inception score


def reference_inception_score(probs: np.ndarray, splits: int) -> tuple[float, float]:
    """Salimans et al.'s inception_score.py loop, in plain numpy on probabilities."""
    scores = []
    for i in range(splits):
        part = probs[i * len(probs) // splits:(i + 1) * len(probs) // splits]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_of_confident_uniform_predictions_is_num_classes():
    probs = np.eye(10)[np.tile(np.arange(10), 50)]  # one-hot, every class 5 times per split of 50
    mean, std = quality.inception_score_from_probs(probs, splits=10)
    np.testing.assert_allclose([mean, std], [10.0, 0.0], atol=1e-12)


def test_inception_score_of_constant_predictions_is_one():
    probs = np.tile(np.random.default_rng(0).dirichlet(np.ones(10)), (200, 1))
    np.testing.assert_allclose(quality.inception_score_from_probs(probs, splits=4), [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(quality.inception_score_from_probs(np.eye(10)[np.zeros(30, int)], splits=3),
                               [1.0, 0.0], atol=1e-12)


def test_inception_score_matches_numpy_reference():
    probs = np.random.default_rng(1).dirichlet(0.3 * np.ones(10), size=1003)
    np.testing.assert_allclose(quality.inception_score_from_probs(probs, splits=10),
                               reference_inception_score(probs, 10), rtol=1e-10)


@pytest.mark.parametrize("probs, splits", [(np.full((5, 2), 0.5), 6), (np.full((5, 2), 0.5), 0),
                                           (np.full((5, 2), 0.6), 1), (np.array([[1.5, -0.5]]), 1)])
def test_inception_score_bad_arguments(probs, splits):
    with pytest.raises(ValueError):
        quality.inception_score_from_probs(probs, splits)


# ---------------------------------------------------------------------------------------- Frechet distance


def random_gaussian(rng, d):
    a = rng.standard_normal((d, d))
    return rng.standard_normal(d), a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_matches_eigen_reference():
    """Tr((C1 C2)^(1/2)) = Tr((C1^(1/2) C2 C1^(1/2))^(1/2)), computed with symmetric eigendecompositions."""
    rng = np.random.default_rng(2)
    (mu1, cov1), (mu2, cov2) = random_gaussian(rng, 6), random_gaussian(rng, 6)
    w, v = np.linalg.eigh(cov1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.sum(np.sqrt(inner))
    np.testing.assert_allclose(quality.frechet_distance(mu1, cov1, mu2, cov2), expected, rtol=1e-8)


def test_frechet_distance_of_identical_statistics_is_zero():
    mu, cov = random_gaussian(np.random.default_rng(3), 5)
    assert abs(quality.frechet_distance(mu, cov, mu, cov)) < 1e-9


@pytest.mark.parametrize("m1, s1, m2, s2", [(0.0, 1.0, 1.0, 1.0), (0.3, 0.5, -1.2, 2.0), (2.0, 4.0, 2.0, 0.25)])
def test_frechet_distance_closed_form_in_one_dimension(m1, s1, m2, s2):
    expected = (m1 - m2) ** 2 + s1 + s2 - 2 * np.sqrt(s1 * s2)
    np.testing.assert_allclose(quality.frechet_distance([m1], [[s1]], [m2], [[s2]]), expected, rtol=1e-10)


def test_frechet_distance_with_singular_covariances_is_finite():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 8))  # 3 points in 8-D: rank-2 covariance
    value = quality.frechet_distance(x.mean(0), np.cov(x, rowvar=False), np.zeros(8), np.zeros((8, 8)))
    assert np.isfinite(value)
    np.testing.assert_allclose(value, np.sum(x.mean(0) ** 2) + np.trace(np.cov(x, rowvar=False)), rtol=1e-4)


def test_frechet_distance_shape_mismatch_raises():
    with pytest.raises(ValueError, match="covariances"):
        quality.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


@pytest.mark.parametrize("imaginary, warns", [(0.5, True), (2e-3, True), (5e-4, False)])
def test_frechet_distance_warns_on_a_non_negligible_imaginary_square_root(imaginary, warns):
    """An indefinite "covariance" diag(1, -b^2) against I: (C1 C2)^(1/2) = diag(1, i b), whose imaginary part b is
    above FRECHET_IMAG_TOLERANCE = 1e-3 (x max(1, largest real entry = 1)) or not. The value keeps the real part:
    numpy's complex square root of the eigenvalues gives 0 + (1 - b^2) + 2 - 2 Re(1 + i b) = 1 - b^2."""
    import warnings

    cov1 = np.diag([1.0, -imaginary**2])
    expected = np.trace(cov1) + 2.0 - 2.0 * np.sum(np.real(np.emath.sqrt(np.linalg.eigvals(cov1))))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = quality.frechet_distance(np.zeros(2), cov1, np.zeros(2), np.eye(2))
    imaginary_warnings = [w for w in caught if issubclass(w.category, RuntimeWarning) and "imaginary" in str(w.message)]
    assert len(imaginary_warnings) == (1 if warns else 0), [str(w.message) for w in caught]
    np.testing.assert_allclose(value, expected, rtol=1e-9)
    np.testing.assert_allclose(value, 1.0 - imaginary**2, rtol=1e-9)


def test_frechet_distance_of_real_covariances_does_not_warn():
    """Covariances, even rank-deficient ones of fewer images than features, have a real square root up to
    rounding far below the tolerance."""
    import warnings

    rng = np.random.default_rng(6)
    few, many = rng.standard_normal((5, 20)), rng.standard_normal((400, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        value = quality.frechet_distance(few.mean(0), np.cov(few, rowvar=False), many.mean(0),
                                         np.cov(many, rowvar=False))
    assert np.isfinite(value)


# ---------------------------------------------------------------------------------------- nearest neighbours


def test_nearest_neighbours_equal_brute_force():
    rng = np.random.default_rng(5)
    train = rng.uniform(size=(700, 6, 6, 1)).astype(np.float32)
    samples = rng.uniform(size=(45, 6, 6, 1)).astype(np.float32)
    sq = np.sum((samples.reshape(45, 1, -1).astype(np.float64) - train.reshape(1, 700, -1)) ** 2, axis=-1)
    index = quality.nearest_neighbours(samples, train, k=3, chunk=16)
    assert index.shape == (45, 3)
    np.testing.assert_array_equal(index[:, 0], np.argmin(sq, axis=1))
    np.testing.assert_array_equal(index, np.argsort(sq, axis=1, kind="stable")[:, :3])


def test_nearest_neighbour_of_a_training_image_is_itself(mnist):
    train = mnist.train[:3000]
    index = quality.nearest_neighbours(train[[5, 17, 2999]], train)  # uint8 pixels
    np.testing.assert_array_equal(index[:, 0], [5, 17, 2999])
    # uint8 pixels and the same pixels as floats u / 255 give the same neighbours
    np.testing.assert_array_equal(quality.nearest_neighbours(mnist.test[:20], train, k=2),
                                  quality.nearest_neighbours(mnist.test[:20].astype(np.float32) / 255, train, k=2))


def test_nearest_neighbour_figure(tmp_path, mnist):
    path = quality.save_nearest_neighbour_figure(str(tmp_path / "nn.png"), mnist.test[:6], mnist.train[:2000], num=4)
    image = tf.io.decode_png(tf.io.read_file(path)).numpy()
    assert image.shape == (2 * (4 * 29 + 1), 2 * (4 * 29 + 1), 1)  # 4 rows x (sample + 3 neighbours), scale 2


# ---------------------------------------------------------------------------------------- labels and classifiers


def test_load_labels_mnist_counts():
    train, validation, test = quality.load_labels("mnist")
    assert (len(train), len(validation), len(test)) == (50_000, 10_000, 10_000)
    np.testing.assert_array_equal(np.bincount(np.concatenate([train, validation]), minlength=10), MNIST_TRAIN_COUNTS)
    np.testing.assert_array_equal(np.bincount(test, minlength=10), MNIST_TEST_COUNTS)


@pytest.mark.shared_data
def test_load_labels_fashion_mnist_counts(fashion_mnist_dir):
    train, validation, test = quality.load_labels("fashion_mnist", str(fashion_mnist_dir))
    np.testing.assert_array_equal(np.bincount(np.concatenate([train, validation])), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test), [1000] * 10)


def test_load_labels_errors():
    with pytest.raises(ValueError, match="data_dir"):
        quality.load_labels("fashion_mnist")
    with pytest.raises(ValueError, match="labels"):
        quality.load_labels("banana")


def test_committed_mnist_classifier_accuracy(mnist_classifier, mnist):
    _, _, labels = quality.load_labels("mnist")
    probs = mnist_classifier.predict(mnist.test[:2000].astype(np.float32) / 255, batch_size=500, verbose=0)
    assert np.mean(np.argmax(probs, axis=1) == labels[:2000]) >= 0.985


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_committed_classifiers_are_small_and_documented(dataset):
    folder = quality.PRETRAINED_DIR / dataset
    results = json.loads((folder / "results.json").read_text())
    assert {"dataset", "test_accuracy", "epochs", "wall_seconds", "command"} <= set(results)
    assert results["dataset"] == dataset and results["command"].startswith("python -m infusion_tf.quality")
    assert results["test_accuracy"] >= {"mnist": 0.99, "fashion_mnist": 0.90}[dataset]
    for path in folder.iterdir():
        assert path.stat().st_size < 2_000_000, path


def test_classifier_scores_on_real_digits(mnist_classifier, mnist):
    """Real test digits score near 10 (confident, balanced); the FD between two halves of the test set is
    far below the FD between digits and noise."""
    mean, _ = quality.classifier_inception_score(mnist_classifier, mnist.test[:1000], splits=5)
    assert 8.5 < mean <= 10.0
    same = quality.classifier_frechet_distance(mnist_classifier, mnist.test[:1000], mnist.test[1000:2000])
    noise = np.random.default_rng(6).uniform(size=(1000, 28, 28, 1)).astype(np.float32)
    other = quality.classifier_frechet_distance(mnist_classifier, mnist.test[:1000], noise)
    assert 0 <= same < 0.05 * other


def test_feature_statistics_shapes(mnist_classifier, mnist):
    mu, cov = quality.feature_statistics(mnist_classifier, mnist.test[:50, :, :, 0], batch_size=16)  # no channel
    assert mu.shape == (128,) and cov.shape == (128, 128) and np.allclose(cov, cov.T)
    assert np.sum(np.diag(cov) > 0) >= 64  # most ReLU features are alive: the Frechet space is not degenerate
    with pytest.raises(ValueError, match="takes images"):
        quality.feature_statistics(mnist_classifier, np.zeros((4, 32, 32, 1), np.float32))


def test_load_classifier_missing_names_the_command(tmp_path):
    with pytest.raises(ValueError, match="python -m infusion_tf.quality --dataset mnist"):
        quality.load_classifier(str(tmp_path))


def test_classifiers_are_found_beside_the_package_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar10").mkdir()  # a folder of that name here is not where a dataset's classifier lives
    assert quality.classifier_path("mnist") == quality.PRETRAINED_DIR / "mnist" / "classifier.keras"
    assert quality.classifier_path("cifar10") == quality.PRETRAINED_DIR / "cifar10" / "classifier.keras"
    assert quality.require_classifier("mnist").is_file()
    with pytest.raises(ValueError, match=r"pretrained.classifiers.cifar10.*python -m infusion_tf.quality --dataset"):
        quality.require_classifier("cifar10")
    assert quality.classifier_path(str(tmp_path / "clf")) == tmp_path / "clf" / "classifier.keras"


def test_build_classifier_layers():
    model = quality.build_classifier((28, 28, 1))
    assert model.get_layer("features").output.shape[-1] == 128
    assert model.output_shape == (None, 10)
    assert model.count_params() * 4 < 2_000_000


def test_main_trains_and_records_its_command(tmp_path, monkeypatch):
    """The command line end to end on a small slice: the model file loads and results.json has the command."""
    splits = data.load_splits("mnist")
    small = data.Splits("mnist", splits.train[:256], splits.validation[:128], splits.test[:128])
    monkeypatch.setattr(quality.data, "load_splits", lambda *args, **kwargs: small)
    labels = quality.load_labels("mnist")
    monkeypatch.setattr(quality, "load_labels", lambda *args, **kwargs: (labels[0][:256], labels[1][:128],
                                                                         labels[2][:128]))
    argv = ["--dataset", "mnist", "--epochs", "1", "--output-dir", str(tmp_path / "clf")]
    assert quality.main(argv) == 0
    results = json.loads((tmp_path / "clf" / "results.json").read_text())
    assert results["command"] == "python -m infusion_tf.quality " + " ".join(argv)
    assert results["epochs"] == 1 and 0.0 <= results["test_accuracy"] <= 1.0
    assert quality.load_classifier(str(tmp_path / "clf")).output_shape == (None, 10)
    assert not list((tmp_path / "clf").glob("*tmp*"))
