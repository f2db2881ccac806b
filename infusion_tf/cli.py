"""Command lines: `python train/run.py` (console script `infusion-train`).

One flag per InfusionConfig field, generated from the dataclass (help text from its field comments);
`--dataset` picks the preset whose values the other flags override. Bad input ends with a one-line
`error: ...` and exit status 2; SIGINT / SIGTERM end a run once its last complete epoch is saved, with
status 128 + the signal number (130, 143) and a line saying how to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import typing

from infusion_tf import config as config_lib
from infusion_tf import distribute
from infusion_tf.config import InfusionConfig
from infusion_tf.console import BAD_INPUT, OneLineErrorParser, field_help, print_error, quiet_tensorflow_logs
from infusion_tf.registry import MODEL_CONFIGS, MODELS

__all__ = ["add_config_flags", "config_from_flags", "default_output_dir", "model_config_class", "train_parser",
           "export_main", "train_main"]

# Fields set by other means: the dataset by --dataset, the example shape by the data.
_NOT_FLAGS = ("model", "dataset", "example_shape")


def add_config_flags(parser: argparse.ArgumentParser, config_class: type = InfusionConfig) -> None:
    """Adds --<field> for each field of a model's config; every default is None (= keep the preset's value)."""
    helps = field_help(config_class)
    hints = typing.get_type_hints(config_class)
    group = parser.add_argument_group("model and training settings (defaults: the dataset's preset)")
    for field in dataclasses.fields(config_class):
        if field.name in _NOT_FLAGS:
            continue
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        shown = field.default
        if config_class is InfusionConfig:  # the mnist preset's values, the recipe study's precision included
            shown = (config_lib.STUDY_PRECISION if field.name == "precision"
                     else getattr(config_lib.PRESETS["mnist"], field.name))
        text = f"{helps.get(field.name, '')} (preset mnist: {shown})"
        if base is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                               help=text)
        else:
            group.add_argument(flag, dest=field.name, type=base, default=None, help=text)


def _given_flags(args: argparse.Namespace, config_class: type = InfusionConfig) -> dict:
    """The config fields set on the command line (the others are None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
            if f.name not in _NOT_FLAGS and getattr(args, f.name, None) is not None}


def default_output_dir(dataset: str) -> str:
    """The run folder when --output-dir is not given: runs/<dataset>."""
    return f"runs/{dataset}"


def model_config_class(argv: list[str] | None = None) -> type:
    """The config class of the model the command line trains: --model NAME, or with --resume the model that the
    run folder's config.json records (default: infusion). Raises: ValueError naming an unknown model."""
    pre = argparse.ArgumentParser(add_help=False)
    for flag in ("--model", "--output-dir", "--dataset"):
        pre.add_argument(flag, default=None)
    pre.add_argument("--resume", action="store_true")
    known, _ = pre.parse_known_args(argv)
    name = known.model
    if name is None and known.resume:
        folder = known.output_dir or default_output_dir(known.dataset or "mnist")
        try:
            name = config_lib.load_config(folder).model
        except (OSError, ValueError):
            name = None  # train_main reports the folder's problem in its own words
    return MODEL_CONFIGS.get(name or "infusion")


def config_from_flags(args: argparse.Namespace, example_shape: tuple[int, ...] | None = None,
                      config_class: type = InfusionConfig):
    """The model's preset for args.dataset with every flag that was given applied (and the data's example shape)."""
    base = config_lib.with_recipe(config_class.for_dataset(args.dataset), getattr(args, "recipe", "preset"))
    overrides = _given_flags(args, config_class)
    if example_shape is not None:
        overrides["example_shape"] = tuple(example_shape)
    return dataclasses.replace(base, **overrides)


def train_parser(config_class: type = InfusionConfig) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="train/run.py", description="Trains a generative model of the toolkit; by default infusion training "
                                         "(Bordes, Honari & Vincent, ICLR 2017).")
    parser.add_argument("--model", default=None, choices=MODELS.names(),
                        help="the model to train (default infusion; with --resume, the run's); its settings are the "
                             "flags below (see --model NAME --help)")
    parser.add_argument("--dataset", default=None,
                        help="(default mnist) mnist, fashion_mnist (local IDX files), mixture_of_gaussians, banana (2-D toys), "
                             "or any TFDS image dataset such as cifar10 (needs internet the first time)")
    parser.add_argument("--recipe", default="preset", choices=("preset", "paper"),
                        help="preset (default): the dataset's preset; for mnist and fashion_mnist its optimization is "
                             "the recipe study's (docs/mnist.md: an average of the weights, --precision auto); paper: "
                             "the paper's (Adam 1e-3 constant, batch 100, float32, no average); flags given beside it "
                             "win")
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
    parser.add_argument("--strategy", default="auto", choices=distribute.STRATEGIES,
                        help="how to spread training (docs/distributed.md): one_device; mirrored (the local GPUs); "
                             "multi_worker (the machines TF_CONFIG lists; the chief writes the run folder); auto "
                             "(default): multi_worker with a TF_CONFIG of several tasks, else mirrored with several "
                             "GPUs, else one_device")
    parser.add_argument("--collective-timeout", type=float, default=None,
                        help="multi_worker: seconds a step waits for the other workers before it fails, e.g. after "
                             "one was killed (default: TensorFlow's, no limit)")
    add_config_flags(parser, config_class)
    return parser


