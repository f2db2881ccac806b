"""App. F of Tao et al. (2019) on the banana: Langevin samples with the DAE-score against the DAE-residual estimator.

    python -m infusion_tf.langevin_app_f --output-dir runs/langevin/app_f

trains one denoiser phi_sigma (sigma = 0.2) on exact banana samples, runs unadjusted Langevin from a Gaussian fitted
to the data with four scores (the exact score as a control, the DAE-score, the DAE-residual as App. F writes it,
and the residual times the one constant that best matches it to the DAE-score on the data), and writes
results.json (energy distances to exact samples, beside those of 10 independent exact sets; moments, spread across
the ridge x1 = x2^2 / 4;
command, commit, CPU, wall time), samples.npz and app_f_banana.png.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np

from infusion_tf.console import parse_settings
from infusion_tf.files import write_json

__all__ = ["AppFSettings", "sample_summary", "exact_floor", "run_app_f", "main"]


@dataclasses.dataclass(frozen=True)
class AppFSettings:
    sigma: float = 0.2  # DAE noise level (App. F)
    train_examples: int = 50_000  # exact banana samples the DAE trains on
    width: int = 128  # DAE hidden units per layer
    depth: int = 3  # DAE hidden layers
    epochs: int = 40  # DAE epochs (fresh noise every step)
    batch_size: int = 512
    learning_rate: float = 2e-3  # Adam, cosine-decayed to 0
    num_chains: int = 2000  # Langevin chains = samples compared
    step_size: float = 0.01  # Langevin eps
    num_steps: int = 5000  # Langevin steps
    seed: int = 0


def _banana_score(x):
    """Exact grad log u of the banana (App. F), float32 [n, 2] -> [n, 2]: the control sampler's score."""
    import tensorflow as tf

    x1, x2 = x[:, 0], x[:, 1]
    bend = x1 - x2**2 / 4
    return tf.stack([-bend, -x2 / 4 + bend * x2 / 2], axis=1)


def sample_summary(samples: np.ndarray, exact: np.ndarray, density: str = "banana") -> dict:
    """Samples [n, 2] against exact samples [m, 2] of a toy density, raw coordinates: the squared energy distance,
    moments, and where the density has one, a shape number: the banana's spread across its ridge (x1 - x2^2 / 4 is
    exactly N(0, 1)) and its share of far-arm points abs(x2) > 5 (exact: 1.2%); the kidney's share of x1 > 0 (1/2).
    Non-finite samples (diverged chains) are counted (non_finite_share) and left out of every other number."""
    from infusion_tf.energy_distance import energy_distance

    finite = np.all(np.isfinite(samples), axis=1)  # [n]: a diverged chain ends at inf or nan
    summary = {"finite": bool(finite.all()), "non_finite_share": float(1 - finite.mean())}
    samples = samples[finite]  # the numbers below describe the finite samples only
    summary.update({"energy_distance": energy_distance(samples, exact) if len(samples) > 1 else float("nan"),
                    "mean": samples.mean(axis=0).tolist(), "std": samples.std(axis=0).tolist()})
    if density == "banana":
        summary["ridge_std"] = float((samples[:, 0] - samples[:, 1] ** 2 / 4).std())
        summary["share_abs_x2_above_5"] = float(np.mean(np.abs(samples[:, 1]) > 5))
    if density == "kidney":
        summary["share_x1_positive"] = float(np.mean(samples[:, 0] > 0))
    return summary


