"""Figures of a trained model: `python eval/figures.py --checkpoint DIR --output-dir docs/figures/mnist`.

From a run folder (or a pretrained/ folder) it writes into --output-dir:
    samples.png             100 samples, means of the last of config.sampling_steps steps (the paper's Figure 4)
    chains.png              10 model sampling chains, z(0) on the left to the last step (Figure 1)
    infusion_chains.png     10 infusion chains infused by test digits (Figure 1 bottom, Figure 8a): z~(0) .. z~(T-1)
                            drawn from q, the mean of p(T)(. | z~(T-1)), and the target digit in the last column
                            (infusion models only)
    training_curve.png      lower bound per epoch, train and validation, from the run's log.csv (Figure 3);
                            skipped when the folder has no log.csv
    inpainting.png          test digits whose bottom half is filled in given their top half (Section 4.3,
                            Figure 5): original, the chain's input z(0), then several completions
    nearest_neighbours.png  10 of the samples, each followed by its 3 nearest training images (Figure 4's
                            last column; quality.save_nearest_neighbour_figure)
The batch-norm statistics are the checkpoint's moving averages unless --batch-norm recompute, which first
recomputes them over the training set as eval/run.py does (Appendix A.1).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile

import numpy as np

from infusion_tf.console import BAD_INPUT, OneLineErrorParser, check_output_folder, print_error, quiet_tensorflow_logs
from infusion_tf.config import check_seed
from infusion_tf.protocol import capabilities

__all__ = ["FigureSettings", "write_figures", "figures_parser", "main", "infusion_chain_figure"]


@dataclasses.dataclass(frozen=True)
class FigureSettings:
    """Every setting of one call of the figures command."""

    checkpoint: str
    output_dir: str = "docs/figures/mnist"
    weights: str | None = None  # best | last | a path; None: best if present, else last
    seed: int = 0
    batch_norm: str = "moving"  # moving (training's averages) | recompute (over the training set, as eval/run.py)
    sampling_steps: int | None = None  # None: config.sampling_steps (30 for MNIST, Section 4.2)
    num_samples: int = 100  # samples in the grid
    num_chains: int = 10  # rows of the chain figure
    inpaint_digits: int = 10  # test digits in the inpainting figure, the first of the test split
    completions: int = 6  # completions per digit
    neighbours: int = 3  # nearest training images per sample
    data_dir: str | None = None  # None: the run's data, where its data_source.json says (or the package's MNIST)

    def __post_init__(self):
        if self.batch_norm not in ("moving", "recompute"):
            raise ValueError(f"batch_norm must be moving or recompute, got {self.batch_norm!r}")
        for name in ("num_samples", "num_chains", "inpaint_digits", "completions", "neighbours"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sampling_steps is not None and self.sampling_steps < 1:
            raise ValueError(f"sampling_steps must be >= 1, got {self.sampling_steps}")
        check_seed(self.seed)


def _load(settings: FigureSettings):
    """(model, training images uint8, test images uint8): the checkpoint's model with the chosen statistics."""
    from infusion_tf.checkpoint import find_weights, load_checkpoint
    from infusion_tf.evaluate import use_recomputed_batch_norm
    from infusion_tf.run_folder import load_run_data, training_splits

    model = load_checkpoint(settings.checkpoint, settings.weights)
    config = model.config
    if len(config.example_shape) != 3:
        raise ValueError(f"the figures are image grids; {settings.checkpoint!r} models {config.dataset!r} with "
                         f"examples of shape {config.example_shape}")
    # The run's own data, where its data_source.json says (--data-dir when they moved); checks the shape.
    splits, source = load_run_data(config, settings.checkpoint, settings.data_dir)
    train = training_splits(config, splits).train  # the run's training images
    if settings.batch_norm == "recompute":  # as eval/run.py: the same statistics, read from its cache if there
        use_recomputed_batch_norm(model, find_weights(settings.checkpoint, settings.weights), train,
                                  seed=settings.seed, data_fingerprint=source["fingerprint"])
    return model, train, splits.test


