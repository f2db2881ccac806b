"""Tests of infusion_tf.export: the SavedModel's signatures, its standalone reload, and the command line."""

import dataclasses
import os
import subprocess
import sys
import textwrap
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from infusion_tf import PRESETS, InfusionConfig, InfusionModel
from infusion_tf.config import save_config
from infusion_tf.export import export_from_checkpoint, export_saved_model, main

CONFIG = InfusionConfig(width=32, depth=1, num_steps=3, sampling_steps=4, batch_size=32)
MAX_SAMPLES = 512  # > CHUNK_SIZE, so a request of 300 runs in two chunks


def _images(n, seed=0):
    """Blurry random blobs in [0, 1], float32 [n, 28, 28, 1]: enough structure for non-trivial BN stats."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(size=(n, 7, 7, 1))
    return np.clip(np.kron(coarse, np.ones((1, 4, 4, 1))) + 0.05 * rng.normal(size=(n, 28, 28, 1)),
                   0.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    model = InfusionModel(CONFIG)
    x = _images(64)
    model.set_prior(x.mean(axis=0), x.var(axis=0))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(x, batch_size=32, epochs=1, verbose=0)
    norm = model.step_batch_norms()[0]
    assert not np.allclose(norm.moving_mean.numpy(), 0.0)  # the export must carry trained statistics
    assert not np.allclose(norm.moving_variance.numpy(), 1.0)
    return model


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_saved_model(model, str(tmp_path_factory.mktemp("export") / "saved_model"), MAX_SAMPLES)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


@pytest.mark.parametrize("num_samples,num_steps,seed", [(5, 4, 7), (300, 6, 1)])
def test_sample_matches_model_sample(model, loaded, num_samples, num_steps, seed):
    images = loaded.sample(num_samples=num_samples, num_steps=num_steps, seed=seed)["images"].numpy()
    expected = model.sample(num_samples, num_steps, seed=seed).numpy()
    assert images.shape == (num_samples, 28, 28, 1)
    np.testing.assert_allclose(images, expected, atol=1e-5)
    again = loaded.signatures["sample"](num_samples=tf.constant(num_samples), num_steps=tf.constant(num_steps),
                                        seed=tf.constant(seed))["images"].numpy()
    np.testing.assert_array_equal(again, images)
    other = loaded.sample(num_samples=num_samples, num_steps=num_steps, seed=seed + 1)["images"].numpy()
    assert not np.allclose(other, images)


def test_inpaint_matches_model_inpaint(model, loaded):
    x = _images(3, seed=1)
    mask = (np.random.default_rng(2).uniform(size=x.shape) < 0.5).astype(np.float32)
    filled = loaded.inpaint(images=x, mask=mask, num_steps=4, seed=3)["images"].numpy()
    np.testing.assert_allclose(filled, model.inpaint(x, mask, 4, seed=3).numpy(), atol=1e-5)
    np.testing.assert_array_equal(filled[mask == 1], x[mask == 1])


def test_saved_model_holds_core_tf_ops_only(exported):
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(exported, "saved_model.pb"), "rb") as f:
        raw = f.read()
    proto.ParseFromString(raw)
    (meta_graph,) = proto.meta_graphs
    ops = {node.op for node in meta_graph.graph_def.node}
    library = meta_graph.graph_def.library
    function_names = {function.signature.name for function in library.function}
    for function in library.function:
        ops |= {node.op for node in function.node_def}
    unknown = sorted(op for op in ops - function_names if not hasattr(tf.raw_ops, op))
    assert not unknown, f"ops outside core TensorFlow: {unknown}"
    assert b"tensorflow_probability" not in raw and b"tfp." not in raw
    assert set(meta_graph.signature_def) >= {"sample", "inpaint"}
    identifiers = {node.user_object.identifier for node in meta_graph.object_graph_def.nodes
                   if node.HasField("user_object")}
    assert identifiers <= {"_generic_user_object", "trackable_list_wrapper", "trackable_dict_wrapper",
                           "signature_map"}, identifiers  # no Keras or TFP objects to revive


@pytest.mark.parametrize("preset_name,width", [("banana", 16), ("cifar10", 8)])
def test_toy_and_conv_models_export(preset_name, width, tmp_path):
    config = dataclasses.replace(PRESETS[preset_name], width=width, num_steps=2)
    model = InfusionModel(config)
    path = export_saved_model(model, str(tmp_path / "saved_model"), max_samples=40, chunk_size=16)
    loaded = tf.saved_model.load(path)
    images = loaded.sample(num_samples=33, num_steps=3, seed=5)["images"].numpy()  # three chunks of 11
    assert images.shape == (33, *config.example_shape)
    np.testing.assert_allclose(images, model.sample(33, 3, seed=5).numpy(), atol=1e-5)


def test_export_replaces_old_export_and_leaves_nothing_else(model, tmp_path):
    path = tmp_path / "out"
    export_saved_model(model, str(path), max_samples=8)
    export_saved_model(model, str(path), max_samples=8)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert os.path.isfile(path / "saved_model.pb")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not overwriting"):
        export_saved_model(model, str(tmp_path / "precious"))
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="max_samples"):
        export_saved_model(model, str(path), max_samples=0)


_FRESH_PROCESS = """
import numpy as np
for blocked in ("tensorflow_probability", "infusion_tf", "keras"):
    try:
        __import__(blocked)
    except ImportError as e:
        assert "blocked" in str(e), e
    else:
        raise AssertionError(blocked + " is importable")
