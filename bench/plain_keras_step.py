"""The paper's MNIST training step written plainly, as a user would in an afternoon: the reference for train_step.py.

    python bench/plain_keras_step.py [--batch-sizes 100 512] [--steps 40] [--quick] [--results-dir DIR]

Nothing from `infusion_tf` is used for the step itself: Keras layers (Dense, one BatchNormalization per step
and layer, as footnote 5 of the paper asks), one `tf.function` holding a `GradientTape`, `tf.random` for the
infusion draws, the Gaussian log-density written out, and `keras.optimizers.Adam`. The model is the same as
`InfusionConfig()`'s: T = 15, alpha(t) = 0.01 t, 784 -> 1200 -> 1200 -> 2 x 784 with sigmoid mean and
variance 0.1 sigmoid + 1e-4, the denoising loss -sum_t (t / T) log p(t)(x | z~(t-1)), Adam(1e-3), float32.
Only the MNIST array and the benchmark plumbing (`bench/common.py`) come from the repository.

`train_step.py` imports `PlainStep` and times it in the same process as the project's step, so the ratio
between them is between two numbers taken under the same load. Run alone, this script times only the plain step.
"""

from __future__ import annotations

import math
import time

import common  # first: sets up sys.path and TensorFlow's logging

import keras
import numpy as np
import tensorflow as tf

SCRIPT = "plain_keras_step"


class PlainOperator(keras.Model):
    """Shared Dense layers, per-step BatchNormalization, sigmoid mean and variance heads."""

    def __init__(self, pixels=784, width=1200, num_steps=15):
        super().__init__()
        self.hidden = [keras.layers.Dense(width, use_bias=False) for _ in range(2)]
        self.norms = [[keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-4) for _ in range(num_steps)]
                      for _ in range(2)]
        self.mean_head = keras.layers.Dense(pixels)
        self.variance_head = keras.layers.Dense(pixels)

    def call(self, z, step, training=False):
        h = z
        for dense, norms in zip(self.hidden, self.norms):
            h = tf.nn.relu(norms[step](dense(h), training=training))
        return tf.sigmoid(self.mean_head(h)), 0.1 * tf.sigmoid(self.variance_head(h)) + 1e-4


def gaussian_log_density(x, mean, variance):
    return -0.5 * tf.reduce_sum(tf.math.log(2.0 * math.pi * variance) + tf.square(x - mean) / variance, axis=-1)


class PlainStep:
    """`step(x)` trains on one float32 [B, 784] batch of dequantized images in [0, 1]; returns the loss."""

    def __init__(self, train_images: np.ndarray, num_steps: int = 15, omega: float = 0.01, seed: int = 0):
        keras.utils.set_random_seed(seed)
        self.num_steps = num_steps
        self.alpha = [omega * t for t in range(num_steps)]
        flat = train_images.reshape(len(train_images), -1).astype(np.float32)
        self.prior_mean = tf.constant(flat.mean(axis=0))
        self.prior_std = tf.constant(np.sqrt(np.maximum(flat.var(axis=0), 1e-4)))
        self.operator = PlainOperator(flat.shape[1], 1200, num_steps)
        for norms in self.operator.norms:  # build every step's batch norm before the model is built
            for norm in norms:
                norm.build((None, 1200))
        self.operator(tf.zeros([2, flat.shape[1]]), step=0)
        self.optimizer = keras.optimizers.Adam(1e-3)
        self.optimizer.build(self.operator.trainable_variables)
        self.traces = 0
        self.step = tf.function(self._step)

    def _infuse(self, x, mean, std, alpha):
        """Per pixel: from N(x, 1e-4) with probability alpha, else from N(mean, std^2)."""
        from_x = tf.random.uniform(tf.shape(x)) < alpha
        noise = tf.random.normal(tf.shape(x))
        return tf.where(from_x, x + 0.01 * noise, mean + std * noise)

    def _step(self, x):
        self.traces += 1
        with tf.GradientTape() as tape:
            z = self._infuse(x, self.prior_mean, self.prior_std, self.alpha[0])
            loss = 0.0
            for t in range(self.num_steps):
                if t > 0:
                    z = tf.stop_gradient(self._infuse(x, mean, tf.sqrt(variance), self.alpha[t]))
                mean, variance = self.operator(z, step=t, training=True)
                loss -= (t + 1) / self.num_steps * gaussian_log_density(x, mean, variance)
            loss = tf.reduce_mean(loss)
        gradients = tape.gradient(loss, self.operator.trainable_variables)
        self.optimizer.apply(gradients, self.operator.trainable_variables)
        return loss


