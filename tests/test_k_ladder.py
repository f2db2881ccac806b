"""infusion_tf/k_ladder.py against scipy and a Gaussian model whose log p(x) is known; eval/k_ladder.py end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

from infusion_tf import k_ladder
from infusion_tf.estimators import LogWeightScorer
from infusion_tf.protocol import LogWeights


def test_rungs_equal_scipy_on_the_prefixes():
    l = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 100))
    rungs = k_ladder.ladder(l, [1, 7, 100])
    for rung in rungs:
        k = rung["k"]
        estimate = special.logsumexp(l[:, :k], axis=1) - math.log(k)
        w = np.exp(l[:, :k])
        ess = w.sum(1) ** 2 / (w**2).sum(1)
        assert rung["importance_sampling_nats"] == pytest.approx(estimate.mean(), rel=1e-12)
        assert rung["importance_sampling_standard_error"] == pytest.approx(stats.sem(estimate), rel=1e-9)
        assert rung["lower_bound_nats"] == pytest.approx(l[:, :k].mean(), rel=1e-12)
        assert rung["ess_mean"] == pytest.approx(ess.mean(), rel=1e-9) and rung["ess_min"] >= 1 - 1e-12
        best, median = l[:, :k].max(1), np.median(l[:, :k], 1)
        assert rung["max_log_weight_nats"] == pytest.approx(best.mean(), rel=1e-12)
        assert rung["median_log_weight_nats"] == pytest.approx(median.mean(), rel=1e-12)
        rest = special.logsumexp(l[:, :k] - best[:, None], axis=1)  # the decomposition of the gap, per example
        gap = (best - median) + (median - l[:, :k].mean(1)) - (math.log(k) - rest)
        assert rung["importance_sampling_nats"] - rung["lower_bound_nats"] == pytest.approx(gap.mean(), rel=1e-9)
    assert rungs[0]["ess_mean"] == pytest.approx(1.0) and rungs[0]["importance_sampling_nats"] == rungs[0][
        "lower_bound_nats"]
    assert k_ladder.ladder(np.zeros((3, 10)), [10])[0]["ess_min"] == pytest.approx(10.0)  # equal weights: ESS = k
    with pytest.raises(ValueError, match="1 <= k <= 100"):
        k_ladder.ladder(l, [101])


def gaussian_scorer():
    """x ~ N(0, 2) as z ~ N(0, 1), x | z ~ N(z, 1), proposal q(z | x) = N(0, 1): log w = log N(x; z, 1); the exact
    log p(x) = log N(x; 0, 2)."""
    def log_weights(x, k, seed):
        z = tf.random.stateless_normal(tf.stack([tf.shape(x)[0], k]), seed)
        return LogWeights(-0.5 * (math.log(2 * math.pi) + (x[:, None] - z) ** 2)[None])  # [1, B, k]

    return LogWeightScorer(log_weights, ())


def test_the_estimate_reaches_the_exact_log_likelihood_and_resumes_exactly():
    x = np.linspace(-1.0, 1.0, 40).astype(np.float32)
    scorer = gaussian_scorer()
    saved = []
    draws = k_ladder.log_weight_matrix(scorer, x, 4000, seed=3, examples_per_call=16, on_chunk=saved.append)
    l = draws.log_weights
    assert l.shape == (40, 4000) and [len(s) for s in saved] == [16, 32, 40]
    resumed = k_ladder.log_weight_matrix(scorer, x, 4000, seed=3, examples_per_call=16, done=saved[0])
    for name in ("log_weights", "step_means", "step_variances"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(draws, name))
    # One step here: its term is log w itself, whose variance over z ~ N(0, 1) is 1/2 + x^2 (Var of (x - z)^2 / 2).
    np.testing.assert_allclose(draws.step_means[:, 0], l.mean(axis=1))
    terms = k_ladder.step_terms(draws)
    assert len(terms) == 1 and terms[0]["std_over_proposals"] == pytest.approx(
        math.sqrt(np.mean(0.5 + x.astype(np.float64) ** 2)), rel=0.05)
    exact = stats.norm.logpdf(x, 0, math.sqrt(2)).mean()
    top = k_ladder.ladder(l, [1, 4000])
    w = np.exp(l)  # the relative standard error of the mean weight bounds the error of its log
    tolerance = 5 * (w.std(1) / w.mean(1) / math.sqrt(4000)).max()
    assert abs(top[1]["importance_sampling_nats"] - exact) < tolerance
    assert top[0]["lower_bound_nats"] < exact  # Jensen: the bound is below log p(x) (by about 0.5 nats here)
    assert 0.5 * 4000 < top[1]["ess_mean"] < 4000  # a proposal near the posterior: most weights count


def test_rows_give_the_ladder_of_the_log_weights_and_resume_exactly():
    """ladder_rows keeps each example's rung statistics instead of its k log-weights: the same rungs as
    ladder(log_weight_matrix(...)) for the same proposals, and a resumed run equal to an uninterrupted one."""
    x = np.linspace(-2.0, 2.0, 21).astype(np.float32)
    scorer, ks = gaussian_scorer(), [1, 10, 300]
    draws = k_ladder.log_weight_matrix(scorer, x, 300, seed=5, examples_per_call=4)
    saved = []
    rows = k_ladder.ladder_rows(scorer, x, 300, ks, seed=5, examples_per_call=4, on_chunk=saved.append)
    assert rows.estimate.shape == (21, 3) and [len(s) for s in saved] == [4, 8, 12, 16, 20, 21]
    expected = k_ladder.ladder(draws.log_weights, ks)
    for got, want in zip(k_ladder.ladder_from_rows(rows, ks), expected):
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-12), name
    assert k_ladder.step_terms(rows) == k_ladder.step_terms(draws)
    resumed = k_ladder.ladder_rows(scorer, x, 300, ks, seed=5, examples_per_call=4, done=saved[2])
    for field in ("estimate", "bound", "ess", "spread", "best", "median", "step_means", "step_variances"):
        np.testing.assert_array_equal(getattr(resumed, field), getattr(rows, field))
    with pytest.raises(ValueError, match="1 <= k <= 300"):
        k_ladder.ladder_rows(scorer, x, 300, [301], seed=5)


def test_the_command_recomputes_batch_statistics_and_reports_the_step_terms(tmp_path):
    """eval/k_ladder.py on a tiny infusion run: batch statistics recomputed over the training set (and cached beside
    the weights, as eval/run.py does), one term per step whose means add up to the lower bound, k = 1 rung equal
    to the bound."""
    import json

    from _helpers import run_command
    from infusion_tf import InfusionConfig, training

    run = tmp_path / "run"
    training.train(InfusionConfig(width=32, depth=1, num_steps=3, sampling_steps=4, batch_size=50, train_examples=300,
                                  validation_examples=100, epochs=1), str(run), verbose=0, export=False)
    out = tmp_path / "ladder.json"
    result = run_command("eval/k_ladder.py", "--checkpoint", run, "--num-examples", "6", "--k", "30", "--ladder",
                         "1,30", "--examples-per-call", "4", "--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["batch_norm"]["mode"] == "recompute" and "max_abs_mean_change" in report["batch_norm"]
    assert any(p.name.endswith(".batch_norm.npz") for p in (run / "checkpoints").iterdir())
    steps, (one, thirty) = report["per_step"], report["rungs"]
    assert len(steps) == 3 + 1  # the prior's term and T = 3 transitions
    assert sum(s["mean_nats"] for s in steps) == pytest.approx(thirty["lower_bound_nats"], rel=1e-6)
    assert one["importance_sampling_nats"] == pytest.approx(one["lower_bound_nats"], rel=1e-9)
    assert thirty["importance_sampling_nats"] > thirty["lower_bound_nats"] and thirty["log_weight_std_mean"] > 0
    assert "per-step terms of log w" in result.stdout
    assert report["precision"]["used"] == "float32"
    bad = run_command("eval/k_ladder.py", "--checkpoint", run, "--precision", "float16", "--output", tmp_path / "b.json")
    assert bad.returncode == 2 and "precision must be one of" in bad.stderr and not (tmp_path / "b.json").exists()


def test_an_interrupted_ladder_reports_so_far_and_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """eval/k_ladder.py stopped after its first chunk: <output>.so_far.json holds the ladder over the scored examples;
    a rerun continues from the kept rows and gives the same rungs as a run that was never stopped."""
    import importlib.util
    import json
    import pathlib
    import sys

    from infusion_tf import InfusionConfig, training

    path = pathlib.Path(__file__).resolve().parents[1] / "eval" / "k_ladder.py"
    spec = importlib.util.spec_from_file_location("eval_k_ladder", path)
    command = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = command  # dataclasses look their module up while the file runs
    spec.loader.exec_module(command)
    run = tmp_path / "run"
    training.train(InfusionConfig(width=32, depth=1, num_steps=2, sampling_steps=3, batch_size=50, train_examples=200,
                                  validation_examples=100, epochs=1), str(run), verbose=0, export=False)
    flags = ["--checkpoint", str(run), "--num-examples", "6", "--k", "20", "--ladder", "1,20", "--examples-per-call",
             "2", "--batch-norm", "moving"]
    assert command.main([*flags, "--output", str(tmp_path / "whole.json")]) == 0
    monkeypatch.setattr(command, "SAVE_SECONDS", 0.0)
    original = k_ladder.ladder_rows

    def stopped_after_one_chunk(scorer, x, k, ks, seed, examples_per_call=8, done=None, on_chunk=None):
        def chunk(rows):
            on_chunk(rows)
            raise KeyboardInterrupt

        return original(scorer, x, k, ks, seed, examples_per_call, done, chunk)

    monkeypatch.setattr(k_ladder, "ladder_rows", stopped_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        command.main([*flags, "--output", str(tmp_path / "cut.json")])
    so_far = json.loads((tmp_path / "cut.so_far.json").read_text())
    assert (so_far["complete"], so_far["examples_scored"], so_far["of"]) == (False, 2, 6)
    assert so_far["rungs"][0]["num_examples"] == 2 and not (tmp_path / "cut.json").exists()
    table = (tmp_path / "cut.so_far.md").read_text()  # the same ladder as markdown tables
    assert "first 2 of 6 examples" in table
    assert f"| 20 | {so_far['rungs'][1]['importance_sampling_nats']:.1f} (s.e." in table
    kept = tmp_path / "cut.json.partial.npz"  # each example's rung statistics, not its k log-weights
    with np.load(kept) as saved:
        assert "log_weights" not in saved and saved["estimate"].shape == (2, 2)
    monkeypatch.setattr(k_ladder, "ladder_rows", original)
    assert command.main([*flags, "--output", str(tmp_path / "cut.json")]) == 0
    cut, whole = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("cut", "whole"))
    assert cut["resumed_from_examples"] == 2 and cut["rungs"] == whole["rungs"]
    assert not (tmp_path / "cut.so_far.json").exists() and not (tmp_path / "cut.json.partial.npz").exists()
    assert not (tmp_path / "cut.so_far.md").exists()
    final = (tmp_path / "cut.md").read_text()
    assert "over 6 examples" in final and f"| 1 | {cut['rungs'][0]['importance_sampling_nats']:.1f}" in final
    assert final.count("\n| mean (nats) | ") == 1 and final.count(" | ") > 3 * 8


def test_ladder_markdown_has_a_row_per_rung_and_a_column_per_step():
    l = np.random.default_rng(0).normal(size=(5, 2000)) * 3.0
    rungs = k_ladder.ladder(l, [1, 10, 2000])
    steps = [{"step": s, "mean_nats": -1.5 * s, "std_over_proposals": 2.0 + s} for s in range(4)]
    text = k_ladder.ladder_markdown(rungs, steps)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0] for row in rows[1:4]] == ["| 1", "| 10", "| 2 000"]
    top = rungs[-1]
    assert f"| {top['max_log_weight_nats'] - np.log(2000):.1f} |" in rows[3]
    assert rows[-2] == "| mean (nats) | -0.0 | -1.5 | -3.0 | -4.5 |" and rows[-1].endswith("| 2 | 3 | 4 | 5 |")
