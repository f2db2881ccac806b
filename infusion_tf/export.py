"""SavedModel export of a trained InfusionModel, with `sample` and `inpaint` serving signatures.

    path = export_saved_model(model, "runs/mnist/saved_model")
    loaded = tf.saved_model.load(path)           # needs neither infusion_tf nor tensorflow_probability
    images = loaded.sample(num_samples=16, num_steps=30, seed=0)["images"]       # [16, 28, 28, 1]
    filled = loaded.inpaint(images=x, mask=m, num_steps=30, seed=0)["images"]   # x, m: [B, 28, 28, 1]

    python -m infusion_tf.export --checkpoint runs/mnist [--weights best|last|PATH] [--output PATH]

Both signatures run the model sampling chain (Section 2.2, `chains.sampling_chain`) with the moving
batch-normalization statistics and return the last step's means, as the paper's figures do. Seed s is
the stateless seed [s, 0], so `sample` equals `model.sample(n, steps, seed=s)`. Requests are checked in
the graph before any work (`tf.errors.InvalidArgumentError` with a readable message):
1 <= batch <= max_samples (default 1024), 1 <= num_steps <= max_steps (default 1000), images and mask of
shape [batch, *example_shape], images in [0, 1], mask values in {0, 1}. Arguments of another dtype are
refused when the function binds them (TypeError; through `signatures[...]`, InvalidArgumentError), except
that Python numbers and numpy arrays are converted. The operator runs on at most `chunk_size` examples at
a time, so activations stay bounded for any allowed batch; one loaded SavedModel serves concurrent calls.
"""

from __future__ import annotations

import os
import shutil
import sys

if __name__ == "__main__":  # run as `python -m infusion_tf.export`: hide TensorFlow's start-up log before importing it
    from infusion_tf.console import quiet_tensorflow_logs

    quiet_tensorflow_logs()

import keras
import tensorflow as tf

from infusion_tf import chains
from infusion_tf.checkpoint import find_weights, load_checkpoint
from infusion_tf.console import BAD_INPUT, OneLineErrorParser, check_output_folder, print_error
from infusion_tf.model import InfusionModel
from infusion_tf.protocol import capabilities

__all__ = ["export_saved_model", "export_from_checkpoint", "find_weights", "main", "DEFAULT_MAX_SAMPLES",
           "DEFAULT_MAX_STEPS", "CHUNK_SIZE"]

DEFAULT_MAX_SAMPLES = 1024  # largest batch one request may ask for; the output alone is n * d floats
DEFAULT_MAX_STEPS = 1000  # longest chain one request may ask for (the paper samples 30 steps), bounding its time
CHUNK_SIZE = 256  # examples per operator call inside a request
SAVED_MODEL_DIRNAME = "saved_model"


def _chunked_operator(operator, chunk_size: int):
    """Wraps operator(z, step) so that it runs on at most `chunk_size` examples at a time.

    With moving batch-norm statistics each example is transformed independently, so chunking leaves the
    result unchanged. z: [n, ...] -> (mean, variance), each float32 [n, ...].
    """
    def apply(z, step, use_batch_statistics=False, update_statistics=False):
        if use_batch_statistics or update_statistics:
            raise ValueError("the exported chain uses the moving batch-normalization statistics")
        n = tf.shape(z)[0]
        num_chunks = (n + chunk_size - 1) // chunk_size
        size = (n + num_chunks - 1) // num_chunks  # balanced chunks: at most num_chunks - 1 padded rows
        padding = [[0, num_chunks * size - n]] + [[0, 0]] * (len(z.shape) - 1)
        chunks = tf.reshape(tf.pad(z, padding), tf.concat([[num_chunks, size], tf.shape(z)[1:]], 0))
        mean, variance = tf.map_fn(lambda c: operator(c, step=step), chunks, parallel_iterations=1,
                                   fn_output_signature=(tf.float32, tf.float32))  # [chunks, size, ...]
        shape = tf.concat([[num_chunks * size], tf.shape(z)[1:]], 0)
        return tf.reshape(mean, shape)[:n], tf.reshape(variance, shape)[:n]

    return apply


def _checked(value, checks):
    """`value` once every assert in `checks` has passed, so no op runs on an invalid request."""
    with tf.control_dependencies(checks):
        return tf.identity(value)