import tensorflow as tf

loaded = tf.saved_model.load(PATH)
images = loaded.signatures["sample"](num_samples=tf.constant(6), num_steps=tf.constant(5),
                                     seed=tf.constant(7))["images"].numpy()
assert images.shape == (6, 28, 28, 1), images.shape
assert images.min() >= 0.0 and images.max() <= 1.0
np.testing.assert_allclose(images, np.load(EXPECTED), atol=1e-5)

x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype(np.float32)
mask = np.zeros_like(x)
mask[:, :14] = 1.0  # top half known
filled = loaded.inpaint(images=x, mask=mask, num_steps=3, seed=1)["images"].numpy()
assert filled.shape == x.shape and filled.min() >= 0.0 and filled.max() <= 1.0
np.testing.assert_array_equal(filled[:, :14], x[:, :14])
assert not np.allclose(filled[:, 14:], x[:, 14:])

def fails(call, expected):
    try:
        call()
    except tf.errors.InvalidArgumentError as e:
        assert expected in e.message, e.message
    else:
        raise AssertionError("no error for " + expected)

fails(lambda: loaded.sample(num_samples=0, num_steps=3, seed=0), "num_samples must be >= 1")
fails(lambda: loaded.sample(num_samples=MAX + 1, num_steps=3, seed=0), "num_samples must be <= %d" % MAX)
fails(lambda: loaded.sample(num_samples=2, num_steps=0, seed=0), "num_steps must be >= 1")
fails(lambda: loaded.inpaint(images=x, mask=mask * 0.5, num_steps=3, seed=0), "mask values must be 0")
fails(lambda: loaded.inpaint(images=x + 1.0, mask=mask, num_steps=3, seed=0), "images must be in [0, 1]")
fails(lambda: loaded.inpaint(images=x, mask=mask[:1], num_steps=3, seed=0), "same shape")
print("fresh process ok")
"""


def test_reload_in_fresh_process_without_tfp_or_infusion_tf(model, exported, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("tensorflow_probability", "infusion_tf", "keras"):
        (blocked / f"{name}.py").write_text('raise ImportError("blocked")\n')
    expected = tmp_path / "expected.npy"
    np.save(expected, model.sample(6, 5, seed=7).numpy())
    script = (f"PATH, EXPECTED, MAX = {exported!r}, {str(expected)!r}, {MAX_SAMPLES}\n"
              + textwrap.dedent(_FRESH_PROCESS))
    env = {**os.environ, "PYTHONPATH": str(blocked), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", script], cwd=blocked, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "fresh process ok" in result.stdout


def _call_in_threads(calls: dict, times: int) -> dict:
    """{key: [calls[key]() repeated `times` times]}, one thread per key, all released together by a barrier."""
    results, errors = {key: [] for key in calls}, []
    barrier = threading.Barrier(len(calls))

    def worker(key):
        try:
            barrier.wait()
            for _ in range(times):
                results[key].append(calls[key]())
        except Exception as e:  # surfaced below; a thread's exception does not fail the test by itself
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(key,)) for key in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def test_concurrent_requests_match_single_threaded(loaded):
    seeds = list(range(8))
    call = loaded.signatures["sample"]
    request = lambda s: call(num_samples=tf.constant(16), num_steps=tf.constant(4),  # noqa: E731
                             seed=tf.constant(s))["images"].numpy()
    expected = {s: request(s) for s in seeds}
    results = _call_in_threads({s: (lambda s=s: request(s)) for s in seeds}, times=3)
    for s in seeds:
        for images in results[s]:
            np.testing.assert_array_equal(images, expected[s])


@pytest.fixture
def run_folder(model, tmp_path):
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    save_config(model.config, str(folder))
    model.save_weights(str(folder / "checkpoints" / "last.weights.h5"))
    return folder


def test_command_line_exports_a_run_folder(model, run_folder):
    result = subprocess.run([sys.executable, "-m", "infusion_tf.export", "--checkpoint", str(run_folder),
                             "--weights", "last", "--max-samples", "32"], cwd=run_folder, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-4000:]
    path = str(run_folder / "saved_model")
    assert result.stdout.strip().splitlines()[-1] == path
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.sample(num_samples=4, num_steps=4, seed=2)["images"].numpy(),
                               model.sample(4, 4, seed=2).numpy(), atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples must be <= 32"):
        loaded.sample(num_samples=33, num_steps=1, seed=0)


def test_command_line_missing_folder_exits_2(tmp_path):
    missing = str(tmp_path / "no_such_run")
    result = subprocess.run([sys.executable, "-m", "infusion_tf.export", "--checkpoint", missing],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 2
    assert f"error: checkpoint folder {missing!r} does not exist" in result.stderr


def test_weights_from_another_architecture_exit_2(run_folder, tmp_path, capsys):
    narrow = InfusionModel(dataclasses.replace(CONFIG, width=16))
    weights = str(tmp_path / "narrow.weights.h5")
    narrow.save_weights(weights)
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(run_folder), "--weights", weights, "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and weights in message and "config.json" in message
    assert "width=32" in message
    assert not os.path.exists(tmp_path / "out")


def test_export_from_checkpoint_paths(model, run_folder, tmp_path):
    explicit = str(run_folder / "checkpoints" / "last.weights.h5")
    out = export_from_checkpoint(str(run_folder), str(tmp_path / "explicit"), weights=explicit, max_samples=4)
    assert out == str(tmp_path / "explicit")
    with pytest.raises(FileNotFoundError, match="best.weights.h5"):
        export_from_checkpoint(str(run_folder), weights="best")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_from_checkpoint(str(run_folder), weights=str(tmp_path / "nope.weights.h5"))
    (tmp_path / "no_config").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        export_from_checkpoint(str(tmp_path / "no_config"))
    os.remove(explicit)
    with pytest.raises(FileNotFoundError, match="last.weights.h5"):
        export_from_checkpoint(str(run_folder))


# --- requests that must fail cleanly, bounded work per request, concurrent callers

_BAD_REQUESTS = """
import numpy as np
import tensorflow as tf

