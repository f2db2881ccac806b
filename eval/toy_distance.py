"""Energy distance of a toy model's samples to exact samples, beside the exact-vs-exact floor (Tao et al. App. F's
number; issue 17):

    python eval/toy_distance.py --checkpoint RUN [--model-setting NAME=VALUE ...] [--fit-residual-scale]
                                [--num-samples 2000] [--seed 0] [--k 1] [--output RUN/toy_distance.json]

Any registered model trained on the banana or the kidney (dae_langevin, paired_flow, annealed_gan). Its samples,
mapped to the density's own coordinates, are compared with as many exact samples by the squared energy distance
(`langevin_app_f.sample_summary`: also moments, and the banana's spread across its ridge or the kidney's share of
x1 > 0), beside 10 further independent exact sets (`langevin_app_f.exact_floor`). --model-setting sets the model's
evaluation-only fields as in eval/run.py (dae_langevin: estimator, step_size, sampling_steps, residual_scale;
paired_flow: sampler). --fit-residual-scale (dae_langevin) sets residual_scale to the least-squares match of the
DAE-residual to the DAE-score on 5000 training points (`score.residual_rescale`), as App. F's comparison does.
A model whose samples have a likelihood (paired_flow with `--model-setting sampler=flow`: its MAF nu) also gets the
reverse KL(r || p) of its samples with the density's exact normalizer and the effective sample size of the importance
weights u / r (`paired_flow.model_importance_diagnostics`; --k proposals per sample for log r, exact at k = 1 for nu).
Writes a JSON file with the command, the commit, the CPU, wall and CPU seconds; --figure PATH also a scatter plot.
"""

from __future__ import annotations

import os
import sys
import time

from infusion_tf.console import BAD_INPUT, OneLineErrorParser, print_error, quiet_tensorflow_logs


def _parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog="python eval/toy_distance.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="run folder of a model trained on banana or kidney")
    parser.add_argument("--weights", default=None, help="best | last | a path (default: best, else last)")
    parser.add_argument("--model-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an evaluation-only config field of the model (repeatable)")
    parser.add_argument("--fit-residual-scale", action="store_true",
                        help="dae_langevin: residual_scale = least-squares match of the residual to the DAE-score")
    parser.add_argument("--num-samples", type=int, default=2000, help="samples, and exact samples per set")
    parser.add_argument("--seed", type=int, default=0, help="model samples: seed; exact sets: seed + 1, seed + 10 ..")
    parser.add_argument("--k", type=int, default=1,
                        help="models with a likelihood: proposals per sample for log r(x) (default 1: exact for nu)")
    parser.add_argument("--output", default=None, help="JSON file (default: RUN/toy_distance.json)")
    parser.add_argument("--figure", default=None, help="also a PNG: the samples (blue) over the exact ones (gray)")
    return parser


def _short(setting: str) -> str:
    """NAME=VALUE with a float VALUE to 4 significant digits, for a figure's title."""
    name, _, value = setting.partition("=")
    try:
        return f"{name}={float(value):.4g}" if "." in value else setting
    except ValueError:
        return setting


