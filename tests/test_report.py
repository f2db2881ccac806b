"""eval/report.py on a tiny trained checkpoint: every row, the table, resuming, clear errors."""

import importlib.util
import json
import os
import sys

import pytest

from infusion_tf import provenance, training
from infusion_tf.config import InfusionConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(width=32, depth=1, num_steps=3, sampling_steps=4, batch_size=50, train_examples=300,
            validation_examples=100, epochs=1, sample_every=1)
QUICK = ["--num-examples", "20", "--repeats", "2", "--lb-k", "3", "--is-k", "2", "6", "--is-repeats", "2",
         "--isotropic-k", "4", "--isotropic-repeats", "2", "--quality-repeats", "2", "--subset-examples", "5",
         "--subset-k", "12"]


def _command(name):
    spec = importlib.util.spec_from_file_location(f"eval_{name}", os.path.join(REPO, "eval", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


report = _command("report")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("run") / "mnist")
    training.train(InfusionConfig(**TINY), folder, verbose=0, export=False)
    return folder


def test_report_runs_every_row_and_resumes(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(report, "_chain", lambda folder: ("mnist", "infusion", 15, 0.0, 0.01))  # the paper's chain
    output = str(tmp_path / "report")
    assert report.main(["--checkpoint", checkpoint, "--output-dir", output, *QUICK]) == 0
    names = ["lower_bound", "importance_sampling_k2", "importance_sampling_k6", "parzen", "sample_quality",
             "isotropic", "importance_sampling_first5_k12"]
    assert sorted(os.listdir(output)) == sorted([f"results_{n}.json" for n in names] +
                                                ["report.md", "report.json", "nearest_neighbours.png",
                                                 "importance_sampling_by_k.png"])
    text = open(os.path.join(output, "report.md")).read()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(names)
    assert "1350.60 +- 0.08" in rows[0] and "1836.27" in rows[2] and "1836.27" not in rows[1]
    assert "312 +- 1.7" in rows[3] and "413.30" in rows[5] and "Inception score" in rows[4]
    saved = {n: json.load(open(os.path.join(output, f"results_{n}.json"))) for n in names}
    assert saved["importance_sampling_k6"]["settings"]["k"] == 6 and saved["importance_sampling_k6"]["settings"][
        "repeats"] == 2
    assert saved["importance_sampling_first5_k12"]["settings"]["num_examples"] == 5
    # Importance sampling with the same seed: more chains can only keep or raise each example's estimate on average.
    assert saved["importance_sampling_k6"]["mean_nats"] > saved["lower_bound"]["lower_bound_same_chains"]["mean_nats"]
    assert saved["lower_bound"]["environment"]["git_commit"]
    capsys.readouterr()
    before = {n: os.path.getmtime(os.path.join(output, f"results_{n}.json")) for n in names}
    assert report.main(["--checkpoint", checkpoint, "--output-dir", output, *QUICK]) == 0
    assert capsys.readouterr().out.count("read back from") == len(names)
    assert {n: os.path.getmtime(os.path.join(output, f"results_{n}.json")) for n in names} == before
    # Other settings for one row: only that row runs again.
    assert report.main(["--checkpoint", checkpoint, "--output-dir", output, *QUICK, "--lb-k", "4"]) == 0
    assert capsys.readouterr().out.count("read back from") == len(names) - 1


@pytest.mark.parametrize("flags, message", [
    (["--only", "everything"], "unknown rows ['everything']"),
    (["--is-k", "10", "100", "--is-repeats", "1", "2", "3"], "--is-repeats takes 1 value or one per --is-k value"),
    (["--lb-k", "0"], "k (chains per example) must be >= 1"),
])
def test_bad_flags_are_one_error_line(checkpoint, tmp_path, capsys, flags, message):
    assert report.main(["--checkpoint", checkpoint, "--output-dir", str(tmp_path / "r"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_papers_values_stand_only_beside_mnist(checkpoint, tmp_path, monkeypatch):
    output = str(tmp_path / "report")
    monkeypatch.setattr(report, "_chain", lambda folder: ("fashion_mnist", "infusion", 15, 0.0, 0.01))
    assert report.main(["--checkpoint", checkpoint, "--output-dir", output, *QUICK, "--only", "lower_bound"]) == 0
    row = [line for line in open(os.path.join(output, "report.md")).read().splitlines() if line.startswith("| lower")]
    assert len(row) == 1 and "1350.60" not in row[0] and row[0].split(" | ")[2] == ""


@pytest.mark.parametrize("chain, lower_bound, others", [
    (("mnist", "infusion", 15, 0.0, 0.01), "1350.60 +- 0.08", True),  # Tables 1 and 2
    (("mnist", "infusion", 5, 0.0, 0.1), "1448.66 (Table 4)", False),  # Table 4: the bound alone
    (("mnist", "infusion", 1, 0.3, 0.0), "1209.39 (Table 4)", False),
    (("mnist", "infusion", 3, 0.0, 0.01), "", False),  # a chain the paper did not train
    (("mnist", "dvae", None, None, None), "", False),
])
def test_the_papers_values_stand_beside_the_papers_chain_only(chain, lower_bound, others):
    args = report.report_parser().parse_args(["--checkpoint", "x"])
    rows = {row.name: row.paper for row in report.papers_rows(report.plan(args), chain)}
    assert rows["lower_bound"] == lower_bound
    assert (rows["parzen"] == "312 +- 1.7") == others and (rows["isotropic"] == "413.30 +- 0.46") == others


def test_other_weights_are_evaluated_and_recorded(checkpoint, tmp_path):
    """--weights reaches every row: a snapshot is scored instead of the best weights, and the results say so."""
    output = str(tmp_path / "report")
    assert report.main(["--checkpoint", checkpoint, "--output-dir", output, *QUICK, "--only", "lower_bound",
                        "--weights", "last"]) == 0
    saved = json.load(open(os.path.join(output, "results_lower_bound.json")))
    assert saved["settings"]["weights"] == "last"
    assert saved["weights_sha256"] == provenance.file_sha256(os.path.join(checkpoint, "checkpoints", "last.weights.h5"))
    assert report.main(["--checkpoint", checkpoint, "--output-dir", str(tmp_path / "r"), "--weights",
                        str(tmp_path / "missing.weights.h5")]) == 2
    assert not (tmp_path / "r").exists()
