"""How far AIS's log Z lies from the exact one of a 12 + 12 RBM, how much it varies and which way it is biased.

    python bench/ais_known_answer.py [--runs 10]

The RBM is tests/test_rbm.py's (a1, a2 ~ N(0, 0.5^2), W ~ N(0, 1.5^2), seed 1); its log Z is enumerated over the
4096 states of z1 (rbm.exact_log_partition). For each setting (temperatures x chains) AIS runs with `--runs` seeds
and the table gives the mean error of log Z_hat, its spread over seeds, the mean reported standard error, and the
mean of Z_hat / Z (1 for an unbiased estimate of Z) with its standard error.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from infusion_tf import ais, rbm


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="AIS runs (seeds) per setting")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(1)
    a1, a2, w = rng.normal(0, 0.5, 12), rng.normal(0, 0.5, 12), rng.normal(0, 1.5, (12, 12))
    exact = rbm.exact_log_partition(a1, a2, w)
    print(f"exact log Z = {exact:.4f}")
    print("| temperatures | chains | mean(log Z_hat) - log Z | sd over runs | mean reported stderr | "
          "mean Z_hat / Z | CPU s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for temperatures, chains in ((3, 10), (10, 10), (100, 100), (1000, 100), (10000, 1000)):
        started = time.process_time()
        results = [ais.annealed_log_partition(a1, a2, w, num_chains=chains, num_temperatures=temperatures,
                                              seed=(s, 1)) for s in range(args.runs)]
        log_z = np.array([r.log_z for r in results])
        ratio = np.exp(log_z - exact)
        error = log_z.mean() - exact
        print(f"| {temperatures} | {chains} | {error:+.4f} +- {log_z.std(ddof=1) / np.sqrt(args.runs):.4f} | "
              f"{log_z.std(ddof=1):.4f} | {np.mean([r.stderr for r in results]):.4f} | "
              f"{ratio.mean():.3f} +- {ratio.std(ddof=1) / np.sqrt(args.runs):.3f} | "
              f"{time.process_time() - started:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
