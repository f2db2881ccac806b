"""Sample quality beyond the paper's likelihoods: a small MNIST-style classifier, its Inception score
(Salimans et al., 2016; the paper's Table 3 uses the Inception network on CIFAR-10), a Frechet distance in
its feature space (Heusel et al., 2017), and nearest training neighbours (the memorization check of
Section 4.2, Figure 4's last column).

Pixels as the models see them: the classifier is trained on u / 255 (`data.to_unit_interval` with
dequantize=False), so it takes float32 images [n, H, W, C] in [0, 1]; every function here also accepts
uint8 pixels and converts them the same way. Samples of an infusion model, which live on the dequantized
scale (u + U[0, 1)) / 256, differ from u / 255 by less than 1/256 per pixel.

Pretrained classifiers live in pretrained/classifiers/<dataset>/ of the repository and are rebuilt by
    python -m infusion_tf.quality --dataset mnist
    python -m infusion_tf.quality --dataset fashion_mnist --data-dir DIR   # DIR: the four Fashion-MNIST IDX files
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

if __name__ == "__main__":  # run as `python -m infusion_tf.quality`: hide TensorFlow's start-up log before importing it
    from infusion_tf.console import quiet_tensorflow_logs

    quiet_tensorflow_logs()

import keras
import numpy as np
import scipy.linalg
import tensorflow as tf
from scipy.special import logsumexp

from infusion_tf import data, files, provenance, visualize
from infusion_tf.console import BAD_INPUT, OneLineErrorParser, check_output_folder, print_error
from infusion_tf.config import check_seed

__all__ = ["PRETRAINED_DIR", "load_labels", "build_classifier", "train_classifier", "classifier_path",
           "require_classifier", "load_classifier",
           "inception_score_from_probs", "classifier_inception_score", "frechet_distance", "feature_statistics",
           "classifier_frechet_distance", "nearest_neighbours", "save_nearest_neighbour_figure", "DEFAULT_EPOCHS",
           "FRECHET_IMAG_TOLERANCE", "main"]

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained" / "classifiers"
_LABEL_MD5 = {"mnist": {"train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}}
_DATA_DIR_HINT = {"fashion_mnist": " --data-dir DIR"}  # DIR: a folder of the four IDX files (not shipped)
FRECHET_IMAG_TOLERANCE = 1e-3  # frechet_distance warns beyond this imaginary part of its square root (relative)
DEFAULT_EPOCHS = {"mnist": 6, "fashion_mnist": 10}  # the committed classifiers; ~10-20 s an epoch on 2 CPU cores


# ------------------------------------------------------------------------------------------ labels and data


def load_labels(dataset: str, data_dir: str | None = None,
                validation_examples: int = 10_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class labels aligned with `data.load_splits(dataset, data_dir, validation_examples)`.

    Same files as the images: the md5-checked bundled MNIST when data_dir is None, else data_dir's
    train-labels-idx1-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz).
    Returns: uint8 (train [:60000 - v], validation [60000 - v:], test), i.e. 50000 / 10000 / 10000.
    Raises: ValueError for a dataset other than data.IMAGE_DATASETS or fashion_mnist without data_dir.
    """
    if dataset not in data.IMAGE_DATASETS:
        raise ValueError(f"labels are read for {data.IMAGE_DATASETS} only, got {dataset!r}")
    if data_dir is None and dataset not in _LABEL_MD5:
        raise ValueError(f"{dataset!r} is not bundled with infusion_tf; pass data_dir=<folder of its four IDX files> "
                         f"(--data-dir on the command line)")
    folder, md5s = (data._BUNDLED_DIR / dataset, _LABEL_MD5[dataset]) if data_dir is None else (Path(data_dir), {})
    train = data.read_idx_in(folder, "train-labels-idx1-ubyte", md5s, kind="labels")
    test = data.read_idx_in(folder, "t10k-labels-idx1-ubyte", md5s, kind="labels")
    if not 1 <= validation_examples < len(train):
        raise ValueError(f"validation_examples={validation_examples} must be in [1, {len(train)})")
    cut = len(train) - validation_examples
    return train[:cut], train[cut:], test


