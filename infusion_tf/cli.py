"""Command lines: `python train/run.py` (console script `infusion-train`).

One flag per InfusionConfig field, generated from the dataclass (help text from its field comments);
`--dataset` picks the preset whose values the other flags override. Bad input ends with a one-line
`error: ...` and exit status 2; SIGINT / SIGTERM end a run once its last complete epoch is saved, with
status 128 + the signal number (130, 143) and a line saying how to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import signal
import sys
import tempfile
import typing

from infusion_tf import config as config_lib
from infusion_tf.config import InfusionConfig

__all__ = ["OneLineErrorParser", "BAD_INPUT", "print_error", "check_output_folder", "quiet_tensorflow_logs", "field_help", "add_config_flags", "config_from_flags", "train_parser",
           "train_main"]

# Fields set by other means: the dataset by --dataset, the example shape by the data.
_NOT_FLAGS = ("dataset", "example_shape")


# TensorFlow's C++ start-up lines a user need not see: absl's "before InitializeLog" notice, INFO/WARNING lines
# (the oneDNN notice, "Could not find cuda drivers") and the CUDA probe's error on a machine without a GPU driver.
_START_UP_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} |E\d{4} .*(cuInit|cuda)"
                             r"|To enable the following instructions|rebuild TensorFlow with)")


def quiet_tensorflow_logs() -> None:
    """Imports TensorFlow with its C++ start-up log out of sight, unless the user set TF_CPP_MIN_LOG_LEVEL.

    TF_CPP_MIN_LOG_LEVEL=2 hides later INFO and WARNING lines, but the lines written while TensorFlow loads
    and probes for GPUs come before absl's log is set up and ignore it: they go to a temporary file, and
    what is not known start-up noise is written to stderr afterwards. Call it before anything imports
    TensorFlow (infusion_tf's own __init__ does not).
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA probe logs here
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not _START_UP_NOISE.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one `error: ...` line and exit status 2 (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


BAD_INPUT = (ValueError, OSError)  # what bad flags, data, checkpoints and folders raise (data.DataUnavailableError too)


def check_output_folder(folder: str) -> None:
    """Checks, creating nothing, that `folder` is or can become a writable folder, so that a command fails before
    its work rather than after it. Raises: NotADirectoryError when it or a folder above it is a file;
    PermissionError when the nearest existing folder above it may not be written."""
    existing = os.path.abspath(folder)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"output folder {folder!r} cannot be created: {existing!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {folder!r} cannot be written: no write permission in {existing!r}")


def print_error(error: BaseException) -> int:
    """Writes `error: <message>` to stderr as one line (a message of several lines is joined); returns 2, the
    exit status of bad input in every command."""
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    print(f"error: {message}", file=sys.stderr)
    return 2


def field_help(cls: type = InfusionConfig) -> dict[str, str]:
    """Field name -> the comment beside it in a dataclass's source: the help text of its flag."""
    source = inspect.getsource(cls)
    return {m.group(1): m.group(2).strip()
            for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.*)$", source, flags=re.MULTILINE)}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --<field> for each InfusionConfig field; every default is None (= keep the preset's value)."""
    helps = field_help(InfusionConfig)
    hints = typing.get_type_hints(InfusionConfig)
    group = parser.add_argument_group("model and training settings (defaults: the dataset's preset)")
    for field in dataclasses.fields(InfusionConfig):
        if field.name in _NOT_FLAGS:
            continue
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        text = f"{helps.get(field.name, '')} (preset mnist: {field.default})"
        if base is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                               help=text)
        else:
            group.add_argument(flag, dest=field.name, type=base, default=None, help=text)