class PlainImportanceSampler:
    """Importance sampling (Eq. 2) of the same model written plainly: `log_likelihood(x, k)` runs k infusion
    chains per example with the operator in inference mode (moving batch-norm statistics) and returns
    log (1/k) sum_j p(x, z~_j) / q(z~_j | x) per example, float32 [B], from one `tf.function`."""

    def __init__(self, plain_step: PlainStep):
        self.plain = plain_step
        self.traces = 0
        self.log_likelihood = tf.function(self._log_likelihood)

    def _log_likelihood(self, x, k):
        self.traces += 1
        plain = self.plain
        xk = tf.repeat(x, k, axis=0)  # [B * k, 784]
        mean, std = plain.prior_mean + tf.zeros_like(xk), plain.prior_std + tf.zeros_like(xk)
        log_w = tf.zeros(tf.shape(xk)[:1])
        for t in range(plain.num_steps):
            alpha = plain.alpha[t]
            z = plain._infuse(xk, mean, std, alpha)
            log_p = -0.5 * tf.math.log(2.0 * math.pi * tf.square(std)) - 0.5 * tf.square((z - mean) / std)
            log_delta = -0.5 * math.log(2.0 * math.pi * 1e-4) - 0.5 * tf.square((z - xk) / 0.01)
            log_q = tf.reduce_logsumexp(tf.stack([math.log1p(-alpha) + log_p,
                                                  (math.log(alpha) if alpha > 0 else -math.inf) + log_delta]),
                                        axis=0)
            log_w += tf.reduce_sum(log_p - log_q, axis=-1)
            mean, variance = plain.operator(z, step=t, training=False)
            std = tf.sqrt(variance)
        log_w += gaussian_log_density(xk, mean, tf.square(std))
        return tf.reduce_logsumexp(tf.reshape(log_w, [-1, k]), axis=1) - math.log(k)


def time_plain_importance_sampling(train_array, x: np.ndarray, chains: int, rows_per_call: int) -> dict:
    """Chains per second of PlainImportanceSampler on x (float32 [n, 784]) in calls of rows_per_call rows."""
    sampler = PlainImportanceSampler(PlainStep(train_array.astype(np.float32) / 255.0))
    per_call = max(1, rows_per_call // chains)
    calls = [tf.constant(x[i:i + per_call]) for i in range(0, len(x), per_call)]
    sampler.log_likelihood(calls[0], chains).numpy()  # trace, warm up
    traces = sampler.traces
    start = time.perf_counter()
    values = np.concatenate([sampler.log_likelihood(c, chains).numpy() for c in calls])
    seconds = time.perf_counter() - start
    return {"chains_per_second": len(x) * chains / seconds, "seconds": seconds, "examples": len(x),
            "chains": chains, "rows_per_call_used": per_call * chains, "finite": bool(np.all(np.isfinite(values))),
            "traces_during_timing": sampler.traces - traces}


def batches(train_array: np.ndarray, batch_size: int, seed: int = 0):
    """Endless shuffled, dequantized float32 [B, 784] batches in [0, 1] (uniform noise on the 8-bit values)."""
    images = train_array.reshape(len(train_array), -1)
    dataset = (tf.data.Dataset.from_tensor_slices(images).repeat().shuffle(10_000, seed=seed)
               .batch(batch_size, drop_remainder=True)
               .map(lambda u: (tf.cast(u, tf.float32) + tf.random.uniform(tf.shape(u))) / 256.0)
               .prefetch(2))
    return iter(dataset)


def time_plain_step(train_array: np.ndarray, batch_size: int, warmup: int, steps: int) -> dict:
    """Median seconds per step of PlainStep on real MNIST batches, after `warmup` steps."""
    started = time.time()
    plain = PlainStep(train_array.astype(np.float32) / 255.0)
    stream = batches(train_array, batch_size)
    for _ in range(warmup):
        loss = plain.step(next(stream))
    float(loss)
    traces_before = plain.traces
    times = [time.perf_counter()]
    for _ in range(steps):
        loss = float(plain.step(next(stream)))  # a host value: the step has finished
        times.append(time.perf_counter())
    intervals = [b - a for a, b in zip(times, times[1:])]
    timing = common.percentile_summary(intervals)
    return {"name": f"plain keras b{batch_size} float32", "batch_size": batch_size, "precision": "float32",
            "examples_per_second": batch_size / timing["median"],
            "examples_per_second_mean": batch_size / timing["mean"], "step_seconds": timing,
            "traces_during_timing": plain.traces - traces_before, "final_loss": loss,
            "duration_seconds": time.time() - started}


def main(argv=None) -> list[dict]:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 512])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.steps = 3, 6
    from infusion_tf import data

    started = time.time()
    train_array = data.load_splits("mnist").train
    rows = [time_plain_step(train_array, b, args.warmup, args.steps) for b in args.batch_sizes]
    path = common.write_results(SCRIPT, rows, results_dir=args.results_dir, settings=vars(args), started=started)
    common.print_table(rows, ["name", "examples_per_second", "examples_per_second_mean", "traces_during_timing"],
                       title="plain Keras training step (median step)")
    print(f"\nwritten to {path}")
    return rows


if __name__ == "__main__":
    main()