def _figure(path: str, samples, exact, dataset: str, title: str) -> None:
    """One panel, raw coordinates: exact samples in gray, the model's in blue (banana: x2 across, x1 up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    across, up = (1, 0) if dataset == "banana" else (0, 1)
    low, high = np.quantile(exact, 0.002, axis=0), np.quantile(exact, 0.998, axis=0)
    pad = 0.15 * (high - low)
    fig, ax = plt.subplots(figsize=(3.2, 3.2), dpi=80)
    ax.scatter(exact[:, across], exact[:, up], s=1, c="tab:gray", alpha=0.3)
    ax.scatter(samples[:, across], samples[:, up], s=1, c="tab:blue", alpha=0.5)
    ax.set_xlim(low[across] - pad[across], high[across] + pad[across])
    ax.set_ylim(low[up] - pad[up], high[up] + pad[up])
    ax.set_xlabel(f"x{across + 1}")
    ax.set_ylabel(f"x{up + 1}")
    ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def toy_distance(args) -> dict:
    """The results (module docstring). Raises: ValueError for a model not of banana or kidney, or bad settings."""
    from infusion_tf import checkpoint, data, paired_flow, protocol, provenance, score, toy_densities
    from infusion_tf.langevin_app_f import exact_floor, sample_summary

    start, cpu_start = time.time(), time.process_time()
    if args.num_samples < 2:
        raise ValueError(f"--num-samples must be >= 2, got {args.num_samples}")
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    settings = list(args.model_setting)
    model = checkpoint.load_checkpoint(args.checkpoint, weights=args.weights, model_settings=settings)
    dataset = model.config.dataset
    if dataset not in toy_densities.TOY_DENSITIES:
        raise ValueError(f"exact samples exist for {list(toy_densities.TOY_DENSITIES)}; the model learned {dataset!r}")
    if args.fit_residual_scale:
        if not hasattr(model, "denoisers"):
            raise ValueError(f"--fit-residual-scale needs a dae_langevin model, got {model.config.model!r}")
        train = data.toy_to_raw(dataset, data.load_splits(dataset).train[:5000])
        scale = score.residual_rescale(model.denoisers[-1], train, model.config.sigma)
        settings.append(f"residual_scale={scale!r}")
        model = checkpoint.load_checkpoint(args.checkpoint, weights=args.weights, model_settings=settings)
    unit = model.sample(args.num_samples, seed=args.seed).numpy()  # [n, 2], the dataset's [0, 1]^2 coordinates
    samples = data.toy_to_raw(dataset, unit)  # [n, 2] raw
    importance = (paired_flow.model_importance_diagnostics(model, unit, args.k, args.seed)
                  if "likelihood" in protocol.capabilities(model) else None)  # None: the samples have no density
    exact = toy_densities.exact_samples(dataset, args.num_samples, args.seed + 1)
    summary = sample_summary(samples, exact, dataset)
    if args.figure:
        _figure(args.figure, samples, exact, dataset, f"{model.config.model} {' '.join(map(_short, settings))}\n"
                f"D^2 = {summary['energy_distance']:.4f}")
    return {"checkpoint": args.checkpoint, "model": model.config.model, "dataset": dataset,
            "model_settings": settings, "num_samples": args.num_samples, "seed": args.seed,
            "samples": summary, "importance": importance,
            "exact_vs_exact": exact_floor(dataset, exact, args.seed),
            "command": "python eval/toy_distance.py " + " ".join(sys.argv[1:]),
            "environment": provenance.environment(),
            "wall_s": time.time() - start, "cpu_s": time.process_time() - cpu_start}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_tensorflow_logs()
    try:
        results = toy_distance(args)
        from infusion_tf.files import write_json

        output = args.output or os.path.join(args.checkpoint, "toy_distance.json")
        write_json(output, results, indent=1)
    except BAD_INPUT as e:
        return print_error(e)
    floor = results["exact_vs_exact"]
    print(f"{results['model']} on {results['dataset']} {results['model_settings']}: D^2 to exact samples "
          f"{results['samples']['energy_distance']:.4f}; exact vs exact {floor['mean']:.4f} +- {floor['std']:.4f} (sd)")
    print({k: v for k, v in results["samples"].items() if k != "energy_distance"})
    if results["importance"] is not None:
        imp = results["importance"]
        print(f"reverse KL(r || p) {imp['reverse_kl']:.4f} +- {imp['reverse_kl_se']:.4f} nats (exact normalizer); "
              f"effective sample size {100 * imp['ess_fraction']:.1f}% of {imp['num_samples']} "
              f"({imp['non_finite']} non-finite weights dropped)")
    print(f"written to {output}; {results['wall_s']:.0f} s wall, {results['cpu_s']:.0f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
