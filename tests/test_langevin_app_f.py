"""The App. F experiment (infusion_tf/langevin_app_f.py) end to end on a tiny setting: files, keys, finite numbers."""

import json
import math

import pytest

from infusion_tf import langevin_app_f


def test_the_app_f_command_writes_results_and_figure(tmp_path, capsys):
    out = tmp_path / "app_f"
    assert langevin_app_f.main(["--output-dir", str(out), "--train-examples", "1024", "--epochs", "1",
                                "--width", "16", "--depth", "1", "--num-chains", "64", "--num-steps", "20"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert (out / "app_f_banana.png").stat().st_size > 1000
    assert set(results["samplers"]) >= {"exact score", "DAE-score", "DAE-residual (as written)"}
    assert all(math.isfinite(r["energy_distance"]) for r in results["samplers"].values())
    assert results["settings"]["sigma"] == 0.2 and results["command"].startswith("python -m infusion_tf")
    assert len(results["exact_vs_exact"]["repeats"]) == 10 and (out / "samples.npz").is_file()
    assert "exact_vs_exact" in capsys.readouterr().out


def test_sample_summary_counts_diverged_chains_and_describes_the_rest():
    import numpy as np

    from infusion_tf import toy_densities
    from infusion_tf.energy_distance import energy_distance

    exact = toy_densities.exact_samples("kidney", 300, 1)
    samples = toy_densities.exact_samples("kidney", 200, 2)
    broken = np.concatenate([samples, [[np.nan, 0.0], [np.inf, 1.0]]])  # two diverged chains
    summary = langevin_app_f.sample_summary(broken, exact, "kidney")
    assert not summary["finite"] and summary["non_finite_share"] == pytest.approx(2 / 202)
    assert summary["energy_distance"] == energy_distance(samples, exact)
    assert summary["share_x1_positive"] == np.mean(samples[:, 0] > 0)
    np.testing.assert_allclose(summary["std"], samples.std(axis=0))
