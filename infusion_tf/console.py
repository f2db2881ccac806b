"""What every command shares: one-line usage errors, exit status 2 for bad input, a writable-folder check, help
text from a dataclass's field comments, and TensorFlow's start-up log kept out of sight.

A leaf: it imports nothing of infusion_tf, so that library modules with a command of their own
(`python -m infusion_tf.export`, `infusion_tf.quality`, `infusion_tf.evaluate`) and the command layer (`cli`,
`eval/`) use it without importing each other.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import tempfile

__all__ = ["OneLineErrorParser", "BAD_INPUT", "print_error", "check_output_folder", "quiet_tensorflow_logs",
           "field_help"]

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


def field_help(cls: type) -> dict[str, str]:
    """Field name -> the comment beside it in a dataclass's source: the help text of its flag."""
    source = inspect.getsource(cls)
    return {m.group(1): m.group(2).strip()
            for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.*)$", source, flags=re.MULTILINE)}


def parse_settings(settings_class: type, argv: list[str] | None, description: str, prog: str | None = None):
    """(settings, output_dir) of an experiment command: --output-dir and one flag per field of a frozen settings
    dataclass of numbers and strings (the field's comment is its help). Usage errors: one `error:` line, exit 2."""
    import dataclasses

    parser = OneLineErrorParser(prog=prog, description=description)
    parser.add_argument("--output-dir", required=True, help="folder of results.json and the figures")
    helps = field_help(settings_class)
    for field in dataclasses.fields(settings_class):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default,
                            help=f"{helps.get(field.name, field.name.replace('_', ' '))} (default {field.default})")
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(settings_class)}
    return settings_class(**values), args.output_dir
