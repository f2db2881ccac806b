"""infusion_tf.provenance: what every results.json records about the code and the machine."""

import hashlib
import os
import re
import subprocess
import sys

import pytest

from infusion_tf import provenance


def test_environment_names_the_commit_the_process_started_with():
    env = provenance.environment()
    head = subprocess.run(["git", "-C", str(provenance.REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    if not head:  # not a git checkout (an installed copy): nothing to name
        assert env["git_commit"] is None
        return
    assert re.fullmatch(r"[0-9a-f]{40}", env["git_commit"])
    assert env["git_commit"] == provenance._COMMIT_AT_START == head  # nothing was committed during the tests
    assert env["cores_available"] >= 1 and env["tensorflow"] and isinstance(env["gpus"], list)


def test_file_sha256_matches_hashlib_across_block_boundaries(tmp_path):
    data = bytes(range(256)) * 8193  # a little over 2 MiB: more than one read block
    path = tmp_path / "weights.h5"
    path.write_bytes(data)
    assert provenance.file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


def test_portable_path_inside_the_repository_under_home_and_elsewhere(tmp_path, monkeypatch):
    repo = str(provenance.REPO)
    assert provenance.portable_path(repo) == "."
    assert provenance.portable_path(os.path.join(repo, "bench", "results")) == os.path.join("bench", "results")
    assert provenance.portable_path(None) is None
    home = tmp_path / "home" / "someone"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    beside = provenance.REPO.parent / "shared" / "data" / "fashion_mnist"  # data beside the checkout
    assert provenance.portable_path(beside) == os.path.join("..", "shared", "data", "fashion_mnist")
    assert provenance.portable_path(provenance.local_path(os.path.join("..", "shared"))) == os.path.join("..", "shared")
    assert provenance.portable_path(home / "runs" / "mnist") == os.path.join("~", "runs", "mnist")
    assert provenance.portable_path("~/runs/mnist") == os.path.join("~", "runs", "mnist")
    assert provenance.portable_path(str(tmp_path / "elsewhere")) == str(tmp_path / "elsewhere")
    monkeypatch.chdir(home)
    assert provenance.portable_path("runs/mnist") == os.path.join("~", "runs", "mnist")  # relative to the cwd
    for recorded in ("bench/results", "~/runs/mnist", str(tmp_path / "elsewhere")):
        assert provenance.portable_path(provenance.local_path(recorded)) == recorded


def test_portable_argv_rewrites_only_absolute_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = [sys.executable, str(provenance.REPO / "bench" / "memory.py"), "--k", "2000",
            f"--results-dir={provenance.REPO / 'bench' / 'results'}", "--checkpoint", str(tmp_path / "runs" / "x"),
            "runs/relative", "--dataset=mnist"]
    portable = provenance.portable_argv(argv)
    assert portable[1:] == ["bench/memory.py", "--k", "2000", "--results-dir=bench/results", "--checkpoint",
                            "~/runs/x", "runs/relative", "--dataset=mnist"]


def _machine_paths() -> dict[str, str]:
    """The absolute folders no tracked file may name: the repository's parent and the home folder, as `/a/b/`."""
    paths = {"the repository's parent folder": str(provenance.REPO.parent), "the home folder": os.path.expanduser("~")}
    return {what: path.rstrip(os.sep) + os.sep for what, path in paths.items()
            if os.path.isabs(path) and path.rstrip(os.sep)}  # "/" would match every path


def test_no_tracked_file_names_a_folder_of_this_machine():
    """Results, docs and code record paths relative to the repository (or ~): see provenance.portable_path."""
    if provenance.git("rev-parse", "--is-inside-work-tree") != "true":
        pytest.skip("not a git checkout: the tracked files are unknown")
    for what, path in _machine_paths().items():
        found = subprocess.run(["git", "-C", str(provenance.REPO), "grep", "-n", "-I", "-F", "-e", path],
                               capture_output=True, text=True)
        assert found.returncode == 1, f"tracked files name {what} {path}:\n{found.stdout[:3000]}"
