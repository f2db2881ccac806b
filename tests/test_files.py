"""files.py: a file is replaced whole or not at all, through a hidden temporary file in its own folder."""

from __future__ import annotations

import json

import pytest

from infusion_tf import files


def test_temporary_path_is_hidden_beside_the_file_and_keeps_its_ending(tmp_path):
    assert files.temporary_path(str(tmp_path / "checkpoints" / "last.keras")) == str(
        tmp_path / "checkpoints" / ".tmp-last.keras")
    assert files.temporary_path("samples.png") == ".tmp-samples.png"


def test_atomic_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    seen = []

    def save(tmp):
        seen.append(tmp)
        assert path.read_text() == "old"  # the old file stays whole while the new one is written
        with open(tmp, "w") as f:
            f.write("new")

    assert files.atomic_write(str(path), save) == str(path)
    assert path.read_text() == "new" and seen == [str(tmp_path / ".tmp-a.txt")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{}")

    def save(tmp):
        with open(tmp, "w") as f:
            f.write("{\"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(str(path), save)
    assert path.read_text() == "{}"


def test_write_json_and_text(tmp_path):
    values = {"b": 1, "a": [1.5, None]}
    files.write_json(str(tmp_path / "x.json"), values)
    assert (tmp_path / "x.json").read_text() == json.dumps(values, indent=2)
    files.write_json(str(tmp_path / "y.json"), values, sort_keys=True, end="\n")
    assert (tmp_path / "y.json").read_text() == json.dumps(values, indent=2, sort_keys=True) + "\n"
    files.write_text(str(tmp_path / "r.md"), "# report\n")
    assert (tmp_path / "r.md").read_text() == "# report\n"