def _given_flags(args: argparse.Namespace) -> dict:
    """The InfusionConfig fields set on the command line (the others are None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(InfusionConfig)
            if f.name not in _NOT_FLAGS and getattr(args, f.name, None) is not None}


def config_from_flags(args: argparse.Namespace, example_shape: tuple[int, ...] | None = None) -> InfusionConfig:
    """The preset of args.dataset with every flag that was given applied (and the data's example shape)."""
    base = config_lib.preset(args.dataset)
    overrides = _given_flags(args)
    if example_shape is not None:
        overrides["example_shape"] = tuple(example_shape)
    return dataclasses.replace(base, **overrides)


def train_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="train/run.py", description="Infusion training (Bordes, Honari & Vincent, ICLR 2017).")
    parser.add_argument("--dataset", default=None,
                        help="(default mnist) mnist, fashion_mnist (local IDX files), mixture_of_gaussians, banana (2-D toys), "
                             "or any TFDS image dataset such as cifar10 (needs internet the first time)")
    parser.add_argument("--data-dir", default=None,
                        help="folder of the four IDX .gz files or the TFDS data folder (default: the MNIST files "
                             "shipped with the package; with --resume, the data the run recorded in data_source.json)")
    parser.add_argument("--output-dir", default=None, help="run folder (default: runs/<dataset>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    parser.add_argument("--overwrite", action="store_true", help="delete --output-dir's previous run first")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="0 silent, 1 progress bar, 2 one line per epoch")
    parser.add_argument("--deterministic", action="store_true",
                        help="enable TensorFlow's op determinism: a run, interrupted and resumed or not, gives "
                             "bit-identical weights on the same machine (somewhat slower; pass it again with "
                             "--resume)")
    add_config_flags(parser)
    return parser


def export_main(argv: list[str] | None = None) -> int:
    """Entry point of the console script `infusion-export` (`python -m infusion_tf.export`), TensorFlow quiet."""
    quiet_tensorflow_logs()
    from infusion_tf.export import main

    return main(argv)


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of `python train/run.py`; returns the exit status."""
    args = train_parser().parse_args(argv)
    quiet_tensorflow_logs()
    dataset_given = args.dataset is not None
    args.dataset = args.dataset or "mnist"
    output_dir = args.output_dir or f"runs/{args.dataset}"
    try:
        from infusion_tf import data as data_lib
        from infusion_tf import precision as precision_lib
        from infusion_tf import training

        precision_note = None
        if args.precision == "auto":  # a resumed run keeps the precision it chose when it started
            args.precision, precision_note = (None, None) if args.resume else precision_lib.resolve_precision("auto")
        if args.resume:  # the run's own config; flags other than training.RESUMABLE_FIELDS must agree with it
            config = training.resume_config(output_dir, _given_flags(args))
            if dataset_given and args.dataset != config.dataset:
                raise ValueError(f"--resume: the run in {output_dir!r} trains on {config.dataset!r}, "
                                 f"not --dataset {args.dataset!r}")
        else:
            if args.dataset not in config_lib.PRESETS:  # a misspelled name before the flags it makes wrong
                data_lib.check_dataset_name(args.dataset)
            config = config_from_flags(args)  # fails fast on bad flags, before any data is read
        if not args.resume and args.dataset not in config_lib.PRESETS:
            # Another TFDS dataset: its example shape comes from the data.
            shape = data_lib.load_splits(args.dataset, data_dir=args.data_dir).example_shape
            config = config_from_flags(args, shape)
        if precision_note and args.verbose:
            print(f"precision: {config.precision} ({precision_note})")
        warning = precision_lib.slow_bfloat16_warning(config.precision)
        if warning:
            print(warning, file=sys.stderr)
        if args.deterministic:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        training.train(config, output_dir, data_dir=args.data_dir, resume=args.resume,
                       overwrite=args.overwrite, verbose=args.verbose)
    except (*BAD_INPUT, FloatingPointError) as e:  # OSError: FileNotFoundError, unwritable folders, offline
        return print_error(e)
    except KeyboardInterrupt as e:  # training.TrainingInterrupted says where the run can resume from
        print(f"\n{e}" if str(e) else "\ninterrupted", file=sys.stderr)
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    print(f"done: {output_dir}")
    return 0
