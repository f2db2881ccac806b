"""Data for infusion training: local IDX files, TFDS image datasets, toy 2-D densities, tf.data pipelines.

Arrays stay in their stored form (uint8 images [n, H, W, C], float32 toy points [n, 2] in [0, 1]) until
`to_unit_interval` turns a batch into what the model sees: u / 255, or (u + U[0, 1)) / 256 when the
pixels are dequantized so that a continuous density can be fitted to them. All randomness is stateless
(Philox, the same on every device) and derived from an integer seed, so a resumed run replays exactly the
batches of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import socket
import urllib.parse
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf

__all__ = ["IMAGE_DATASETS", "TOY_DATASETS", "DataUnavailableError", "check_dataset_name", "Splits", "read_idx", "load_idx_splits", "load_tfds_splits",
           "toy_samples", "toy_to_raw", "mixture_of_gaussians_log_density", "banana_log_density",
           "load_splits", "splits_fingerprint", "data_source", "pixel_statistics", "to_unit_interval",
           "make_train_dataset", "make_eval_dataset", "eval_points", "read_idx_in"]

IMAGE_DATASETS = ("mnist", "fashion_mnist")  # read from local IDX files
TOY_DATASETS = ("mixture_of_gaussians", "banana", "kidney")
BINARIZED_DATASETS = {"binarized_mnist": "mnist"}  # name -> the 8-bit dataset binarized statically (binarization.py)

_BUNDLED_DIR = Path(__file__).resolve().parent / "datasets"
_BUNDLED_MD5 = {"mnist": {  # md5 of the official .gz files
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
}}
_IDX_MAGIC = {2051: "images", 2049: "labels"}  # 0x0803: uint8 x 3 dims, 0x0801: uint8 x 1 dim
# Raw box (low, high) per coordinate (x1, x2) that toy_samples maps affinely onto [0.05, 0.95]^2. The 0.05
# margins reach 6.7 std of a mixture component and |x2| > 11.1 (5.5 std) / x1 > 27.7 for the banana, so
# the final clip to [0, 1] changes fewer than 1 in 10^6 banana points and practically no mixture points.
_TOY_BOXES = {"mixture_of_gaussians": (np.array([-1.5, -1.5]), np.array([1.5, 1.5])),
              "banana": (np.array([-4.0, -10.0]), np.array([26.0, 10.0])),
              "kidney": (np.array([-5.0, -5.0]), np.array([5.0, 5.0]))}  # its exact sampler's box: nothing clipped
_MOG_COMPONENTS, _MOG_RADIUS, _MOG_STD = 8, 1.0, 0.1
_TRAIN_EXAMPLES, _TEST_EXAMPLES = 50_000, 10_000  # toy split sizes, as MNIST's
_SHUFFLE_TAG, _NOISE_TAG, _EVAL_TAG = 0, 1, 2  # keep the seed streams of the pipelines apart
_CONNECTION_TIMEOUT = 5.0  # seconds: a machine without internet hears so at once, not after minutes
_OFFLINE_HINT = ("point --data-dir (data_dir= in Python) at local files (the four IDX files of mnist or "
                 "fashion_mnist) or at a TFDS data folder where the dataset is prepared")


class DataUnavailableError(OSError):
    """A dataset neither on this machine nor fetchable now: offline, or its download or preparation failed.

    An OSError, as a missing file is, so that the commands report it as one `error:` line.
    """


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Splits:
    """Train / validation / test arrays of one dataset, in stored form.

    Images: uint8 [n, H, W, C]; toy data: float32 [n, 2] in [0, 1]. All three share dtype and example shape.
    """

    name: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    def __post_init__(self):
        for split in ("train", "validation", "test"):
            array = getattr(self, split)
            _check_data_array(array, f"{self.name} {split}")
            if array.dtype != self.train.dtype or array.shape[1:] != self.train.shape[1:]:
                raise ValueError(f"{self.name}: {split} has dtype {array.dtype} and example shape "
                                 f"{array.shape[1:]}, train has {self.train.dtype} and {self.train.shape[1:]}")

    @property
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (28, 28, 1) or (2,)."""
        return tuple(self.train.shape[1:])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in ("train", "validation", "test"))
        return f"Splits(name={self.name!r}, {sizes}, example_shape={self.example_shape}, dtype={self.train.dtype})"


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_data_array(array, what: str) -> None:
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{what}: expected a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what}: dtype must be uint8 (pixels) or floating (toy data), got {array.dtype}")
    if array.ndim < 2 or array.shape[0] < 1 or 0 in array.shape:
        raise ValueError(f"{what}: expected a non-empty array [n, *example_shape], got shape {array.shape}")


