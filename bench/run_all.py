"""Runs every benchmark, each in its own Python process (a fresh TensorFlow), then prints one summary table.

    python bench/run_all.py [--quick] [--only train_step evaluation] [--skip memory] [--results-dir DIR]

Order: train_step, input_pipeline (reads train_step.json for its headroom), evaluation, serving, memory.
A failing script is reported and the others still run; the exit status is 1 if any failed. The summary shows,
per measurement, the ratio to the machine's matmul peak, the share of the step's own matmul-only time, and the
speed-up over the same work written plainly in Keras (bench/plain_keras_step.py), all measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = ("train_step", "input_pipeline", "evaluation", "serving", "memory", "breakdown")


def _main_metric(row: dict) -> str:
    """The measurement's headline number with its unit."""
    for key, unit, scale in (("examples_per_second", "examples/s", 1.0), ("latency_seconds", "ms", 1000.0),
                             ("peak_rss_mb", "MB", 1.0)):
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            text = f"{_number(value * scale)} {unit}"
            if key == "examples_per_second" and row.get("chains_per_second") and row.get("chains", 1) > 1:
                text += f", {_number(row['chains_per_second'])} chains/s"
            return text
    return "-"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _ratio(row: dict) -> str:
    value = row.get("ratio_to_peak")
    if not isinstance(value, (int, float)):
        return "-"
    return f"{100 * value:.0f}% of {row.get('peak_dtype', 'float32')} {row.get('peak_gflops', float('nan')):,.0f}"


def _share(row: dict, key: str, unit: str) -> str:
    value = row.get(key)
    return f"{value:.2f}{unit}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def summary_rows(results_dir: Path, scripts) -> list[tuple[str, ...]]:
    rows = []
    for script in scripts:
        path = results_dir / f"{script}.json"
        if not path.is_file():
            rows.append((script, "(no results)", "-", "-", "-", "-"))
            continue
        document = json.loads(path.read_text())
        for row in document.get("measurements", []):
            rows.append((script, str(row.get("name")), _main_metric(row), _ratio(row),
                         _share(row, "ratio_to_matmul_only", ""), _share(row, "speedup_vs_plain_keras", "x")))
    return rows


def print_summary(rows, header=("script", "measurement", "value", "ratio to matmul peak (GFLOP/s)",
                                "of matmul-only", "vs plain Keras")) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i != 2 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every script's --quick mode")
    parser.add_argument("--results-dir", default=str(BENCH / "results"))
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=None, help="run only these")
    parser.add_argument("--skip", nargs="+", choices=SCRIPTS, default=[], help="run all but these")
    args = parser.parse_args(argv)
    scripts = [s for s in (args.only or SCRIPTS) if s not in args.skip]
    results_dir = Path(args.results_dir).resolve()
    failed, durations = [], {}
    for script in scripts:
        command = [sys.executable, str(BENCH / f"{script}.py"), "--results-dir", str(results_dir),
                   *(["--quick"] if args.quick else [])]
        print(f"\n=== {script}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(command, cwd=str(BENCH.parent)).returncode
        durations[script] = time.perf_counter() - start
        if code != 0:
            failed.append(script)
            print(f"=== {script} failed with exit status {code}", flush=True)
    print(f"\n=== summary ({results_dir})")
    print_summary(summary_rows(results_dir, [s for s in scripts if s not in failed]))
    print("\n" + ", ".join(f"{s} {d:.0f} s" for s, d in durations.items()))
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