loaded = tf.saved_model.load(PATH)
x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype(np.float32)
mask = np.zeros_like(x)
mask[:, :14] = 1.0
sig_sample, sig_inpaint = loaded.signatures["sample"], loaded.signatures["inpaint"]
t = lambda value, dtype=None: tf.constant(value, dtype)  # noqa: E731
BAD = [  # (name, call, words of the error message)
    ("num_samples 0", lambda: loaded.sample(num_samples=0, num_steps=3, seed=0), "num_samples must be >= 1"),
    ("num_samples -4", lambda: loaded.sample(num_samples=-4, num_steps=3, seed=0), "num_samples must be >= 1"),
    ("num_samples above the limit", lambda: loaded.sample(num_samples=MAX + 1, num_steps=3, seed=0),
     "num_samples must be <= %d" % MAX),
    ("num_samples 2**31 - 1", lambda: loaded.sample(num_samples=2**31 - 1, num_steps=3, seed=0), "must be <="),
    ("num_samples float", lambda: loaded.sample(num_samples=2.5, num_steps=3, seed=0), "int32"),
    ("num_samples int64 tensor", lambda: loaded.sample(num_samples=t(2, tf.int64), num_steps=3, seed=0), "int32"),
    ("num_samples vector", lambda: loaded.sample(num_samples=[2, 3], num_steps=3, seed=0), "shape"),
    ("num_samples float, signature", lambda: sig_sample(num_samples=t(2.0), num_steps=t(3), seed=t(0)), "int32"),
    ("num_steps 0", lambda: loaded.sample(num_samples=2, num_steps=0, seed=0), "num_steps must be >= 1"),
    ("num_steps above the limit", lambda: loaded.sample(num_samples=1, num_steps=10**6, seed=0),
     "num_steps must be <= 1000"),
    ("missing argument, signature", lambda: sig_sample(num_samples=t(2), seed=t(0)), "num_steps"),
    ("images float64 tensor", lambda: loaded.inpaint(images=t(x, tf.float64), mask=mask, num_steps=3, seed=0),
     "float64"),
    ("images float64, signature", lambda: sig_inpaint(images=t(x, tf.float64), mask=t(mask), num_steps=t(3),
                                                      seed=t(0)), "double"),
    ("images uint8", lambda: loaded.inpaint(images=(x * 255).astype(np.uint8), mask=mask, num_steps=3, seed=0),
     "images must be in [0, 1]"),
    ("images 27 x 28", lambda: loaded.inpaint(images=x[:, :27], mask=mask[:, :27], num_steps=3, seed=0), "27"),
    ("images rank 3", lambda: loaded.inpaint(images=x[..., 0], mask=mask[..., 0], num_steps=3, seed=0), "shape"),
    ("images 27 x 28, signature", lambda: sig_inpaint(images=t(x[:, :27]), mask=t(mask[:, :27]), num_steps=t(3),
                                                      seed=t(0)), "images must have shape [batch, 28, 28, 1]"),
    ("images rank 3, signature", lambda: sig_inpaint(images=t(x[..., 0]), mask=t(mask[..., 0]), num_steps=t(3),
                                                     seed=t(0)), "images must have shape [batch, 28, 28, 1]"),
    ("images rank 5, signature", lambda: sig_inpaint(images=t(x[..., None]), mask=t(mask[..., None]),
                                                     num_steps=t(3), seed=t(0)), "must have shape"),
    ("images NaN", lambda: loaded.inpaint(images=np.full_like(x, np.nan), mask=mask, num_steps=3, seed=0),
     "images must be in [0, 1]"),
    ("images above 1", lambda: loaded.inpaint(images=x + 1.0, mask=mask, num_steps=3, seed=0),
     "images must be in [0, 1]"),
    ("mask 0.5", lambda: loaded.inpaint(images=x, mask=mask * 0.5, num_steps=3, seed=0), "mask values must be 0"),
    ("mask 2", lambda: loaded.inpaint(images=x, mask=mask * 2, num_steps=3, seed=0), "mask values must be 0"),
    ("mask NaN", lambda: loaded.inpaint(images=x, mask=np.full_like(x, np.nan), num_steps=3, seed=0),
     "mask values must be 0"),
    ("mask of another batch", lambda: loaded.inpaint(images=x, mask=mask[:1], num_steps=3, seed=0), "same shape"),
    ("empty batch", lambda: loaded.inpaint(images=x[:0], mask=mask[:0], num_steps=3, seed=0),
     "the batch size of images must be >= 1"),
    ("batch above the limit", lambda: loaded.inpaint(images=np.repeat(x, MAX, 0), mask=np.repeat(mask, MAX, 0),
                                                     num_steps=1, seed=0), "must be <= %d" % MAX),
]
for name, call, words in BAD:
    try:
        call()
    except (TypeError, ValueError, tf.errors.InvalidArgumentError) as e:
        message = getattr(e, "message", str(e))
        assert words in message, (name, message[:2000])
    else:
        raise AssertionError("no error for " + name)