def read_idx(path: str, expected_md5: str | None = None) -> np.ndarray:
    """Reads an IDX file, gzip-compressed (detected from its first bytes) or raw.

    Returns: uint8 [n, rows, cols] for images (magic 2051) or uint8 [n] for labels (magic 2049).
    Raises: FileNotFoundError naming the path; ValueError naming the file for a wrong md5 (of the file as
      stored), corrupt gzip, unknown magic, zero dimensions, or a payload of the wrong byte count.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    stored = path.read_bytes()
    if expected_md5 is not None:
        actual = hashlib.md5(stored).hexdigest()
        if actual != expected_md5.lower():
            raise ValueError(f"{path}: md5 mismatch, expected {expected_md5}, got {actual}")
    raw = stored
    if stored[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(stored)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err})") from err
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_MAGIC:
        raise ValueError(f"{path}: magic number {magic} is neither 2051 (images) nor 2049 (labels)")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header, expected {header} bytes, got {len(raw)}")
    dims = tuple(int.from_bytes(raw[i:i + 4], "big") for i in range(4, header, 4))
    if 0 in dims:
        raise ValueError(f"{path}: IDX {_IDX_MAGIC[magic]} with a zero dimension {dims}")
    expected, actual = math.prod(dims), len(raw) - header
    if actual != expected:
        kind = "truncated" if actual < expected else "overlong"
        raise ValueError(f"{path}: {kind} payload, shape {dims} needs {expected} bytes, file has {actual}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def read_idx_in(folder: Path, stem: str, md5s: dict[str, str] | None = None, *, kind: str = "images") -> np.ndarray:
    """The IDX file folder/stem.gz, or the uncompressed folder/stem, checked against md5s[file name] if listed.

    kind "images": uint8 [n, rows, cols]; "labels": uint8 [n].
    Raises: FileNotFoundError naming both names tried; ValueError when the file holds the other kind (and as
    read_idx does).
    """
    what, ndim, magic, other = {"images": ("IDX file", 3, 2051, "labels"),
                                "labels": ("IDX label file", 1, 2049, "images")}[kind]
    path = next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{what} not found: {folder / stem}.gz (or uncompressed {stem})")
    array = read_idx(str(path), (md5s or {}).get(path.name))
    if array.ndim != ndim:
        raise ValueError(f"{path}: expected IDX {kind} (magic {magic}), found {other} of shape {array.shape}")
    return array


def _read_idx_images(folder: Path, stem: str, md5s: dict[str, str]) -> np.ndarray:
    """uint8 [n, rows, cols, 1] from folder/stem.gz, or from the uncompressed folder/stem."""
    return read_idx_in(folder, stem, md5s, kind="images")[..., None]


def _split_off_validation(name: str, train: np.ndarray, validation_examples: int, test: np.ndarray | None) -> Splits:
    """The last `validation_examples` of the train file become validation (the authors' MNIST split)."""
    _check_int("validation_examples", validation_examples, 1)
    if validation_examples >= len(train):
        raise ValueError(f"validation_examples={validation_examples} must be below the {len(train)} "
                         f"training examples of {name!r}")
    cut = len(train) - validation_examples
    return Splits(name, train[:cut], train[cut:], train[cut:] if test is None else test)


def load_idx_splits(name: str, data_dir: str | None = None, validation_examples: int = 10_000) -> Splits:
    """MNIST-format images from the four official IDX files (labels are not read).

    data_dir None: the md5-checked copy bundled in infusion_tf/datasets/<name> (MNIST only); otherwise the
    files in data_dir, checked structurally. Returns Splits of uint8 [n, 28, 28, 1]: train = first
    60000 - validation_examples of the train file, validation = the rest, test = t10k.
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown IDX dataset {name!r}; choose one of {IMAGE_DATASETS}")
    _check_int("validation_examples", validation_examples, 1)
    if data_dir is None:
        if name not in _BUNDLED_MD5:
            raise ValueError(f"{name!r} is not bundled with infusion_tf (only {tuple(_BUNDLED_MD5)} is); "
                             f"pass data_dir=<folder holding its four IDX .gz files> (--data-dir on the "
                             f"command line)")
        folder, md5s = _BUNDLED_DIR / name, _BUNDLED_MD5[name]
    else:
        folder, md5s = Path(data_dir), {}
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder for {name!r} not found: {folder}")
    train = _read_idx_images(folder, "train-images-idx3-ubyte", md5s)
    test = _read_idx_images(folder, "t10k-images-idx3-ubyte", md5s)
    return _split_off_validation(name, train, validation_examples, test)


def _unavailable(name: str, builder, why: str) -> DataUnavailableError:
    folder = getattr(builder, "data_dir_root", None) or "the TFDS data folder"
    return DataUnavailableError(f"TFDS dataset {name!r} is not prepared in {folder} and could not be fetched: "
                                f"{why}; {_OFFLINE_HINT}")


def _connection_problem(builder) -> str | None:
    """None when the first host the dataset downloads from accepts a connection within a few seconds, else why."""
    try:
        urls = [str(url) for url in (builder.url_infos or {})]
    except Exception:  # noqa: BLE001 -- a builder without a checksums file: TFDS's own bucket serves many
        urls = []
    parts = urllib.parse.urlsplit(urls[0] if urls else "https://storage.googleapis.com")
    host, port = parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=_CONNECTION_TIMEOUT).close()
    except OSError as err:
        return f"no connection to {host} ({err})"
    return None


def _check_tfds_name(tfds, name: str) -> None:
    builder = name.split(":")[0].split("/")[0] if isinstance(name, str) else name
    if builder not in tfds.list_builders(with_community_datasets=False):
        raise ValueError(f"unknown dataset {name!r}: not one of the local datasets "
                         f"{IMAGE_DATASETS + TOY_DATASETS} nor a TFDS builder (tfds.list_builders())")


def check_dataset_name(name: str) -> None:
    """Checks that `name` is a local dataset (IMAGE_DATASETS, TOY_DATASETS) or a TFDS builder, reading and
    downloading nothing, so that a misspelled name is the first thing a command says.

    Raises: ValueError naming the dataset and the local ones.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset must be a non-empty name, got {name!r}")
    if name not in IMAGE_DATASETS + TOY_DATASETS + tuple(BINARIZED_DATASETS):
        import tensorflow_datasets as tfds  # lazily: slow to import and needed only here

        _check_tfds_name(tfds, name)


def _tfds_load(tfds, name: str, split: str, data_dir: str | None):
    """(dataset of batches, info) of one TFDS split, downloaded and prepared first when it is not yet.

    Raises: ValueError for an unknown split or config (TFDS explains it); DataUnavailableError within seconds
    when the dataset must be downloaded and no connection is made, or when the download or preparation fails.
    """
    # batch_size=-1 would batch by sys.maxsize when the split size is unknown (tfds.testing.mock_data)
    kwargs = dict(split=split, data_dir=data_dir, batch_size=4096, with_info=True)
    try:
        return tfds.load(name, download=False, **kwargs)
    except AssertionError:  # TFDS's "could not find data in <folder>": not prepared there yet
        pass
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 -- a damaged prepared copy, an unreadable folder, ...
        raise _unavailable(name, None, f"reading it failed ({err})") from err
    builder = tfds.builder(name, data_dir=data_dir)
    problem = _connection_problem(builder)
    if problem is not None:
        raise _unavailable(name, builder, problem)
    try:
        return tfds.load(name, download=True, **kwargs)
    except ValueError:
        raise
    except Exception as err:  # network, checksum, manual-download and preparation failures
        raise _unavailable(name, builder, f"download or preparation failed ({err})") from err


def _tfds_images(tfds, name: str, split: str, data_dir: str | None):
    """uint8 [n, H, W, C] of one TFDS split, and the dataset info (see _tfds_load for what raises)."""
    dataset, info = _tfds_load(tfds, name, split, data_dir)
    if "image" not in dataset.element_spec:
        raise ValueError(f"TFDS dataset {name!r} has no 'image' feature, only {sorted(dataset.element_spec)}")
    try:
        images = np.concatenate([batch["image"] for batch in tfds.as_numpy(dataset)])
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(f"TFDS dataset {name!r}: images differ in size; resize them first") from err
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"TFDS dataset {name!r}: expected uint8 [n, H, W, C] images, got {images.dtype} "
                         f"{images.shape}")
    return images, info


