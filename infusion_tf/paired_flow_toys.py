"""The paired-flow sampler on the banana and the kidney, given only log u (Tao et al. 2019, App. I.2; issue 17, item 5).

    python -m infusion_tf.paired_flow_toys --output-dir runs/langevin/paired_flow --density kidney

trains one `paired_flow.PairedFlowSampler` per lambda0 in {0, --lambda0} (no annealing, and linear annealing of
lambda to 0 at 0.9 of the steps; --anneal entropy: beta_ent = 1 / (1 + lambda), likelihood: beta_lik = 1 + lambda,
App. B; --plain 0 trains the annealed sampler only), then scores n samples of the flow nu (exact density) and
of the generator G (nu standing in for its density): reverse KL with the exact normalizer, the importance-sampling
estimate of log Z, the effective sample size, and the energy distance to exact samples beside that of a second exact
set. Writes results.json (with command, commit, CPU and wall/CPU time), samples.npz and paired_flow_<density>.png.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np

from infusion_tf import annealing
from infusion_tf.console import parse_settings, print_error
from infusion_tf.files import write_json

__all__ = ["PairedFlowSettings", "annealed_betas", "run", "main"]


@dataclasses.dataclass(frozen=True)
class PairedFlowSettings:
    density: str = "banana"  # banana | kidney (toy_densities)
    steps: int = 5000  # training steps (one flow and one generator update each)
    lambda0: float = 1.0  # lambda at step 0 of the annealed run (linear schedule, T_max = 0.9 steps), > -1; 0: none
    anneal: str = "entropy"  # entropy: beta = 1 / (1 + lambda) | likelihood: beta = 1 + lambda (App. B, Corollary 2.2)
    plain: int = 1  # 1: also train a sampler with lambda0 = 0 (no annealing) for comparison; 0: the annealed one only
    batch_size: int = 256
    blocks: int = 8  # MAF blocks (App. I.2.2: 8)
    hidden: int = 512  # units of each of the MADE's two hidden layers (App. I.2.2: [512, 512])
    learning_rate: float = 1e-3  # Adam, generator
    flow_learning_rate: float = 1e-3  # Adam, flow
    flow_steps: int = 1  # flow updates per generator update
    num_samples: int = 4000  # samples scored per sampler
    seed: int = 0

    def __post_init__(self):
        if self.density not in ("banana", "kidney"):
            raise ValueError(f"density must be banana or kidney, got {self.density!r}")
        annealing.annealed_beta(self.anneal, self.lambda0)  # names an unknown form, or lambda0 <= -1
        if self.plain not in (0, 1):
            raise ValueError(f"plain must be 0 or 1, got {self.plain!r}")
        for name in ("steps", "batch_size", "blocks", "hidden", "flow_steps", "num_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")


def _score(name: str, x: np.ndarray, log_r: np.ndarray, exact: np.ndarray) -> dict:
    from infusion_tf import paired_flow, toy_densities
    from infusion_tf.energy_distance import energy_distance

    finite = np.all(np.isfinite(x), axis=1)
    log_u = toy_densities.log_unnormalized(name, x[finite])
    out = paired_flow.importance_diagnostics(log_u, log_r[finite], toy_densities.log_normalizer(name))
    out["energy_distance"] = energy_distance(x[finite][:2000], exact[:2000])
    out["mean"], out["std"] = x[finite].mean(0).round(4).tolist(), x[finite].std(0).round(4).tolist()
    return out


def annealed_betas(s: PairedFlowSettings, lambda0: float) -> np.ndarray:
    """float64 [steps] beta_t of a run: lambda_t linear from lambda0 to 0 at 0.9 of the steps (App. I.1), beta_t =
    1 / (1 + lambda_t) (s.anneal "entropy") or 1 + lambda_t ("likelihood") (App. B); [1.0] for lambda0 = 0."""
    lambdas = annealing.linear_lambda(s.steps, lambda0, 0.9 * s.steps) if lambda0 else np.zeros(1)
    return annealing.annealed_beta(s.anneal, lambdas)


def _train_one(s: PairedFlowSettings, lambda0: float) -> tuple[dict, dict]:
    from infusion_tf import paired_flow

    sampler = paired_flow.PairedFlowSampler(2, paired_flow.TOY_LOG_U[s.density], annealed_betas(s, lambda0),
                                            blocks=s.blocks, hidden=(s.hidden, s.hidden), batch_size=s.batch_size,
                                            learning_rate=s.learning_rate, flow_learning_rate=s.flow_learning_rate,
                                            flow_steps=s.flow_steps, seed=s.seed)
    wall, cpu = time.time(), time.process_time()
    history = sampler.train(s.steps, log_every=max(1, s.steps // 10), printer=lambda line: print(line, flush=True))
    timing = {"train_wall_s": time.time() - wall, "train_cpu_s": time.process_time() - cpu}
    x_flow, log_nu_flow = sampler.flow_samples(s.num_samples, seed=s.seed + 100)
    x_gen = sampler.generate(s.num_samples, seed=s.seed + 200).numpy()
    samples = {"flow": x_flow, "generator": x_gen, "log_nu_flow": log_nu_flow, "log_nu_generator": sampler.log_nu(x_gen)}
    return samples, {"history": history, **timing}


def run(s: PairedFlowSettings, output_dir: str) -> dict:
    from infusion_tf import provenance, toy_densities
    from infusion_tf.energy_distance import energy_distance

    start, cpu = time.time(), time.process_time()
    os.makedirs(output_dir, exist_ok=True)
    exact = toy_densities.exact_samples(s.density, s.num_samples, s.seed + 1)
    other = toy_densities.exact_samples(s.density, 2000, s.seed + 2)
    runs, figure = [], {}
    for lambda0 in ((0.0,) if s.plain else ()) + (s.lambda0,):
        samples, info = _train_one(s, lambda0)
        runs.append({"lambda0": lambda0, "anneal": s.anneal if lambda0 else "none", **info,
                     "flow": _score(s.density, samples["flow"], samples["log_nu_flow"], exact),
                     "generator_nu_as_density": _score(s.density, samples["generator"], samples["log_nu_generator"],
                                                       exact)})
        label = f"lambda0 {lambda0:g}" + (f" ({s.anneal})" if lambda0 else "")
        figure[f"{label}: flow"] = samples["flow"]
        figure[f"{label}: generator"] = samples["generator"]
        np.savez(os.path.join(output_dir, f"samples_lambda{lambda0:g}.npz"), **samples)
    results = {"settings": dataclasses.asdict(s), "runs": runs, "log_z": toy_densities.log_normalizer(s.density),
               "exact_vs_exact": {"energy_distance": energy_distance(other, exact[:2000])},
               "command": "python -m infusion_tf.paired_flow_toys " + " ".join(sys.argv[1:]),
               "environment": provenance.environment(),
               "wall_s": time.time() - start, "cpu_s": time.process_time() - cpu}
    _figure(os.path.join(output_dir, f"paired_flow_{s.density}.png"), figure, exact)
    write_json(os.path.join(output_dir, "results.json"), results, indent=1)
    return results


def _figure(path: str, samples: dict, exact: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples) + 1, figsize=(2.4 * (len(samples) + 1), 2.5), dpi=70)
    lo, hi = np.percentile(exact, 0.5, axis=0) - 1, np.percentile(exact, 99.5, axis=0) + 1
    for ax, (title, x) in zip(axes, [("exact", exact), *samples.items()]):
        ax.scatter(x[:2000, 0], x[:2000, 1], s=1, c="tab:gray" if title == "exact" else "tab:blue", alpha=0.4)
        ax.set_title(title, fontsize=7)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    try:  # a bad setting: one error line, exit 2
        settings, output_dir = parse_settings(PairedFlowSettings, argv, __doc__.split("\n\n")[0],
                                              prog="python -m infusion_tf.paired_flow_toys")
    except ValueError as e:
        return print_error(e)
    results = run(settings, output_dir)
    print(json.dumps([{k: r[k] for k in ("lambda0", "flow", "generator_nu_as_density")} for r in results["runs"]],
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