def exact_floor(density: str, exact: np.ndarray, seed: int, repeats: int = 10) -> dict:
    """Energy distance of `repeats` independent exact sets of the same size (seeds seed + 10 + r) to `exact`: what
    sampling noise alone gives."""
    from infusion_tf import toy_densities
    from infusion_tf.energy_distance import energy_distance

    values = [energy_distance(toy_densities.exact_samples(density, len(exact), seed + 10 + r), exact)
              for r in range(repeats)]
    return {"energy_distance": values[0], "repeats": values, "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1))}


def _figure(path: str, panels: dict[str, np.ndarray], exact: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), dpi=80, sharex=True, sharey=True)
    for ax, (title, points) in zip(axes, panels.items()):
        ax.scatter(exact[:, 1], exact[:, 0], s=1, c="tab:gray", alpha=0.3)
        ax.scatter(points[:, 1], points[:, 0], s=1, c="tab:blue", alpha=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-8, 8)
        ax.set_ylim(-4, 16)
        ax.set_xlabel("x2")
    axes[0].set_ylabel("x1")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_app_f(settings: AppFSettings, output_dir: str) -> dict:
    """Trains the DAE, samples with each score, writes results.json and app_f_banana.png; returns the results."""
    import keras

    from infusion_tf import provenance, score, toy_densities

    start = time.time()
    os.makedirs(output_dir, exist_ok=True)
    s = settings
    train = toy_densities.banana_samples(s.train_examples, s.seed).astype(np.float32)
    exact_a = toy_densities.banana_samples(s.num_chains, s.seed + 1)
    exact_b = toy_densities.banana_samples(s.num_chains, s.seed + 2)

    keras.utils.set_random_seed(s.seed)
    dae = score.DenoisingAutoencoder(2, s.sigma, width=s.width, depth=s.depth, seed=s.seed)
    dae.adapt(train)
    decay = keras.optimizers.schedules.CosineDecay(s.learning_rate, s.epochs * (len(train) // s.batch_size))
    dae.compile(optimizer=keras.optimizers.Adam(decay))
    history = dae.fit(train, batch_size=s.batch_size, epochs=s.epochs, verbose=0)
    trained = time.time()

    rescale = score.residual_rescale(dae, train[:5000], s.sigma)  # least squares on data
    scores = {
        "exact score": _banana_score,
        "DAE-score": lambda x: score.dae_score(dae, x, s.sigma),
        "DAE-residual (as written)": lambda x: score.dae_residual_score(dae, x),
        f"DAE-residual x {rescale:.3g}": lambda x: rescale * score.dae_residual_score(dae, x),
    }
    rng = np.random.default_rng(s.seed + 3)
    x0 = rng.multivariate_normal(train.mean(axis=0), np.cov(train.T), size=s.num_chains).astype(np.float32)
    samples = {name: score.langevin_sample(fn, x0, s.step_size, s.num_steps, seed=s.seed).numpy()
               for name, fn in scores.items()}

    results = {
        "settings": dataclasses.asdict(s),
        "dae_final_loss": float(history.history["loss"][-1]),
        "residual_rescale": rescale,
        "exact_vs_exact": exact_floor("banana", exact_a, s.seed),
        "start": sample_summary(x0, exact_a),
        "samplers": {name: sample_summary(x, exact_a) for name, x in samples.items()},
        "exact_moments": {"mean": exact_a.mean(axis=0).tolist(), "std": exact_a.std(axis=0).tolist()},
        "command": "python -m infusion_tf.langevin_app_f " + " ".join(sys.argv[1:]),
        "environment": provenance.environment(),  # the commit this process started with, CPU, cores, load
        "wall_s": {"train_dae": trained - start, "total": time.time() - start},
    }
    _figure(os.path.join(output_dir, "app_f_banana.png"), {"exact samples": exact_b, **samples}, exact_a)
    np.savez(os.path.join(output_dir, "samples.npz"), exact=exact_a, start=x0,
             **{name.replace(" ", "_"): x for name, x in samples.items()})
    write_json(os.path.join(output_dir, "results.json"), results, indent=1)
    return results


def main(argv=None) -> int:
    settings, output_dir = parse_settings(AppFSettings, argv, __doc__.split("\n\n")[0],
                                          prog="python -m infusion_tf.langevin_app_f")
    results = run_app_f(settings, output_dir)
    print(json.dumps({k: results[k] for k in ("exact_vs_exact", "samplers", "residual_rescale", "wall_s")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