def load_tfds_splits(name: str, data_dir: str | None = None, validation_examples: int = 10_000) -> Splits:
    """Any TFDS image dataset as Splits of uint8 [n, H, W, C].

    Validation = the last min(validation_examples, n_train // 6) train examples; test = the "test" split
    if the dataset has one, else the validation examples. `name` may carry a config or version
    ("cifar10:3.0.2"). A dataset not yet prepared in data_dir (None: TFDS's default folder) is downloaded.
    Raises: ValueError for a name TFDS does not know; DataUnavailableError, within seconds when offline, for
    a dataset that must be downloaded and cannot be.
    """
    import tensorflow_datasets as tfds  # lazily: slow to import and needed only here

    _check_int("validation_examples", validation_examples, 1)
    _check_tfds_name(tfds, name)
    train, info = _tfds_images(tfds, name, "train", data_dir)
    validation_examples = min(validation_examples, len(train) // 6)
    has_test = "test" in info.splits or not info.splits  # mock data declare no splits but serve any
    test = _tfds_images(tfds, name, "test", data_dir)[0] if has_test else None
    return _split_off_validation(name, train, max(validation_examples, 1), test)


def _toy_box(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {TOY_DATASETS}")
    return _TOY_BOXES[name]


def _ring_centers(component: np.ndarray) -> np.ndarray:
    """[..., 2] centres of the given mixture components, evenly spaced on the circle."""
    angle = 2 * np.pi * component / _MOG_COMPONENTS
    return _MOG_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def _toy_raw_samples(name: str, num_examples: int, rng: np.random.Generator) -> np.ndarray:
    """float64 [n, 2] exact samples in the raw space of the toy density. Raises: ValueError for another name."""
    if name == "mixture_of_gaussians":
        centers = _ring_centers(rng.integers(_MOG_COMPONENTS, size=num_examples))  # [n, 2]
        return centers + _MOG_STD * rng.standard_normal((num_examples, 2))
    if name == "banana":
        x2 = 2.0 * rng.standard_normal(num_examples)  # x2 ~ N(0, 4)
        x1 = x2**2 / 4 + rng.standard_normal(num_examples)  # x1 | x2 ~ N(x2^2 / 4, 1)
        return np.stack([x1, x2], axis=1)
    if name == "kidney":  # exact rejection sampler of App. I.2.1's density (toy_densities)
        from infusion_tf import toy_densities

        return toy_densities.kidney_raw_samples(num_examples, rng)
    raise ValueError(f"unknown toy dataset {name!r}; choose one of {TOY_DATASETS}")


def _toy_samples(name: str, num_examples: int, rng: np.random.Generator) -> np.ndarray:
    low, high = _toy_box(name)
    _check_int("num_examples", num_examples, 1)
    unit = 0.05 + 0.9 * (_toy_raw_samples(name, num_examples, rng) - low) / (high - low)
    return np.clip(unit, 0.0, 1.0).astype(np.float32)


def toy_samples(name: str, num_examples: int, seed: int) -> np.ndarray:
    """Exact samples of a toy 2-D density, mapped affinely into [0.05, 0.95]^2 (see toy_to_raw).

    "mixture_of_gaussians": 8 equally weighted Gaussians of std 0.1 evenly on the unit circle.
    "banana": log u(x1, x2) = -1/2 (x2^2 / 4 + (x1 - x2^2 / 4)^2), i.e. x2 ~ N(0, 4), x1 | x2 ~ N(x2^2/4, 1).
    "kidney": Tao et al. (2019), App. I.2.1, by rejection (toy_densities.kidney_raw_samples).
    Returns: float32 [num_examples, 2] in [0, 1].
    """
    _check_int("seed", seed, 0)
    return _toy_samples(name, num_examples, np.random.default_rng(seed))


def toy_to_raw(name: str, x: np.ndarray) -> np.ndarray:
    """Inverse of the fixed affine map of toy_samples: float64 [..., 2] in the raw space of `name`.

    Box per coordinate (x1, x2), mapped onto [0.05, 0.95]: mixture [-1.5, 1.5]^2; banana [-4, 26] x [-10, 10];
    kidney [-5, 5]^2.
    A density in [0, 1]^2 is the raw density times prod((high - low) / 0.9).
    """
    low, high = _toy_box(name)
    return low + (np.asarray(x, np.float64) - 0.05) / 0.9 * (high - low)


def mixture_of_gaussians_log_density(x_raw: np.ndarray) -> np.ndarray:
    """Normalised log density of the 8-Gaussian ring at float [..., 2] raw points; returns float64 [...]."""
    centers = _ring_centers(np.arange(_MOG_COMPONENTS))  # [8, 2]
    sq = np.sum((np.asarray(x_raw, np.float64)[..., None, :] - centers) ** 2, axis=-1)  # [..., 8]
    log_k = -sq / (2 * _MOG_STD**2) - np.log(2 * np.pi * _MOG_STD**2) - np.log(_MOG_COMPONENTS)
    top = np.max(log_k, axis=-1)
    return top + np.log(np.sum(np.exp(log_k - top[..., None]), axis=-1))


def banana_log_density(x_raw: np.ndarray) -> np.ndarray:
    """Normalised log density log N(x2; 0, 4) + log N(x1; x2^2 / 4, 1) at float [..., 2]; float64 [...]."""
    x_raw = np.asarray(x_raw, np.float64)
    x1, x2 = x_raw[..., 0], x_raw[..., 1]
    return -0.5 * (x2**2 / 4 + (x1 - x2**2 / 4) ** 2) - np.log(2 * np.pi) - 0.5 * np.log(4.0)


def _reads_idx(dataset: str, data_dir: str | None) -> bool:
    """Whether an IMAGE_DATASETS name is read from IDX files: the bundled ones, or those in data_dir unless
    data_dir is a TFDS data folder holding the dataset (data_dir/<dataset>/<version>/) and no IDX files."""
    if data_dir is None:
        return dataset in _BUNDLED_MD5
    folder = Path(data_dir)
    idx = any((folder / f"train-images-idx3-ubyte{suffix}").is_file() for suffix in (".gz", ""))
    return idx or not (folder / dataset).is_dir()


def load_splits(dataset: str, data_dir: str | None = None, validation_examples: int = 10_000,
                seed: int = 0) -> Splits:
    """Splits of any supported dataset: local IDX (IMAGE_DATASETS), toy 2-D (TOY_DATASETS), else TFDS.

    Toy splits hold 50000 / validation_examples / 10000 points drawn with independent seeds from `seed`.
    An IMAGE_DATASETS name without IDX files (fashion_mnist without data_dir, or data_dir a TFDS data folder)
    is read through TFDS, which serves both.
    Raises: ValueError for an unknown name or bad files; FileNotFoundError for a missing folder or file;
    DataUnavailableError for a TFDS dataset that is not prepared and cannot be downloaded now.
    """
    if not isinstance(dataset, str) or not dataset.strip():
        raise ValueError(f"dataset must be a non-empty name, got {dataset!r}")
    if dataset in BINARIZED_DATASETS:  # pixels u -> 0 or 255, once per image with a fixed seed (uint8 {0, 255})
        from infusion_tf.binarization import binarize_uint8

        base = load_splits(BINARIZED_DATASETS[dataset], data_dir, validation_examples, seed)
        return Splits(dataset, *(binarize_uint8(a) for a in (base.train, base.validation, base.test)))
    if dataset in IMAGE_DATASETS and _reads_idx(dataset, data_dir):
        return load_idx_splits(dataset, data_dir, validation_examples)
    if dataset in TOY_DATASETS:
        _check_int("seed", seed, 0)
        _check_int("validation_examples", validation_examples, 1)
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
        sizes = (_TRAIN_EXAMPLES, validation_examples, _TEST_EXAMPLES)
        return Splits(dataset, *(_toy_samples(dataset, n, rng) for n, rng in zip(sizes, rngs)))
    return load_tfds_splits(dataset, data_dir, validation_examples)


def splits_fingerprint(splits: Splits) -> str:
    """sha256 of the three arrays of `splits` (dtype, shape and bytes of train, validation, test), hex.

    A fingerprint of content, not of files: the same images read from a moved, recompressed or uncompressed
    copy of the IDX files give the same value; a file with other or fewer images gives another.
    """
    digest = hashlib.sha256()
    for split in ("train", "validation", "test"):
        array = np.ascontiguousarray(getattr(splits, split))
        digest.update(f"{split} {array.dtype.str} {array.shape}\n".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def data_source(dataset: str, data_dir: str | None, splits: Splits) -> dict:
    """Where `splits` (as load_splits(dataset, data_dir) returned them) came from, as JSON-ready values.

    kind: "toy" (generated from the seed; data_dir is ignored), "bundled" (the md5-checked MNIST files inside
    the package), "idx" (the IDX files in data_dir) or "tfds" (TensorFlow Datasets; data_dir None is TFDS's
    default folder). data_dir: an absolute path, or None. fingerprint: splits_fingerprint(splits).
    """
    if dataset in BINARIZED_DATASETS:
        return {**data_source(BINARIZED_DATASETS[dataset], data_dir, splits), "dataset": dataset,
                "binarized_from": BINARIZED_DATASETS[dataset]}
    if dataset in TOY_DATASETS:
        kind, data_dir = "toy", None
    elif dataset in IMAGE_DATASETS and data_dir is None and dataset in _BUNDLED_MD5:
        kind = "bundled"
    elif dataset in IMAGE_DATASETS and data_dir is not None and any(
            (Path(data_dir) / f"train-images-idx3-ubyte{suffix}").is_file() for suffix in (".gz", "")):
        kind = "idx"
    else:  # any other name, or an IMAGE_DATASETS name without IDX files, is read through TFDS
        kind = "tfds"
    return {"dataset": dataset, "kind": kind, "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
            "fingerprint": splits_fingerprint(splits),
            "examples": {split: len(getattr(splits, split)) for split in ("train", "validation", "test")}}


def _two_pass_moments(array: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and (population) variance, float64, in chunks of `chunk` examples."""
    total = np.zeros(array.shape[1:], np.float64)
    for start in range(0, len(array), chunk):
        total += np.sum(array[start:start + chunk], axis=0, dtype=np.float64)
    mean = total / len(array)
    squares = np.zeros_like(mean)
    for start in range(0, len(array), chunk):
        squares += np.sum(np.square(array[start:start + chunk] - mean), axis=0)
    return mean, squares / len(array)


def pixel_statistics(array: np.ndarray, dequantize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and variance of the data as `to_unit_interval` presents it to the model.

    uint8 with dequantize, x = (u + U[0, 1)) / 256: E[x] = (E[u] + 1/2) / 256,
    Var[x] = Var[u] / 256^2 + 1 / (12 * 256^2); uint8 without: moments of u / 255; float data: as is.
    Returns: (mean, variance), float64 of shape example_shape.
    """
    _check_data_array(array, "pixel_statistics")
    mean, variance = _two_pass_moments(array)
    if array.dtype != np.uint8:
        return mean, variance
    if dequantize:
        return (mean + 0.5) / 256, variance / 256**2 + 1 / (12 * 256**2)
    return mean / 255, variance / 255**2


def to_unit_interval(batch: tf.Tensor, dequantize: bool, seed: tf.Tensor | None) -> tf.Tensor:
    """Pixels as the model sees them: float32 of the same shape as `batch`.

    uint8: (u + U[0, 1)) / 256 in [u / 256, (u + 1) / 256) with noise from tf.random.stateless_uniform(seed)
    when dequantize, else u / 255 in [0, 1]. Float input (toy data) is returned as float32 unchanged.
    seed: int [2], required when dequantizing uint8.
    """
    batch = tf.convert_to_tensor(batch)
    if batch.dtype.is_floating:
        return tf.cast(batch, tf.float32)
    if batch.dtype != tf.uint8:
        raise ValueError(f"to_unit_interval expects uint8 pixels or float data, got {batch.dtype.name}")
    pixels = tf.cast(batch, tf.float32)
    if not dequantize:
        return pixels / 255.0
    if seed is None:
        raise ValueError("to_unit_interval(dequantize=True) needs a seed of shape [2]")
    noise = tf.random.stateless_uniform(tf.shape(batch), seed=seed, dtype=tf.float32, alg="philox")
    # In float32, u + noise rounds up to u + 1 for noise within 2^-17 of 1 (u >= 128): keep each value
    # inside its own bin [u / 256, (u + 1) / 256), so floor(256 x) = u and x < 1.
    top = tf.math.nextafter((pixels + 1.0) / 256.0, tf.zeros_like(pixels))
    return tf.minimum((pixels + noise) / 256.0, top)


def _derived_seed(seed: int, tag: int, *indices) -> tf.Tensor:
    """int64 [2] seed for stream `tag` at the given (epoch, batch, ...) indices."""
    key = tf.constant([seed, tag], tf.int64)
    for index in indices:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64), alg="philox")
    return key


def _pipeline_checks(array, batch_size: int, seed: int) -> None:
    _check_data_array(array, "dataset array")
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)


def _without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset with tf.data's autotuning thread off (map and prefetch keep their AUTOTUNE defaults).

    Deleting an iterator can block until that thread next wakes up, and its period backs off to 60 s in
    a long run: a training run stopped by SIGTERM then seemed to hang. These pipelines are a gather and
    a noise draw per batch and need no tuning.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _host_tensor(array: np.ndarray) -> tf.Tensor:
    """[n, *example_shape] uint8 (or float32) in host memory, where tf.data gathers its batches."""
    with tf.device("/cpu:0"):
        return tf.constant(array if array.dtype == np.uint8 else array.astype(np.float32))


def make_train_dataset(array: np.ndarray, batch_size: int, *, seed: int, dequantize: bool,
                       initial_epoch: int = 0, epochs: int = 1) -> tuple[tf.data.Dataset, int]:
    """Shuffled float32 batches [batch_size, *example_shape] for epochs initial_epoch .. epochs - 1.

    Epoch e is a stateless shuffle seeded by (seed, e) and batch b of it is dequantized with noise seeded by
    (seed, e, b), so starting at initial_epoch = k replays epoch k onwards of an uninterrupted run. The last
    n % batch_size examples of each shuffle are dropped. Returns (dataset, steps_per_epoch = n // batch_size);
    pass both to Model.fit(dataset, steps_per_epoch=..., initial_epoch=..., epochs=...) so Keras reads on.
    """
    _pipeline_checks(array, batch_size, seed)
    _check_int("epochs", epochs, 1)
    _check_int("initial_epoch", initial_epoch, 0)
    if initial_epoch >= epochs:
        raise ValueError(f"initial_epoch={initial_epoch} must be below epochs={epochs}")
    n = len(array)
    if n < batch_size:
        raise ValueError(f"the array has {n} examples, fewer than batch_size={batch_size}")
    steps = n // batch_size
    data = _host_tensor(array)  # [n, *example_shape]

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        shuffle_seed = _derived_seed(seed, _SHUFFLE_TAG, epoch)
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), shuffle_seed, alg="philox")
        indices = tf.reshape(order[:steps * batch_size], [steps, batch_size])
        return tf.data.Dataset.from_tensor_slices((tf.fill([steps], epoch), tf.range(steps, dtype=tf.int64),
                                                   indices))

    def to_batch(epoch: tf.Tensor, step: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
        noise_seed = _derived_seed(seed, _NOISE_TAG, epoch, step)
        return to_unit_interval(tf.gather(data, indices), dequantize, noise_seed)

    dataset = tf.data.Dataset.range(initial_epoch, epochs).flat_map(epoch_batches)
    dataset = dataset.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality((epochs - initial_epoch) * steps))
    return _without_autotune(dataset.prefetch(tf.data.AUTOTUNE)), steps


