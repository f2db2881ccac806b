"""Where a number came from: the code's commit, the machine and the software, written beside every result.

Every results.json (evaluation, benchmarks, exports) carries `environment()`, so a number in the docs can
always be traced to the commit, CPU, core count and library versions that produced it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
from pathlib import Path

__all__ = ["REPO", "cpu_model", "git", "git_commit", "environment", "file_sha256", "portable_path", "portable_argv",
           "local_path"]

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> tuple[str, list[str]]:
    """The CPU's model name and its matrix-relevant feature flags, from /proc/cpuinfo."""
    name, flags = None, []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name is None:
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
            flags = [f for f in value.split() if f in wanted]
    return name or platform.processor() or "unknown", flags


def git(*args: str) -> str | None:
    """The output of `git <args>` in this checkout, or None outside a git checkout."""
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit() -> str | None:
    """The checkout's short commit now, with `-dirty` when tracked files have uncommitted changes."""
    return git("describe", "--always", "--dirty", "--abbrev=7")


def _checkout_state() -> tuple[str | None, bool | None]:
    status = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "HEAD"), None if status is None else bool(status)


# The code a process runs is the checkout as it was when the process started (this module is imported at start-up
# by the commands that record results): a long evaluation must not report a commit made while it ran.
_COMMIT_AT_START, _DIRTY_AT_START = _checkout_state()


def environment() -> dict:
    """TensorFlow and Keras versions, CPU model and flags, cores, threads, load, the git commit at start-up, date."""
    import keras
    import numpy as np
    import tensorflow as tf

    cpu, flags = cpu_model()
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_logical_devices("GPU")],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),  # 0: TensorFlow's default
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "environment_variables": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "TF_ENABLE_ONEDNN_OPTS",
                                                             "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                                                             "ONEDNN_MAX_CPU_ISA") if k in os.environ},
        "load_average": list(os.getloadavg()),  # a busy machine makes every timing lower
        "git_commit": _COMMIT_AT_START,  # when this process started
        "git_dirty": _DIRTY_AT_START,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
    }


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes (weights files are identified by it in results and caches)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def portable_path(path) -> str | None:
    """A path as a reader on another machine would type it, for results and benchmark records.

    Relative to the repository root when inside it ("." for the root) or inside the folder that holds it
    (`../shared/data/...`, the data beside a checkout), `~/...` under the home folder, otherwise the absolute path;
    None stays None. local_path() turns it back into a path of this machine.
    """
    if path is None:
        return None
    absolute = os.path.abspath(os.path.expanduser(os.fspath(path)))
    candidates = dict.fromkeys((absolute, os.path.realpath(absolute)))  # the repository may be a symlink

    def inside(root) -> str | None:
        for candidate in candidates:
            if str(root) != os.sep and (candidate == str(root) or candidate.startswith(str(root) + os.sep)):
                return os.path.relpath(candidate, REPO)
        return None

    if (relative := inside(REPO)) is not None:
        return relative
    home = os.path.expanduser("~")
    if home not in ("", os.sep, "~") and absolute.startswith(home.rstrip(os.sep) + os.sep):
        return "~" + absolute[len(home.rstrip(os.sep)):]
    return inside(REPO.parent) or absolute  # a repository at /x: its parent "/" would hold every path


def portable_argv(argv) -> list[str]:
    """A command line with every absolute path in it (`/a/b`, `--flag=/a/b`) made portable_path."""
    portable = []
    for argument in map(str, argv):
        flag, equals, value = argument.partition("=") if argument.startswith("-") else ("", "", argument)
        if os.path.isabs(value):
            argument = flag + equals + portable_path(value)
        portable.append(argument)
    return portable


def local_path(recorded: str | None) -> str | None:
    """A path recorded by portable_path as a path of this machine: `~` expanded, relative to the repository."""
    if recorded is None:
        return None
    return str(REPO / os.path.expanduser(recorded))