def top_half_mask(images: np.ndarray) -> np.ndarray:
    """1 on the top half of every image [n, H, W, C] (the known pixels), 0 on the bottom half."""
    mask = np.zeros_like(images, dtype=np.float32)
    mask[:, :images.shape[1] // 2] = 1.0
    return mask


def _inpainting(model, test: np.ndarray, settings: FigureSettings, steps: int, path: str) -> str:
    """Section 4.3: the top half of each test digit is clamped through the chain; the bottom half starts from p(0)."""
    from infusion_tf import data, visualize

    n, m = min(settings.inpaint_digits, len(test)), settings.completions
    x = data.eval_points(test[:n], seed=settings.seed, dequantize=model.config.dequantize)  # [n, H, W, C]
    repeated = np.repeat(x, m, axis=0)  # [n * m, H, W, C]: m chains per digit
    final, chain = model.inpaint(repeated, top_half_mask(repeated), steps, seed=settings.seed + 2, return_chain=True)
    shape = x.shape[1:]
    inputs = np.asarray(chain[0]).reshape(n, m, *shape)[:, 0]  # z(0): top half known, bottom half from p(0)
    return visualize.save_inpainting_grid(path, x, inputs, np.asarray(final).reshape(n, m, *shape))


def write_figures(settings: FigureSettings) -> dict[str, str]:
    """Writes the figures listed in the module docstring; returns {name: path} of those written.

    They are drawn into a temporary folder inside --output-dir and renamed into place at the end, so a call
    that fails leaves --output-dir as it was (and does not create it). Raises: ValueError or OSError for bad
    settings, a missing or foreign checkpoint, missing data, or an output folder that cannot be written.
    """
    check_output_folder(settings.output_dir)  # before minutes of work, not after them
    model, train, test = _load(settings)
    print(f"batch-norm statistics: {settings.batch_norm}", flush=True)
    created = not os.path.isdir(settings.output_dir)
    os.makedirs(settings.output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".figures-", dir=settings.output_dir)
    try:
        drawn = _draw(model, train, test, settings, staging)
        written = {name: os.path.join(settings.output_dir, os.path.basename(file)) for name, file in drawn.items()}
        for name, file in drawn.items():
            os.replace(file, written[name])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not os.listdir(settings.output_dir):
            os.rmdir(settings.output_dir)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return written


def infusion_chain_figure(model, digits: np.ndarray, seed: int) -> np.ndarray:
    """The columns of the infusion-chain figure (Figure 1 bottom, Figure 8a) for test digits (uint8 or float
    [N, H, W, C]): z~(0) .. z~(T-1) ~ q(z~ | x) (`chains.infusion_trajectory`, moving batch-norm statistics), the
    mean of p(T)(. | z~(T-1)), then x. Returns float32 [T + 2, N, H, W, C] in [0, 1] (draws clipped for display)."""
    import tensorflow as tf

    from infusion_tf import chains, data

    x = tf.constant(data.eval_points(digits, seed=seed, dequantize=model.config.dequantize))
    z = chains.infusion_trajectory(model.operator, x, model.prior_mean, model.prior_variance, model.alpha,
                                   model.config.delta_variance, chains.seed_pair(seed), use_batch_statistics=False)
    mean, _ = model.operator(z[-1], step=model.config.num_steps - 1, use_batch_statistics=False)
    columns = tf.concat([z, mean[None], x[None]], axis=0)
    return np.clip(columns.numpy(), 0.0, 1.0).astype(np.float32)


def _draw(model, train: np.ndarray, test: np.ndarray, settings: FigureSettings, folder: str) -> dict[str, str]:
    """Draws every figure into `folder`, printing progress with the paths they will have in --output-dir."""
    from infusion_tf import quality, visualize

    steps = settings.sampling_steps or model.config.sampling_steps
    log = os.path.join(settings.checkpoint, "log.csv")
    path = {name: os.path.join(folder, f"{name}.png")
            for name in ("samples", "chains", "infusion_chains", "training_curve", "inpainting", "nearest_neighbours")}
    written, total = {}, len(path)

    def progress(i, name, what):
        print(f"[{i}/{total}] {name}: {what}", flush=True)

    def wrote(name, file):
        written[name] = file
        print(f"      wrote {os.path.join(settings.output_dir, os.path.basename(file))}", flush=True)

    progress(1, "samples", f"{settings.num_samples} samples, means of step {steps}")
    samples = np.asarray(model.sample(settings.num_samples, steps, seed=settings.seed))  # [n, H, W, C]
    wrote("samples", visualize.save_sample_grid(path["samples"], samples))
    caps = capabilities(model)  # the chain and inpainting figures need the model's "chain" and "inpaint"
    if "chain" in caps:
        progress(2, "chains", f"{settings.num_chains} sampling chains of {steps} steps")
        _, chain = model.sample(settings.num_chains, steps, seed=settings.seed + 1, return_chain=True)
        wrote("chains", visualize.save_chain_grid(path["chains"], np.asarray(chain)))  # chain: [steps + 1, n, ...]
    else:
        progress(2, "chains", f"skipped: model {model.config.model!r} has no sampling chain")
    if getattr(model.config, "model", None) == "infusion":
        rows = min(settings.num_chains, len(test))
        progress(3, "infusion_chains", f"{rows} infusion chains of {model.config.num_steps} steps, infused by test digits")
        wrote("infusion_chains", visualize.save_chain_grid(path["infusion_chains"],
                                                           infusion_chain_figure(model, test[:rows], settings.seed),
                                                           max_columns=model.config.num_steps + 2))
    else:
        progress(3, "infusion_chains", f"skipped: model {model.config.model!r} has no infusion chain")
    if os.path.isfile(log):
        progress(4, "training_curve", f"lower bound per epoch from {log}")
        try:
            wrote("training_curve", visualize.plot_curves(
                log, path["training_curve"], title=f"{model.config.dataset}: lower bound during training",
                labels={"lower_bound": "train (running mean over the epoch)", "val_lower_bound": "validation"}))
        except ValueError as e:  # an empty or damaged log: the other figures are still worth having
            print(f"      skipped: {e}", flush=True)
    else:
        progress(4, "training_curve", f"skipped: {settings.checkpoint!r} has no log.csv")
    digits = min(settings.inpaint_digits, len(test))
    if "inpaint" not in caps:
        progress(5, "inpainting", f"skipped: model {model.config.model!r} does not inpaint")
        digits = 0
    if digits:
        progress(5, "inpainting", f"bottom half of {digits} test digits, {settings.completions} completions each, "
                                  f"{steps} steps")
        wrote("inpainting", _inpainting(model, test, settings, steps, path["inpainting"]))
    rows = min(10, len(samples))
    progress(6, "nearest_neighbours", f"{settings.neighbours} nearest of {len(train)} training images "
                                      f"for {rows} samples")
    wrote("nearest_neighbours", quality.save_nearest_neighbour_figure(
        path["nearest_neighbours"], samples[:rows], train, num=rows, neighbours=settings.neighbours))
    return written


def figures_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="eval/figures.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="run or pretrained folder (config.json + weights)")
    for field in dataclasses.fields(FigureSettings):
        if field.name == "checkpoint":
            continue
        kind = int if "int" in str(field.type) else str
        parser.add_argument("--" + field.name.replace("_", "-"), type=kind, default=field.default,
                            help=f"default: {field.default}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = figures_parser().parse_args(argv)
    quiet_tensorflow_logs()
    try:
        written = write_figures(FigureSettings(**vars(args)))
    except BAD_INPUT as e:  # settings, checkpoint, data (offline included), an output folder that cannot be written
        return print_error(e)
    print(f"{len(written)} figures in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