def make_eval_dataset(array: np.ndarray, batch_size: int, *, seed: int, dequantize: bool) -> tf.data.Dataset:
    """float32 batches [<= batch_size, *example_shape] of `array` in order, the last partial batch kept.

    Batch b is dequantized with noise seeded by (seed, b), so an evaluation is reproducible.
    """
    _pipeline_checks(array, batch_size, seed)
    data = _host_tensor(array)  # [n, *example_shape]

    def to_batch(index: tf.Tensor) -> tf.Tensor:
        batch = data[index * batch_size:(index + 1) * batch_size]
        return to_unit_interval(batch, dequantize, _derived_seed(seed, _EVAL_TAG, index))

    dataset = tf.data.Dataset.range(math.ceil(len(array) / batch_size))
    dataset = dataset.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _without_autotune(dataset.prefetch(tf.data.AUTOTUNE))


def eval_points(array: np.ndarray, *, seed: int, dequantize: bool) -> np.ndarray:
    """The examples of `array` as the model sees them, in order: make_eval_dataset's batches of 1000, dequantized
    with noise fixed by `seed`, in one array. What the estimators, figures and export checks evaluate.

    Returns: float32 [n, *example_shape].
    """
    dataset = make_eval_dataset(array, 1000, seed=seed, dequantize=dequantize)
    return np.concatenate([np.asarray(batch) for batch in dataset], axis=0)