# The model still answers a good request after all of them.
good = loaded.inpaint(images=x, mask=mask, num_steps=3, seed=1)["images"].numpy()
assert good.shape == x.shape and np.isfinite(good).all()
np.testing.assert_array_equal(good[:, :14], x[:, :14])
print("%d bad requests refused" % len(BAD))
"""


def test_bad_requests_are_refused_with_clear_errors_in_a_fresh_process(exported):
    """Wrong shapes, dtypes, ranges and masks, through the functions and the signatures: a Python exception
    naming the problem for each (in a fresh process, so a crash would show as a failed process)."""
    script = f"PATH, MAX = {exported!r}, {MAX_SAMPLES}\n" + textwrap.dedent(_BAD_REQUESTS)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "27 bad requests refused" in result.stdout


def test_the_operator_sees_at_most_chunk_size_examples(model):
    """A request of n examples runs the operator on chunks of at most chunk_size rows (bounded activations),
    with the same result as one call on all n (moving batch-norm statistics act per example)."""
    from infusion_tf.export import _chunked_operator

    rows = tf.Variable(0)

    def recording(z, step, **kwargs):
        rows.assign(tf.maximum(rows, tf.shape(z)[0]))
        return model.operator(z, step=step)

    z = tf.constant(_images(300, seed=4))
    for chunk_size, largest in ((64, 60), (256, 150), (512, 300)):  # 300 rows in 5, 2 and 1 balanced chunks
        rows.assign(0)
        mean, variance = _chunked_operator(recording, chunk_size)(z, tf.constant(1))
        assert int(rows.numpy()) == largest
        expected_mean, expected_variance = model.operator(z, step=1)
        np.testing.assert_allclose(mean.numpy(), expected_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(variance.numpy(), expected_variance.numpy(), rtol=1e-5, atol=1e-7)


def test_eight_threads_mixing_sample_and_inpaint_get_single_threaded_results(loaded):
    x = _images(4, seed=5)
    mask = (np.random.default_rng(6).uniform(size=x.shape) < 0.5).astype(np.float32)
    requests = {s: (lambda s=s: loaded.sample(num_samples=8, num_steps=4, seed=s)["images"].numpy()) if s % 2 else
                (lambda s=s: loaded.inpaint(images=x, mask=mask, num_steps=4, seed=s)["images"].numpy())
                for s in range(8)}
    expected = {s: request() for s, request in requests.items()}
    results = _call_in_threads(requests, times=3)
    for s in requests:
        assert len(results[s]) == 3
        for images in results[s]:
            np.testing.assert_array_equal(images, expected[s])
