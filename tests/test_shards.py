"""Sharded evaluation (shards.py, eval/run.py --shard I --num-shards N, eval/merge_shards.py): the merged shards
equal an unsharded run per example; a missing or duplicated shard is refused; a finished shard is not recomputed."""

import json
import os
import shutil

import numpy as np
import pytest

from _helpers import run_command
from infusion_tf import estimators, evaluate, shards, training
from infusion_tf.config import InfusionConfig

TINY = dict(width=32, depth=1, num_steps=3, sampling_steps=4, batch_size=50, train_examples=300,
            validation_examples=100, epochs=1, sample_every=1)
N, SHARDS = 11, 3  # 11 examples in slices of 2, 4, 5 (calls of 2): unequal sizes on purpose
SETTINGS = dict(num_examples=N, repeats=2, k=5, validation_examples=20, batch_norm="moving", seed=3,
                rows_per_call=10)  # two examples per call: shards start at even examples


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("run") / "mnist")
    training.train(InfusionConfig(**TINY), folder, verbose=0, export=False)
    return folder


def evaluate_(checkpoint, **kwargs):
    return evaluate.evaluate(evaluate.EvalSettings(checkpoint=checkpoint, **{**SETTINGS, **kwargs}))


def test_shard_ranges_tile_the_examples():
    for n, count, align in ((11, 3, 1), (1000, 7, 1), (5, 5, 1), (4, 1, 1), (1000, 4, 204), (11, 3, 2), (7, 2, 5)):
        ranges = [shards.shard_range(n, i, count, align) for i in range(count)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(start % align == 0 for start, _ in ranges)  # each shard starts at a call's first example
        blocks = [-(-(stop - start) // align) for start, stop in ranges]
        assert max(blocks) - min(blocks) <= 1 and min(blocks) >= 1
    with pytest.raises(ValueError, match="more than the 2 calls of 5 examples"):
        shards.shard_range(7, 0, 3, 5)


@pytest.mark.parametrize("shard, num_shards, message", [(3, 3, "shard must be in 0 .. 2"), (-1, 2, "shard must be"),
                                                        (0, 0, "num_shards must be >= 1"),
                                                        (0, 12, "more than the 11 examples")])
def test_bad_shards_are_clear_errors(shard, num_shards, message):
    with pytest.raises(ValueError, match=message):
        evaluate.EvalSettings(checkpoint="x", num_examples=11, shard=shard, num_shards=num_shards)


def test_sample_estimators_are_not_sharded():
    with pytest.raises(ValueError, match="parzen draws samples .* cannot be sharded"):
        evaluate.EvalSettings(checkpoint="x", estimator="parzen", shard=0, num_shards=2)


def test_an_example_has_the_same_chains_in_any_slice(checkpoint):
    """score_chains with first_index: rows 4 .. 8 scored alone equal the same rows scored with the whole set, for
    one or two examples per call; rows numbered from 0 (first_index None) get other chains; a slice that does not
    start at a call's first example is refused."""
    from infusion_tf.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint)
    scorer = estimators.LogWeightScorer.from_model(model)
    x = np.random.default_rng(0).uniform(0.01, 0.99, (9, 28, 28, 1)).astype(np.float32)
    whole = estimators.score_chains(scorer, x, 6, seed=5, rows_per_call=4, first_index=0)
    part = estimators.score_chains(scorer, x[4:], 6, seed=5, rows_per_call=4, first_index=4)
    np.testing.assert_array_equal(part.log_sum_exp, whole.log_sum_exp[4:])
    np.testing.assert_array_equal(part.sum, whole.sum[4:])
    batch_wise = estimators.score_chains(scorer, x[4:], 6, seed=5, rows_per_call=4)
    assert not np.array_equal(batch_wise.log_sum_exp, whole.log_sum_exp[4:])
    other_seed = estimators.score_chains(scorer, x[4:], 6, seed=6, rows_per_call=4, first_index=4)
    assert not np.array_equal(other_seed.log_sum_exp, part.log_sum_exp)
    assert estimators.examples_per_call(6, 12) == 2  # two examples per call
    whole = estimators.score_chains(scorer, x, 6, seed=5, rows_per_call=12)
    part = estimators.score_chains(scorer, x[4:], 6, seed=5, rows_per_call=12, first_index=4)
    np.testing.assert_array_equal(part.log_sum_exp, whole.log_sum_exp[4:])
    with pytest.raises(ValueError, match="multiple of the 2 examples scored per call"):
        estimators.score_chains(scorer, x[3:], 6, seed=5, rows_per_call=12, first_index=3)


def fake_shard(values, bounds, per_step, shard, num_shards, first, **extra):
    """The fields of a shard's results that the merge reads, from per-example arrays [R, n_s]."""
    settings = {"checkpoint": "run", "estimator": "isotropic", "seed": 0, "k": 5, "shard": shard,
                "num_shards": num_shards, "output": None, "config": {"example_shape": [2]}}
    summary = shards.chain_summary(values, bounds, per_step)
    return {"estimator": "isotropic", **summary, "settings": settings, "weights_sha256": "w",
            "examples": {"first": first, "stop": first + values.shape[1]}, "bits_per_dim": 1.0, **extra}


def test_merge_of_synthetic_shards_against_numpy():
    """The merge's summary of per-example values against numpy on the concatenation, per-step terms weighted by the
    shards' sizes, and a shard that chose another isotropic variance refused."""
    rng = np.random.default_rng(0)
    values, bounds, per_step = rng.normal(size=(3, 7)), rng.normal(size=(3, 7)) - 5, rng.normal(size=(3, 7, 4))
    parts = [fake_shard(values[:, a:b], bounds[:, a:b], per_step[:, a:b].mean(axis=1), i, 2, a,
                        isotropic_variance=0.01) for i, (a, b) in enumerate(((0, 3), (3, 7)))]
    merged = shards.merge_shards([("b.json", parts[1]), ("a.json", parts[0])])
    np.testing.assert_allclose(merged["repeats_nats"], values.mean(axis=1), rtol=1e-13)
    assert merged["std_nats"] == pytest.approx(values.mean(axis=1).std(ddof=1), rel=1e-12)
    assert merged["standard_error_nats"] == pytest.approx(values.mean(axis=0).std(ddof=1) / np.sqrt(7), rel=1e-12)
    np.testing.assert_allclose(merged["per_step"], per_step.mean(axis=(0, 1)), rtol=1e-12)
    assert merged["lower_bound_same_chains"]["mean_nats"] == pytest.approx(bounds.mean(), rel=1e-12)
    assert merged["bits_per_dim"] == pytest.approx(1.0 - (values.mean() - parts[0]["mean_nats"]) / (2 * np.log(2)))
    parts[1]["isotropic_variance"] = 0.1
    with pytest.raises(ValueError, match="chose isotropic_variance 0.1"):
        shards.merge_shards([("a.json", parts[0]), ("b.json", parts[1])])


def test_merged_shards_equal_an_unsharded_run(checkpoint, tmp_path):
    estimator = "importance_sampling"
    whole = evaluate_(checkpoint, estimator=estimator, output=str(tmp_path / "whole.json"))
    paths = [evaluate_(checkpoint, estimator=estimator, shard=i, num_shards=SHARDS)["output"] for i in range(SHARDS)]
    assert [os.path.basename(p) for p in paths] == [f"results_{estimator}.shard-{i}-of-3.json" for i in range(3)]
    assert shards.find_shard_files(checkpoint, estimator) == sorted(paths)
    merged_path = tmp_path / "merged.json"
    assert shards.merge_main([*reversed(paths), "--output", str(merged_path)]) == 0  # any order
    merged = json.loads(merged_path.read_text())
    for kind in ("estimate", "lower_bound"):
        np.testing.assert_array_equal(merged["per_example_nats"][kind], whole["per_example_nats"][kind])
        assert np.asarray(whole["per_example_nats"][kind]).shape == (2, N)
    for key in ("mean_nats", "std_nats", "repeats_nats", "standard_error_nats", "lower_bound_same_chains",
                "examples"):
        assert merged[key] == whole[key], key
    assert merged["bits_per_dim"] == pytest.approx(whole["bits_per_dim"], rel=1e-12)
    np.testing.assert_allclose(merged["per_step"], whole["per_step"], rtol=1e-12)
    assert merged["settings"]["num_shards"] == 1 and len(merged["shards"]) == 3
    shutil.rmtree(os.path.join(checkpoint, "shards"))


def test_missing_or_duplicated_shards_are_refused(checkpoint, tmp_path, capsys):
    paths = [evaluate_(checkpoint, estimator="lower_bound", shard=i, num_shards=SHARDS)["output"] for i in range(3)]
    assert shards.merge_main([paths[0], paths[2]]) == 2
    assert "error: missing shard 1 of 3: run eval/run.py with --shard 1 --num-shards 3" in capsys.readouterr().err
    copy = str(tmp_path / "copy_of_shard_2.json")
    shutil.copy(paths[2], copy)
    assert shards.merge_main([*paths, copy]) == 2
    assert "error: shard 2 of 3 is given twice" in capsys.readouterr().err
    other = evaluate_(checkpoint, estimator="lower_bound", shard=1, num_shards=SHARDS, seed=4,
                      output=str(tmp_path / "other_seed.json"))["output"]
    assert shards.merge_main([paths[0], other, paths[2]]) == 2
    assert "its settings seed differ" in capsys.readouterr().err
    halves = evaluate_(checkpoint, estimator="lower_bound", shard=0, num_shards=2,
                       output=str(tmp_path / "half.json"))["output"]
    assert shards.merge_main([*paths[:2], halves]) == 2
    assert "different splits (num_shards 2, 3)" in capsys.readouterr().err
    assert shards.merge_main(["--checkpoint", checkpoint, "--estimator", "lower_bound"]) == 0  # every shard found
    assert os.path.isfile(os.path.join(checkpoint, "results_lower_bound.json"))
    shutil.rmtree(os.path.join(checkpoint, "shards"))


def test_a_finished_shard_is_not_recomputed(checkpoint, monkeypatch):
    first = evaluate_(checkpoint, estimator="importance_sampling", shard=1, num_shards=SHARDS)
    mtime = os.stat(first["output"]).st_mtime_ns

    def no_scoring(*args, **kwargs):
        raise AssertionError("a finished shard was scored again")

    monkeypatch.setattr(estimators, "score_chains", no_scoring)
    again = evaluate_(checkpoint, estimator="importance_sampling", shard=1, num_shards=SHARDS)
    assert again["per_example_nats"] == first["per_example_nats"] and os.stat(first["output"]).st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="scored again"):  # other settings: recomputed
        evaluate_(checkpoint, estimator="importance_sampling", shard=1, num_shards=SHARDS, k=6)
    shutil.rmtree(os.path.join(checkpoint, "shards"))


def test_command_lines(checkpoint, tmp_path, capsys):
    """eval/run.py --shard/--num-shards and eval/merge_shards.py (a process of its own, as a user runs it); bad input
    is one error line."""
    common = ["--checkpoint", checkpoint, "--estimator", "lower_bound", "--num-examples", "4", "--k", "2",
              "--repeats", "1", "--batch-norm", "moving", "--validation-examples", "10"]
    assert evaluate.main([*common, "--shard", "1", "--num-shards", "2"]) == 2  # 2048 rows: all 4 in one call
    assert "error: num_shards 2 is more than the 1 calls of 1024 examples" in capsys.readouterr().err
    common += ["--rows-per-call", "4"]  # two examples per call
    assert evaluate.main([*common, "--shard", "2", "--num-shards", "2"]) == 2
    assert "error: shard must be in 0 .. 1" in capsys.readouterr().err
    for shard in ("0", "1"):  # eval/run.py's main, in this process (a TensorFlow process costs ~8 s of CPU)
        assert evaluate.main([*common, "--shard", shard, "--num-shards", "2"]) == 0
    merged = run_command("eval/merge_shards.py", "--checkpoint", checkpoint, "--estimator", "lower_bound")
    assert merged.returncode == 0, merged.stderr
    assert "merged 2 shards, 4 examples" in merged.stdout
    results = json.loads(open(os.path.join(checkpoint, "results_lower_bound.json")).read())
    assert results["examples"] == {"first": 0, "stop": 4} and len(results["per_example_nats"]["estimate"][0]) == 4
    assert shards.merge_main(["--checkpoint", str(tmp_path), "--estimator", "lower_bound"]) == 2
    assert "error: no shard results of 'lower_bound'" in capsys.readouterr().err
    shutil.rmtree(os.path.join(checkpoint, "shards"))
