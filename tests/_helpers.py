"""Helpers of the command tests: run a command as a user would, and check the one `error:` line of bad input."""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
OFFLINE = REPO / "tests" / "offline"  # its sitecustomize.py makes every network connection fail at once


def run_command(*args, cwd: pathlib.Path = REPO, offline: bool = False,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """`python ARGS` in a fresh process, stdout and stderr captured; a script path is taken from the repository
    (so the command may run from any folder). offline: as on a machine without internet, whatever this one has."""
    args = [str(a) for a in args]
    if args and args[0].endswith(".py") and not os.path.isabs(args[0]):
        args[0] = str(REPO / args[0])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if offline:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(OFFLINE), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_usage_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 2 and exactly one `error: ...` line on stderr naming every word; returns that line."""
    report = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, report
    assert "Traceback" not in result.stderr, report
    assert "done:" not in result.stdout, report
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, report
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    return errors[0]


def snapshot(folder: pathlib.Path) -> dict[str, tuple[str, int]]:
    """relative path -> (md5, mtime_ns) of every file under folder."""
    return {str(p.relative_to(folder)): (hashlib.md5(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}
