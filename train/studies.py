"""What the study commands (infusion_rate_study.py, recipe_study.py) share: running a command of the repository
and reading how far a run folder has trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_command(command: list[str]) -> None:
    """`python COMMAND...` from the repository root (e.g. ["train/run.py", "--epochs", "5"]); fails if it fails."""
    command = [sys.executable, *command]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def trained_epochs(folder: str) -> int:
    """The last committed epoch of a run folder (0 when it has none)."""
    state = os.path.join(folder, "checkpoints", "state.json")
    if not os.path.isfile(state):
        return 0
    with open(state) as f:
        return int(json.load(f).get("epoch", 0))
