"""Command lines: `python train/run.py` (console script `infusion-train`).

One flag per InfusionConfig field, generated from the dataclass (help text from its field comments);
`--dataset` picks the preset whose values the other flags override. Bad input ends with a one-line
`error: ...` and exit status 2; SIGINT / SIGTERM end a run once its last complete epoch is saved, with
status 128 + the signal number (130, 143) and a line saying how to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import typing

from infusion_tf import config as config_lib
from infusion_tf.config import InfusionConfig
from infusion_tf.console import BAD_INPUT, OneLineErrorParser, field_help, print_error, quiet_tensorflow_logs

__all__ = ["add_config_flags", "config_from_flags", "train_parser", "export_main", "train_main"]

# Fields set by other means: the dataset by --dataset, the example shape by the data.
_NOT_FLAGS = ("dataset", "example_shape")


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
        from infusion_tf import run_folder, training

        precision_note = None
        if args.precision == "auto":  # a resumed run keeps the precision it chose when it started
            args.precision, precision_note = (None, None) if args.resume else precision_lib.resolve_precision("auto")
        if args.resume:  # the run's own config; flags other than run_folder.RESUMABLE_FIELDS must agree with it
            config = run_folder.resume_config(output_dir, _given_flags(args))
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
