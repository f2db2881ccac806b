"""Smoke test of bench/: the shared helpers, and the --quick mode of the cheaper scripts in fresh processes.

The numbers themselves are not checked (they depend on the machine and its load); the FLOP count of the
paper's operator, the shape of the results files and the scripts' exit status are.
"""

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys

import pytest

from conftest import REPO

BENCH = REPO / "bench"
PAPER_FORWARD_FLOPS = 2 * (784 * 1200 + 1200 * 1200 + 2 * 1200 * 784)  # 784 -> 1200 -> 1200 -> 2 x 784


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_operator_forward_flops_of_the_paper_model(common):
    from infusion_tf import InfusionConfig, InfusionModel

    assert PAPER_FORWARD_FLOPS == 8_524_800
    assert common.operator_forward_flops(InfusionModel(InfusionConfig())) == PAPER_FORWARD_FLOPS
    small = InfusionModel(InfusionConfig(width=10, depth=1))
    assert common.operator_forward_flops(small.operator) == 2 * (784 * 10 + 2 * 10 * 784)


def test_operator_forward_flops_rejects_the_conv_operator(common):
    from infusion_tf import InfusionModel, preset

    conv = InfusionModel(dataclasses.replace(preset("cifar10"), width=16))
    with pytest.raises(ValueError, match="MLP operator"):
        common.operator_forward_flops(conv)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_peak_is_positive_and_finite(common, dtype):
    peak = common.matmul_peak(dtype, sizes=(128,), repeats=1)
    assert peak > 0 and math.isfinite(peak)
    with pytest.raises(ValueError, match="dtype"):
        common.matmul_peak("float16")


def test_write_results_and_print_table(common, tmp_path, capsys):
    rows = [{"name": "a", "examples_per_second": 12.5, "ratio_to_peak": 0.5, "peak_gflops": 100.0}]
    path = common.write_results("example", rows, results_dir=tmp_path, settings={"quick": True}, started=0.0)
    document = json.loads(path.read_text())
    assert document["measurements"] == rows
    for key in ("tensorflow", "cpu_model", "cpu_count", "git_commit", "date"):
        assert key in document["environment"]
    assert document["peak_rss_mb"] > 0 and document["duration_seconds"] > 0
    common.print_table(rows)
    assert "examples_per_second" in capsys.readouterr().out
    with pytest.raises(ValueError, match="name"):
        common.write_results("example", [{"examples_per_second": 1.0}], results_dir=tmp_path)


def test_write_results_records_no_folder_of_this_machine(common, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "argv", [str(BENCH / "memory.py"), "--checkpoint", str(tmp_path / "runs" / "x")])
    settings = {"results_dir": BENCH / "results", "checkpoint": str(tmp_path / "runs" / "x"), "typed": "runs/y", "k": 2}
    document = json.loads(common.write_results("example", [{"name": "a"}], results_dir=tmp_path / "out",
                                               settings=settings).read_text())
    assert document["command"][1:] == ["bench/memory.py", "--checkpoint", "~/runs/x"]
    assert document["settings"] == {"results_dir": "bench/results", "checkpoint": "~/runs/x", "typed": "runs/y", "k": 2}


def _run_quick(script: str, results_dir) -> dict:
    completed = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--quick", "--results-dir",
                                str(results_dir)], cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "written to" in completed.stdout
    return json.loads((results_dir / f"{script}.json").read_text())


def _check_document(document: dict, script: str) -> None:
    assert document["script"] == script
    assert {"settings", "environment", "duration_seconds", "measurements"} <= set(document)
    assert document["measurements"]
    for row in document["measurements"]:
        assert "name" in row
        assert "examples_per_second" in row or "latency_seconds" in row
        value = row.get("examples_per_second", row.get("latency_seconds"))
        assert value > 0 and math.isfinite(value)


def test_input_pipeline_quick(tmp_path):
    document = _run_quick("input_pipeline", tmp_path)
    _check_document(document, "input_pipeline")
    names = [row["name"] for row in document["measurements"]]
    assert len(names) == 4 and len(set(names)) == 4  # batch 100 and 512, with and without dequantization


def test_serving_quick(tmp_path):
    document = _run_quick("serving", tmp_path)
    _check_document(document, "serving")
    rows = {row["name"]: row for row in document["measurements"]}
    assert {"load SavedModel", "sample n=1 steps=30", "sample n=64 steps=30"} <= set(rows)
    for name in ("sample n=1 steps=30", "sample n=64 steps=30"):
        assert rows[name]["peak_gflops"] > 0
        assert 0 < rows[name]["ratio_to_peak"] < 10  # a ratio, not a FLOP count in the wrong unit