def export_main(argv: list[str] | None = None) -> int:
    """Entry point of the console script `infusion-export` (`python -m infusion_tf.export`), TensorFlow quiet."""
    quiet_tensorflow_logs()
    from infusion_tf.export import main

    return main(argv)


def _make_strategy(args: argparse.Namespace):
    """The tf.distribute strategy of --strategy (None: one device, TensorFlow's default), from the TF_CONFIG
    environment variable and the GPUs present. Raises: ValueError for a bad TF_CONFIG or a strategy without one."""
    cluster = distribute.read_tf_config(os.environ.get("TF_CONFIG"))
    import tensorflow as tf

    name = distribute.choose_strategy(args.strategy, cluster, len(tf.config.list_physical_devices("GPU")))
    if args.verbose and name != "one_device":
        print(f"strategy:  {name}" + (f", task {cluster.task_type} {cluster.task_index} of {cluster.tasks}"
                                      f"{' (chief)' if cluster.is_chief else ''}" if name == "multi_worker" else ""))
    return distribute.make_strategy(name, timeout_seconds=args.collective_timeout)


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of `python train/run.py`; returns the exit status."""
    try:
        config_class = model_config_class(argv)
    except ValueError as e:
        return print_error(e)
    args = train_parser(config_class).parse_args(argv)
    quiet_tensorflow_logs()
    dataset_given = args.dataset is not None
    args.dataset = args.dataset or "mnist"
    output_dir = args.output_dir or default_output_dir(args.dataset)
    try:
        from infusion_tf import data as data_lib
        from infusion_tf import precision as precision_lib
        from infusion_tf import run_folder, training

        strategy = _make_strategy(args)  # before any other TensorFlow work (MultiWorkerMirroredStrategy needs it)
        precision_note = None
        if (hasattr(args, "precision") and args.precision is None and not args.resume and args.recipe == "preset"
                and config_class is InfusionConfig and args.dataset in config_lib.STUDY_PRESETS):
            args.precision = config_lib.STUDY_PRECISION  # the study's recipe: bfloat16 where the hardware has units
        if getattr(args, "precision", None) == "auto":  # a resumed run keeps the precision it chose when it started
            args.precision, precision_note = (None, None) if args.resume else precision_lib.resolve_precision("auto")
        if args.resume:  # the run's own config; flags other than run_folder.RESUMABLE_FIELDS must agree with it
            if args.recipe != "preset":
                raise ValueError(f"--resume: the run in {output_dir!r} keeps the recipe it started with; --recipe "
                                 f"{args.recipe} applies to a new run")
            config = run_folder.resume_config(output_dir, _given_flags(args, config_class))
            if args.model is not None and args.model != config.model:
                raise ValueError(f"--resume: the run in {output_dir!r} trains model {config.model!r}, "
                                 f"not --model {args.model!r}")
            if dataset_given and args.dataset != config.dataset:
                raise ValueError(f"--resume: the run in {output_dir!r} trains on {config.dataset!r}, "
                                 f"not --dataset {args.dataset!r}")
        else:
            if args.dataset not in config_lib.PRESETS:  # a misspelled name before the flags it makes wrong
                data_lib.check_dataset_name(args.dataset)
            config = config_from_flags(args, config_class=config_class)  # bad flags fail before data is read
        if not args.resume and args.dataset not in config_lib.PRESETS:
            # Another TFDS dataset: its example shape comes from the data.
            shape = data_lib.load_splits(args.dataset, data_dir=args.data_dir).example_shape
            config = config_from_flags(args, shape, config_class)
        if precision_note and args.verbose:
            print(f"precision: {config.precision} ({precision_note})")
        warning = precision_lib.slow_bfloat16_warning(getattr(config, "precision", "float32"))
        if warning:
            print(warning, file=sys.stderr)
        if args.deterministic:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        training.train(config, output_dir, data_dir=args.data_dir, resume=args.resume,
                       overwrite=args.overwrite, verbose=args.verbose, strategy=strategy)
    except (*BAD_INPUT, FloatingPointError) as e:  # OSError: FileNotFoundError, unwritable folders, offline
        return print_error(e)
    except distribute.WorkerLost as e:  # another worker of the cluster is gone; says how to resume
        print_error(e)
        return 1
    except KeyboardInterrupt as e:  # training.TrainingInterrupted says where the run can resume from
        print(f"\n{e}" if str(e) else "\ninterrupted", file=sys.stderr)
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    print(f"done: {output_dir}")
    return 0
