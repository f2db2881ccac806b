"""Annealed against not annealed GANs on the 8-Gaussian ring (issue 17, item 4 on a toy; Tao et al. 2019, App. I.1).

    python -m infusion_tf.annealed_gan_mog --output-dir runs/langevin/gan_mog

trains, for each seed, one GAN with lambda_t = 0 and one with linear annealing from lambda0 (T_max = 0.9 of the steps),
same networks, data and seed, and writes results.json: modes covered (a mode counts when at least 1% of 2000 samples
lie within 3 std = 0.3 of its centre), the share of samples within 0.3 of some centre, the energy distance to exact
samples beside that of an independent exact set; with command, commit, CPU and wall time; and gan_mog.png.
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

__all__ = ["GanMogSettings", "mode_statistics", "run", "main"]

_NAME = "mixture_of_gaussians"


@dataclasses.dataclass(frozen=True)
class GanMogSettings:
    steps: int = 4000  # GAN steps (one D, one DAE and one G update each)
    batch_size: int = 256
    lambda0: float = 1.0  # lambda at step 0 of the annealed run
    generator_loss: str = "jsd"
    sigma: float = 0.1  # DAE noise level on the generator's samples
    width: int = 128
    depth: int = 2
    learning_rate: float = 1e-3  # Adam, beta_1 = 0.5, for all three networks
    seeds: int = 3  # seeds 0 .. seeds - 1
    num_samples: int = 2000


def mode_statistics(samples: np.ndarray) -> dict:
    """Modes covered (>= 1% of samples within 0.3 of the centre) and the share of samples within 0.3 of a centre."""
    angles = 2 * np.pi * np.arange(8) / 8
    centers = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # the ring of data.py: radius 1, std 0.1
    dist = np.linalg.norm(samples[:, None, :] - centers[None], axis=-1)  # [n, 8]
    near = dist < 0.3
    per_mode = near.mean(axis=0)
    return {"modes_covered": int(np.sum(per_mode >= 0.01)), "high_quality_share": float(near.any(axis=1).mean()),
            "share_per_mode": per_mode.round(4).tolist()}


def _train_one(s: GanMogSettings, lambda0: float, seed: int, train: np.ndarray) -> np.ndarray:
    import keras

    from infusion_tf import annealed_gan, annealing

    keras.utils.set_random_seed(seed)
    lambdas = annealing.linear_lambda(s.steps, lambda0, 0.9 * s.steps) if lambda0 else np.zeros(1)
    gan = annealed_gan.AnnealedGAN(2, lambdas, width=s.width, depth=s.depth, sigma=s.sigma,
                                   generator_loss=s.generator_loss, seed=seed)
    gan.compile(*(keras.optimizers.Adam(s.learning_rate, beta_1=0.5) for _ in range(3)))
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices(train).shuffle(len(train), seed=seed).repeat().batch(s.batch_size)
    gan.fit(batches, epochs=1, steps_per_epoch=s.steps, verbose=0)
    return gan.sample(s.num_samples, seed=seed + 100).numpy()


def run(s: GanMogSettings, output_dir: str) -> dict:
    from infusion_tf import data, provenance
    from infusion_tf.energy_distance import energy_distance

    start = time.time()
    os.makedirs(output_dir, exist_ok=True)
    train = data.toy_to_raw(_NAME, data.toy_samples(_NAME, 50_000, 0)).astype(np.float32)
    exact = data.toy_to_raw(_NAME, data.toy_samples(_NAME, s.num_samples, 1))
    other = data.toy_to_raw(_NAME, data.toy_samples(_NAME, s.num_samples, 2))
    runs, samples = [], {}
    for seed in range(s.seeds):
        for lambda0 in (0.0, s.lambda0):
            t0 = time.time()
            x = _train_one(s, lambda0, seed, train)
            samples[f"seed{seed}_lambda{lambda0:g}"] = x
            runs.append({"seed": seed, "lambda0": lambda0, "energy_distance": energy_distance(x, exact),
                         "wall_s": time.time() - t0, **mode_statistics(x)})
    results = {"settings": dataclasses.asdict(s), "runs": runs,
               "exact_vs_exact": {"energy_distance": energy_distance(other, exact), **mode_statistics(other)},
               "command": "python -m infusion_tf.annealed_gan_mog " + " ".join(sys.argv[1:]),
               "environment": provenance.environment(),  # the commit this process started with, CPU, cores, load
               "wall_s": time.time() - start}
    _figure(os.path.join(output_dir, "gan_mog.png"), samples, exact)
    np.savez(os.path.join(output_dir, "samples.npz"), exact=exact, **samples)
    write_json(os.path.join(output_dir, "results.json"), results, indent=1)
    return results


def _figure(path: str, samples: dict, exact: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(2.6 * len(samples), 2.6), dpi=70, squeeze=False)
    for ax, (title, x) in zip(axes[0], samples.items()):
        ax.scatter(exact[:, 0], exact[:, 1], s=1, c="tab:gray", alpha=0.3)
        ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:blue", alpha=0.5)
        ax.set_title(title, fontsize=8)
        ax.set_xlim(-1.6, 1.6)
        ax.set_ylim(-1.6, 1.6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    settings, output_dir = parse_settings(GanMogSettings, argv, __doc__.split("\n\n")[0],
                                          prog="python -m infusion_tf.annealed_gan_mog")
    results = run(settings, output_dir)
    print(json.dumps(results["runs"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