def _sampling_functions(model: InfusionModel, max_samples: int, chunk_size: int, max_steps: int):
    """The endpoints: sample(num_samples, num_steps, seed), and inpaint(images, mask, num_steps, seed) for a model
    with the "inpaint" capability (protocol.py). A model with a sampling chain ("chain") runs it here, its operator
    on at most chunk_size examples at a time; any other model serves its own sample()."""
    caps = capabilities(model)
    shape = tuple(model.config.example_shape)
    scalar = lambda name: tf.TensorSpec([], tf.int32, name=name)  # noqa: E731
    image_spec = lambda name: tf.TensorSpec([None, *shape], tf.float32, name=name)  # noqa: E731

    def check_steps(num_steps):
        return [tf.debugging.assert_greater_equal(num_steps, 1, message="num_steps must be >= 1"),
                tf.debugging.assert_less_equal(num_steps, max_steps, message=(
                    f"num_steps must be <= {max_steps}, the limit set at export (max_steps)"))]

    def check_shape(value, name):
        # A concrete signature does not check its inputs against their static shape [None, *shape], and
        # the static rank lets TensorFlow fold a rank test away: compare the dimensions as one string.
        dims = tf.shape(value)
        matches = tf.equal(tf.strings.reduce_join(tf.strings.as_string(dims[1:]), separator=","),
                           ",".join(map(str, shape)))
        return tf.debugging.Assert(matches, [f"{name} must have shape [batch, {', '.join(map(str, shape))}], got",
                                             dims])

    def check_batch(n, name):
        return [tf.debugging.assert_greater_equal(n, 1, message=f"{name} must be >= 1"),
                tf.debugging.assert_less_equal(n, max_samples, message=(
                    f"{name} must be <= {max_samples}, the limit set at export (max_samples); "
                    "split larger requests"))]

    if "chain" not in caps:
        def sample(num_samples, num_steps, seed):
            """num_samples, num_steps, seed: int32 scalars -> {"images": float32 [num_samples, *example_shape]}."""
            checks = check_batch(num_samples, "num_samples") + check_steps(num_steps)
            images = model.sample(_checked(num_samples, checks), _checked(num_steps, checks),
                                  seed=tf.stack([seed, tf.constant(0, tf.int32)]))
            return {"images": tf.cast(images, tf.float32)}

        return ((sample, [scalar("num_samples"), scalar("num_steps"), scalar("seed")]),)
    operator = _chunked_operator(model.operator, chunk_size)

    def run_chain(num_samples, num_steps, seed, known=None, mask=None):
        images = chains.sampling_chain(
            operator, model.prior_mean, model.prior_variance, num_samples, num_steps,
            tf.stack([seed, tf.constant(0, tf.int32)]), return_means=True, known=known, mask=mask)
        return {"images": tf.clip_by_value(images, 0.0, 1.0)}

    def sample(num_samples, num_steps, seed):
        """num_samples, num_steps, seed: int32 scalars -> {"images": float32 [num_samples, *example_shape]}."""
        checks = check_batch(num_samples, "num_samples") + check_steps(num_steps)
        return run_chain(_checked(num_samples, checks), _checked(num_steps, checks), seed)

    def inpaint(images, mask, num_steps, seed):
        """images, mask: float32 [B, *example_shape]; mask = 1 marks known pixels -> {"images": [B, ...]}."""
        checks = [
            check_shape(images, "images"),
            check_shape(mask, "mask"),
            tf.debugging.assert_equal(tf.shape(images), tf.shape(mask),
                                      message="images and mask must have the same shape"),
            *check_batch(tf.shape(images)[0], "the batch size of images"),
            *check_steps(num_steps),
            tf.debugging.assert_greater_equal(images, 0.0, message="images must be in [0, 1]"),
            tf.debugging.assert_less_equal(images, 1.0, message="images must be in [0, 1]"),
            tf.debugging.Assert(tf.reduce_all((mask == 0.0) | (mask == 1.0)),
                                ["mask values must be 0 (unknown) or 1 (known)"]),
        ]
        images, mask = _checked(images, checks), _checked(mask, checks)
        return run_chain(tf.shape(images)[0], _checked(num_steps, checks), seed, known=images, mask=mask)

    endpoints = [(sample, [scalar("num_samples"), scalar("num_steps"), scalar("seed")])]
    if "inpaint" in caps:
        endpoints.append((inpaint, [image_spec("images"), image_spec("mask"), scalar("num_steps"), scalar("seed")]))
    return tuple(endpoints)


