"""Pictures: grids of samples (Figure 4 of the paper), sampling chains (Figure 1), training curves (Figure 3),
inpainting (Figure 5), and the samples a training run draws every few epochs (write_samples). Each file is
written atomically (files.atomic_write)."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import tensorflow as tf

from infusion_tf import files
from infusion_tf.protocol import capabilities

__all__ = ["image_grid", "save_png", "save_sample_grid", "save_chain_grid", "save_inpainting_grid", "save_scatter",
           "plot_curves", "write_samples"]


def image_grid(images: np.ndarray, rows: int, cols: int, padding: int = 1) -> np.ndarray:
    """Tiles images [N, H, W, C] in [0, 1] into one uint8 image [rows * (H + p), cols * (W + p), C], row-major."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    grid = np.ones((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.float32)
    for i in range(min(n, rows * cols)):
        r, q = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[top:top + h, left:left + w] = images[i]
    return np.round(grid * 255.0).astype(np.uint8)


def save_png(path: str, image: np.ndarray, scale: int = 2) -> str:
    """Writes a uint8 [H, W, C] image as PNG (nearest-neighbour upscaled by `scale`), atomically."""
    image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    return files.atomic_write(path, lambda tmp: tf.io.write_file(tmp, tf.io.encode_png(image)))


def save_sample_grid(path: str, samples: np.ndarray, cols: int = 10) -> str:
    """A grid of samples [N, H, W, C] (Figure 4)."""
    samples = np.asarray(samples)
    rows = int(np.ceil(len(samples) / cols))
    return save_png(path, image_grid(samples, rows, cols))


def save_chain_grid(path: str, chain: np.ndarray, max_columns: int = 16) -> str:
    """Sampling chains [steps + 1, N, H, W, C]: one row per chain, columns from z(0) to the last step (Figure 1).

    Long chains are thinned to at most `max_columns` evenly spaced steps, always keeping the first and last.
    """
    chain = np.asarray(chain)
    steps = chain.shape[0]
    columns = np.unique(np.linspace(0, steps - 1, min(steps, max_columns)).round().astype(int))
    chosen = chain[columns]  # [cols, N, H, W, C]
    tiles = np.transpose(chosen, (1, 0, 2, 3, 4)).reshape(-1, *chain.shape[2:])  # row = chain
    return save_png(path, image_grid(tiles, chain.shape[1], len(columns)))


def save_inpainting_grid(path: str, originals: np.ndarray, inputs: np.ndarray, completions: np.ndarray) -> str:
    """Inpainting (Figure 5), one row per image: the original, the chain's input z(0), then the completions.

    originals, inputs: [n, H, W, C] in [0, 1]; completions: [n, m, H, W, C], m completions of each image.
    Raises: ValueError when the shapes do not line up.
    """
    originals, inputs, completions = np.asarray(originals), np.asarray(inputs), np.asarray(completions)
    n = len(originals)
    if originals.ndim != 4 or inputs.shape != originals.shape or completions.ndim != 5 or \
            completions.shape[0] != n or completions.shape[2:] != originals.shape[1:]:
        raise ValueError(f"expected originals and inputs [n, H, W, C] and completions [n, m, H, W, C], got "
                         f"{originals.shape}, {inputs.shape} and {completions.shape}")
    tiles = np.concatenate([originals[:, None], inputs[:, None], completions], axis=1)  # [n, 2 + m, H, W, C]
    return save_png(path, image_grid(tiles.reshape(-1, *originals.shape[1:]), n, tiles.shape[1]))


def save_scatter(path: str, samples: np.ndarray, reference: np.ndarray | None = None, title: str = "") -> str:
    """Scatter plot of 2-D samples [N, 2] over the data [M, 2] (toy densities), with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, alpha=0.3, c="tab:gray", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.6, c="tab:blue", label="samples")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    files.atomic_write(path, fig.savefig)  # the temporary name ends in .png: matplotlib takes the format from it
    plt.close(fig)
    return path


def _read_curves(csv_path: str, keys) -> tuple[list[int], dict[str, list[float]]]:
    """The 1-based epochs of a run's log.csv and the values of each of `keys` it has.

    Raises: ValueError naming the file when it holds no epochs or a row without numbers where they belong.
    """
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path} holds no epochs yet")
    try:
        epochs = [int(r["epoch"]) + 1 for r in rows]
        return epochs, {key: [float(r[key]) for r in rows] for key in keys if key in rows[0]}
    except (KeyError, TypeError, ValueError) as e:  # a missing column, a short row, a value that is not a number
        raise ValueError(f"{csv_path} is damaged: {type(e).__name__} {e}") from None


def plot_curves(csv_path: str, png_path: str, keys=("lower_bound", "val_lower_bound"), title: str = "",
                labels: dict[str, str] | None = None) -> str:
    """Training curves from the CSV log of a run (Figure 3): lower bound in nats against epochs.

    labels: legend text per key (default: the key itself). The PNG is written under a temporary name and renamed.
    Raises: ValueError for a log without epochs or a damaged one (see _read_curves).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs, curves = _read_curves(csv_path, keys)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, values in curves.items():
        ax.plot(epochs, values, label=(labels or {}).get(key, key))
    ax.set_xlabel("epoch")
    ax.set_ylabel("lower bound (nats per example)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    files.atomic_write(png_path, fig.savefig)  # the temporary name ends in .png: matplotlib takes the format from it
    plt.close(fig)
    return png_path


def write_samples(model, folder: str, tag: str, reference=None, num_samples=100, num_chains=10,
                  seed: int = 1234) -> list[str]:
    """Writes samples_<tag>.png, chains_<tag>.png for a model with the "chain" capability, or a scatter plot for
    2-D data, and copies of the latest.

    model: any model of the protocol (its sample and config.sampling_steps); reference: data [M, 2] under a scatter
    plot.
    """
    os.makedirs(folder, exist_ok=True)
    steps = model.config.sampling_steps
    samples = np.asarray(model.sample(num_samples, steps, seed=seed))
    written = []
    if len(model.config.example_shape) == 1:
        written.append(save_scatter(os.path.join(folder, f"samples_{tag}.png"), samples,
                                    reference, title=f"samples, {steps} steps ({tag})"))
    else:
        written.append(save_sample_grid(os.path.join(folder, f"samples_{tag}.png"), samples))
        if "chain" in capabilities(model):
            _, chain = model.sample(num_chains, steps, seed=seed + 1, return_chain=True)
            written.append(save_chain_grid(os.path.join(folder, f"chains_{tag}.png"), np.asarray(chain)))
    for path in written:
        latest = os.path.join(folder, os.path.basename(path).replace(f"_{tag}", ""))
        files.atomic_write(latest, lambda tmp, path=path: shutil.copyfile(path, tmp))
    return written