def _unit(images) -> np.ndarray:
    """float32 [n, ...]: uint8 pixels as u / 255 (to_unit_interval, dequantize=False), floats unchanged."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return data.to_unit_interval(images, dequantize=False, seed=None).numpy()
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be uint8 pixels or floats in [0, 1], got dtype {images.dtype}")
    return images.astype(np.float32, copy=False)


def _classifier_input(classifier: keras.Model, images) -> np.ndarray:
    """float32 [n, *input_shape] in [0, 1]; a missing trailing channel axis of 1 is added."""
    expected = tuple(classifier.input_shape[1:])
    images = _unit(images)
    if images.ndim == len(expected) and expected[-1] == 1:
        images = images[..., None]
    if images.ndim < 2 or tuple(images.shape[1:]) != expected or len(images) == 0:
        raise ValueError(f"the classifier takes images [n, {', '.join(map(str, expected))}], got {images.shape}")
    return images


def _layer_outputs(classifier: keras.Model, images, layer: str, batch_size: int) -> np.ndarray:
    """float64 [n, ...] output of the named layer, computed in batches."""
    if layer not in {l.name for l in classifier.layers}:
        raise ValueError(f"the classifier has no layer named {layer!r} (see build_classifier)")
    head = keras.Model(classifier.inputs, classifier.get_layer(layer).output)
    return np.asarray(head.predict(_classifier_input(classifier, images), batch_size=batch_size, verbose=0),
                      np.float64)


# -------------------------------------------------------------------------------------------- classifier


def build_classifier(example_shape=(28, 28, 1), num_classes: int = 10) -> keras.Model:
    """(conv3x3-relu-maxpool) x (32, 64) - dense128 - dropout 0.3 - dense10 CNN.

    Named layers: "features" (the ReLU dense128, used for Frechet distances), "logits", "probs".
    Input: float32 [n, *example_shape] in [0, 1]; output: p(y | x), [n, num_classes]. ~225k parameters.
    """
    inputs = keras.Input(tuple(example_shape), name="images")
    h = inputs
    for filters in (32, 64):
        h = keras.layers.MaxPooling2D(2)(keras.layers.Conv2D(filters, 3, activation="relu")(h))
    h = keras.layers.Flatten()(h)
    features = keras.layers.Dense(128, activation="relu", name="features")(h)  # Frechet-distance features
    logits = keras.layers.Dense(num_classes, name="logits")(keras.layers.Dropout(0.3)(features))
    probs = keras.layers.Softmax(name="probs")(logits)
    return keras.Model(inputs, probs, name="classifier")


def _save_atomically(model: keras.Model, results: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    files.atomic_write(str(output_dir / "classifier.keras"), model.save)
    files.write_json(str(output_dir / "results.json"), results, end="\n")


def train_classifier(dataset: str = "mnist", data_dir: str | None = None, epochs: int | None = None,
                     batch_size: int = 128, learning_rate: float = 2e-3, seed: int = 0,
                     output_dir: str | None = None, command: str | None = None) -> dict:
    """Trains build_classifier on the 50 000 training images (u / 255), reports validation and test accuracy.

    Saves <output_dir>/classifier.keras (without optimizer state) and <output_dir>/results.json, each
    atomically; output_dir defaults to PRETRAINED_DIR / dataset; epochs to DEFAULT_EPOCHS[dataset]. Adam
    with the learning rate decayed to 0 on a cosine. `command` is recorded in results.json (default:
    the equivalent `python -m infusion_tf.quality` line). Returns the results dict.
    Raises: ValueError for bad settings, labels or images; OSError for missing files or an output folder that
    cannot be written (checked before training).
    """
    start = time.time()
    epochs = DEFAULT_EPOCHS.get(dataset, 10) if epochs is None else epochs
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not (isinstance(learning_rate, (int, float)) and 0 < learning_rate < math.inf):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    check_output_folder(str(output_dir) if output_dir else str(PRETRAINED_DIR / dataset))
    keras.utils.set_random_seed(check_seed(seed))
    train_y, validation_y, test_y = load_labels(dataset, data_dir)  # first: it refuses datasets without labels
    splits = data.load_splits(dataset, data_dir)
    model = build_classifier(splits.example_shape, num_classes=int(train_y.max()) + 1)
    steps = epochs * math.ceil(len(splits.train) / batch_size)
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(_unit(splits.train), train_y, batch_size=batch_size, epochs=epochs, verbose=2,
              validation_data=(_unit(splits.validation), validation_y))
    accuracy = {split: float(np.mean(np.argmax(model.predict(_unit(getattr(splits, split)), batch_size=1000,
                                                             verbose=0), axis=1) == labels))
                for split, labels in (("validation", validation_y), ("test", test_y))}
    inference = build_classifier(splits.example_shape, model.output_shape[-1])  # uncompiled: no optimizer state
    inference.set_weights(model.get_weights())
    _, feature_cov = feature_statistics(inference, splits.validation)  # [128, 128]
    dead = int(np.sum(np.diag(feature_cov) <= 1e-12))  # ReLU units silent on all validation images
    if command is None:
        command = shlex.join(["python", "-m", "infusion_tf.quality", "--dataset", dataset, "--epochs", str(epochs)]
                             + (["--data-dir", provenance.portable_path(data_dir)] if data_dir else [])
                             + (["--output-dir", provenance.portable_path(output_dir)] if output_dir else []))
    results = {"dataset": dataset, "test_accuracy": accuracy["test"], "validation_accuracy": accuracy["validation"],
               "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
               "wall_seconds": round(time.time() - start, 1), "command": command,
               "pixels": "u / 255 (data.to_unit_interval, dequantize=False)", "parameters": model.count_params(),
               "dead_features": dead,
               "keras_version": keras.__version__, "tensorflow_version": tf.__version__}
    _save_atomically(inference, results, Path(output_dir) if output_dir else PRETRAINED_DIR / dataset)
    return results


def _is_dataset_name(name: str) -> bool:
    """A bare word such as "mnist" or "cifar10": no folder separator, no .keras file name."""
    return bool(name) and "/" not in name and os.sep not in name and name not in (".", "..") \
        and not name.endswith(".keras")


def classifier_path(dataset_or_path: str) -> Path:
    """Where load_classifier looks: PRETRAINED_DIR/<name>/classifier.keras for a dataset name, wherever the
    command runs from; else <folder>/classifier.keras of a folder, or the .keras file itself."""
    name = str(dataset_or_path)
    path = PRETRAINED_DIR / name if _is_dataset_name(name) else Path(name)
    return path if path.suffix == ".keras" else path / "classifier.keras"


def require_classifier(dataset_or_path: str) -> Path:
    """classifier_path(dataset_or_path), which must exist: a check that costs nothing, made before any work.

    Raises: ValueError naming the missing file and the command that trains a classifier.
    """
    name, path = str(dataset_or_path), classifier_path(dataset_or_path)
    if path.is_file():
        return path
    if name in data.IMAGE_DATASETS or not _is_dataset_name(name):
        dataset = name if name in data.IMAGE_DATASETS else "mnist"
        output = "" if _is_dataset_name(name) else f" --output-dir {path.parent}"
        how = (f"train one with: python -m infusion_tf.quality --dataset {dataset}"
               f"{_DATA_DIR_HINT.get(dataset, '')}{output} (a few minutes on 2 CPU cores)")
    else:
        how = (f"python -m infusion_tf.quality --dataset NAME trains classifiers for {' and '.join(data.IMAGE_DATASETS)} "
               f"only, not for {name!r}")
    raise ValueError(f"no classifier for the sample-quality scores at {path}; {how}")


def load_classifier(dataset_or_path: str) -> keras.Model:
    """A classifier saved by train_classifier: a dataset name (PRETRAINED_DIR / name), a folder or a .keras file.

    Raises: ValueError naming the missing file and the command that trains it (require_classifier), or for a
    model lacking "features".
    """
    path = require_classifier(dataset_or_path)
    model = keras.saving.load_model(path, compile=False)
    if "features" not in {layer.name for layer in model.layers}:
        raise ValueError(f"{path} has no 'features' layer; it was not built by quality.build_classifier")
    return model


# -------------------------------------------------------------------------------------------- metrics


def _inception_score_from_log_probs(log_probs: np.ndarray, splits: int) -> tuple[float, float]:
    n = len(log_probs)
    if isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) or not 1 <= splits <= n:
        raise ValueError(f"splits must be an integer in [1, {n}] (number of examples), got {splits!r}")
    scores = []
    for i in range(splits):  # the slicing of Salimans et al.'s inception_score.py
        part = log_probs[i * n // splits:(i + 1) * n // splits]  # [m, K]
        log_py = logsumexp(part, axis=0) - math.log(len(part))  # log p(y), [K]
        terms = np.where(np.isneginf(part), 0.0, np.exp(part) * (part - log_py))  # 0 log 0 = 0
        scores.append(math.exp(np.mean(np.sum(terms, axis=1))))  # exp(E_x KL(p(y|x) || p(y)))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score_from_probs(probs, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) of class probabilities [n, K], mean and std over `splits` parts (Salimans et al.).

    Lies in [1, K]: 1 for identical predictions, K for confident predictions spread evenly over the classes.
    Raises: ValueError for negative entries, rows not summing to 1 (within 1e-3), or splits outside [1, n].
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.size == 0:
        raise ValueError(f"probs must be [n, num_classes], got shape {probs.shape}")
    if np.any(probs < 0) or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probs must be non-negative with rows summing to 1")
    with np.errstate(divide="ignore"):
        return _inception_score_from_log_probs(np.log(probs), splits)


def classifier_inception_score(classifier: keras.Model, images, splits: int = 10,
                               batch_size: int = 500) -> tuple[float, float]:
    """Inception score of images [n, H, W, C] with p(y|x) from the classifier, in log space (log_softmax of logits)."""
    logits = _layer_outputs(classifier, images, "logits", batch_size)  # [n, K]
    return _inception_score_from_log_probs(logits - logsumexp(logits, axis=1, keepdims=True), splits)


def frechet_distance(mu1, cov1, mu2, cov2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)) between two Gaussians (Heusel et al., 2017).

    mu: [d]; cov: [d, d]. When scipy.linalg.sqrtm gives non-finite values (near-singular covariances),
    eps * I is added to both covariances; the real part of the square root is kept. For covariances (symmetric,
    positive semi-definite) the square root is real up to rounding; an imaginary part is negligible when its
    largest entry is at most FRECHET_IMAG_TOLERANCE = 1e-3 times max(1, the largest |real entry|), and beyond
    that a RuntimeWarning says so: the inputs are then not covariances, or too ill-conditioned for the value
    to be trusted (too few images for the number of features).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"expected means [d] and covariances [d, d], got {mu1.shape}, {cov1.shape}, "
                         f"{mu2.shape}, {cov2.shape}")
    with warnings.catch_warnings():  # singular products are expected: dead ReLU features have zero variance
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov1 @ cov2)
        if not np.all(np.isfinite(covmean)):
            offset = eps * np.eye(d)
            covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        imaginary, real = float(np.max(np.abs(covmean.imag))), float(np.max(np.abs(covmean.real)))
        if imaginary > FRECHET_IMAG_TOLERANCE * max(1.0, real):
            warnings.warn(f"Frechet distance: the matrix square root has an imaginary part of up to {imaginary:.3g} "
                          f"(real entries up to {real:.3g}, tolerance {FRECHET_IMAG_TOLERANCE:g} x max(1, that)); "
                          f"only its real part is used, the value may be wrong", RuntimeWarning, stacklevel=2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(np.real(covmean)))


def feature_statistics(classifier: keras.Model, images, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and covariance [F, F] (float64) of the classifier's "features" layer over images [n >= 2, ...]."""
    features = _layer_outputs(classifier, images, "features", batch_size)  # [n, F]
    if len(features) < 2:
        raise ValueError(f"feature statistics need at least 2 images, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def classifier_frechet_distance(classifier: keras.Model, images_a, images_b, batch_size: int = 500) -> float:
    """Frechet distance between two image sets in the classifier's feature space (an MNIST-scale FID)."""
    return frechet_distance(*feature_statistics(classifier, images_a, batch_size),
                            *feature_statistics(classifier, images_b, batch_size))


# -------------------------------------------------------------------------------------------- memorization


def nearest_neighbours(samples, train, k: int = 1, chunk: int = 256) -> np.ndarray:
    """Indices [n, k] of the k training examples closest in L2 to each sample, nearest first.

    samples [n, ...], train [N, ...]: uint8 (read as u / 255) or float. Candidates come from a float32
    ||t||^2 - 2 s.t matmul (memory: chunk x N floats), then k + 8 of them are re-ranked by exact float64
    distance, ties going to the lower index, as np.argmin would.
    """
    samples, train = _unit(samples), _unit(train)
    samples, train = samples.reshape(len(samples), -1), train.reshape(len(train), -1)
    if samples.shape[1] != train.shape[1] or len(train) == 0:
        raise ValueError(f"samples {samples.shape} and train {train.shape} must have the same example size")
    if not 1 <= k <= len(train) or chunk < 1:
        raise ValueError(f"need 1 <= k <= {len(train)} and chunk >= 1, got k={k}, chunk={chunk}")
    candidates = min(k + 8, len(train))
    train_t = tf.constant(train)
    train_sq = tf.reduce_sum(tf.square(train_t), axis=1)  # [N]
    out = np.empty((len(samples), k), np.int64)
    for start in range(0, len(samples), chunk):
        block = samples[start:start + chunk]  # [c, d]
        approx = train_sq[None, :] - 2.0 * tf.matmul(block, train_t, transpose_b=True)  # [c, N]
        index = tf.math.top_k(-approx, candidates).indices.numpy()  # [c, candidates]
        exact = np.sum((block[:, None, :].astype(np.float64) - train[index].astype(np.float64)) ** 2, axis=-1)
        order = np.lexsort((index, exact), axis=-1)  # by distance, then by index
        out[start:start + chunk] = np.take_along_axis(index, order, axis=1)[:, :k]
    return out


def save_nearest_neighbour_figure(path: str, samples, train, num: int = 10, neighbours: int = 3) -> str:
    """PNG grid, one row per sample: the sample, then its `neighbours` nearest training images (Section 4.2).

    samples [n, H, W, C], train [N, H, W, C]: uint8 or floats in [0, 1]. Returns path.
    """
    samples, train = np.asarray(samples), np.asarray(train)
    if samples.ndim != 4 or train.ndim != 4:
        raise ValueError(f"images must be [n, H, W, C], got samples {samples.shape} and train {train.shape}")
    rows = min(num, len(samples))
    index = nearest_neighbours(samples[:rows], train, k=neighbours)  # [rows, neighbours]
    tiles = np.concatenate([_unit(samples[:rows])[:, None], _unit(train[index.ravel()]).reshape(
        rows, neighbours, *train.shape[1:])], axis=1)  # [rows, 1 + neighbours, H, W, C]
    grid = visualize.image_grid(tiles.reshape(-1, *train.shape[1:]), rows, 1 + neighbours)
    return visualize.save_png(path, grid)


# -------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """python -m infusion_tf.quality --dataset mnist [--data-dir D] [--epochs N] [--output-dir D]."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = OneLineErrorParser(prog="python -m infusion_tf.quality", description=train_classifier.__doc__)
    parser.add_argument("--dataset", default="mnist", choices=data.IMAGE_DATASETS)
    parser.add_argument("--data-dir", default=None, help="folder of the four IDX files (bundled MNIST if omitted)")
    parser.add_argument("--epochs", type=int, default=None, help=f"default: {DEFAULT_EPOCHS}")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="Adam's, decayed to 0 on a cosine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=None, help="default: pretrained/classifiers/<dataset>")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "infusion_tf.quality", *provenance.portable_argv(argv)])
    try:
        results = train_classifier(args.dataset, args.data_dir, args.epochs, args.batch_size, args.learning_rate,
                                   args.seed, args.output_dir, command=command)
    except BAD_INPUT as e:  # settings, IDX files, an output folder that cannot be written
        return print_error(e)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