def _clear_destination(path: str, remove: bool = True) -> None:
    """Removes an earlier export at `path` (only checks with remove=False); refuses anything that is not one."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise ValueError(f"export path {path!r} exists and is not a SavedModel folder; not overwriting it")
    if os.listdir(path) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ValueError(f"export path {path!r} is a non-empty folder without saved_model.pb; not overwriting it")
    if remove:
        shutil.rmtree(path)


def export_saved_model(model: InfusionModel, path: str, max_samples: int = DEFAULT_MAX_SAMPLES, *,
                       chunk_size: int = CHUNK_SIZE, max_steps: int = DEFAULT_MAX_STEPS) -> str:
    """Writes a SavedModel with the `sample` and `inpaint` signatures (module docstring); returns `path`.

    The SavedModel holds the model's variables and core TensorFlow ops only (no Keras or TFP objects).
    It is written to `path + ".tmp"` and renamed to `path`, replacing an earlier export there.
    Raises: ValueError if max_samples, chunk_size or max_steps is not an integer >= 1, or `path` holds
    something other than a SavedModel; OSError if the folder above `path` cannot be created or written.
    """
    for name, value in (("max_samples", max_samples), ("chunk_size", chunk_size), ("max_steps", max_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    path = os.fspath(path).rstrip(os.sep) or os.sep
    _clear_destination(path, remove=False)  # fail before the export's work, not after it
    check_output_folder(os.path.dirname(os.path.abspath(path)))
    archive = keras.export.ExportArchive()
    archive.track(model)
    for fn, signature in _sampling_functions(model, max_samples, min(chunk_size, max_samples), max_steps):
        archive.add_endpoint(fn.__name__, fn, input_signature=signature)
    tmp = path + ".tmp"
    _clear_destination(tmp)
    try:
        archive.write_out(tmp, verbose=False)
        _clear_destination(path)
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return path


def export_from_checkpoint(checkpoint_dir: str, output: str | None = None, *, weights: str | None = None,
                           max_samples: int = DEFAULT_MAX_SAMPLES, max_steps: int = DEFAULT_MAX_STEPS) -> str:
    """Rebuilds the model of a run folder (config.json + weights) and exports it; returns the export path.

    output defaults to `<checkpoint_dir>/saved_model`; `weights` as in `find_weights`.
    Raises: FileNotFoundError naming a missing folder, config or weights file; ValueError when the
    weights do not fit the config's architecture.
    """
    model = load_checkpoint(checkpoint_dir, weights)
    if output is None:
        output = os.path.join(checkpoint_dir, SAVED_MODEL_DIRNAME)
    return export_saved_model(model, output, max_samples, max_steps=max_steps)


def main(argv: list[str] | None = None) -> None:
    """`python -m infusion_tf.export --checkpoint DIR [--weights best|last|PATH] [--output PATH] [--max-samples N]
    [--max-steps N]`.

    Prints the export path; on bad flags or a missing or mismatched checkpoint prints one `error: ...` line
    and exits with status 2, writing nothing.
    """
    parser = OneLineErrorParser(prog="python -m infusion_tf.export", description=(
        "Export a trained infusion model as a SavedModel with 'sample' and 'inpaint' signatures."))
    parser.add_argument("--checkpoint", required=True, help="run folder holding config.json and checkpoints/")
    parser.add_argument("--weights", default=None,
                        help="best, last, or a .weights.h5 path (default: best if present, else last)")
    parser.add_argument("--output", default=None, help="SavedModel folder (default: CHECKPOINT/saved_model)")
    parser.add_argument("--max-samples", type=int, default=DEFAULT_MAX_SAMPLES,
                        help=f"largest batch one request may ask for (default {DEFAULT_MAX_SAMPLES})")
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS,
                        help=f"longest chain one request may ask for (default {DEFAULT_MAX_STEPS})")
    args = parser.parse_args(argv)
    try:
        path = export_from_checkpoint(args.checkpoint, args.output, weights=args.weights,
                                      max_samples=args.max_samples, max_steps=args.max_steps)
    except BAD_INPUT as e:  # flags, a missing or foreign checkpoint, an output that cannot be written
        sys.exit(print_error(e))
    print(path)


if __name__ == "__main__":
    main()
