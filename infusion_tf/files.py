"""Atomic writes: a file is written under a temporary name in its own folder, then renamed over its final name,
so a reader (or a run killed in the middle) sees either the old file whole or the new one whole.

The temporary name is `.tmp-<name>`: hidden, in the same folder (a rename within one file system is atomic),
and with the final name's ending, from which Keras (.keras, .weights.h5), numpy (.npz) and matplotlib (.png)
take the format. A leaf: it imports nothing of infusion_tf.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

__all__ = ["TEMPORARY_PREFIX", "temporary_path", "atomic_write", "write_text", "write_json"]

TEMPORARY_PREFIX = ".tmp-"  # what a file being written is called until it is renamed; a leftover one can go


def temporary_path(path: str) -> str:
    """`<folder>/.tmp-<name>`: where `path` is written before it is renamed."""
    folder, name = os.path.split(path)
    return os.path.join(folder, TEMPORARY_PREFIX + name)


def atomic_write(path: str, save: Callable[[str], Any]) -> str:
    """Calls save(temporary path), then renames that file to `path`; the old file stays whole until then.

    Returns `path`. A `save` that fails leaves the old file as it was (and may leave its temporary file).
    """
    tmp = temporary_path(path)
    save(tmp)
    os.replace(tmp, path)
    return path


def write_text(path: str, text: str) -> str:
    """Writes `text` to `path` atomically; returns `path`."""
    def save(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    return atomic_write(path, save)


def write_json(path: str, values: Any, *, end: str = "", **options) -> str:
    """Writes json.dumps(values, indent=2, **options) + end to `path` atomically; returns `path`."""
    return write_text(path, json.dumps(values, **{"indent": 2, **options}) + end)
