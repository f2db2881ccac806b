"""A denoising autoencoder sampled by Langevin dynamics as a model of the toolkit: `train/run.py --model dae_langevin
--dataset banana|kidney|mixture_of_gaussians` (Tao et al. 2019, App. F; issue 17, items 1 and 6).

Training fits phi_sigma, a DAE trained on x + sigma eps to predict x (`score.DenoisingAutoencoder`), on the dataset's
examples; with `annealed_sigmas` one DAE per noise level sigma_1 > ... > sigma_L = sigma, all in one step. Sampling
starts from a Gaussian fitted to the training set (mean and covariance, App. F's start) and runs unadjusted Langevin
(`score.langevin_sample`, or `score.annealed_langevin_sample` over the levels) with one of App. F's estimators:

    score     s_sigma(x)   = (phi_sigma(x) - x) / sigma^2       (`score.dae_score`)
    residual  s^r_sigma(x) = -c grad_x ||phi_sigma(x) - x||^2     (`score.dae_residual_score`; c = residual_scale,
                                                                   1 as App. F writes it)

The estimator, the step size, the number of Langevin steps (`sampling_steps`, per level) and c change only how the
model samples, never its weights: they are evaluation settings (`eval/run.py --model-setting estimator=residual`),
so one trained DAE serves App. F's comparison.

Coordinates: the DAEs and the chains live in the density's own (raw) coordinates, where App. F sets sigma = 0.2 on
the banana; the toolkit's toy data are those points mapped affinely into [0.05, 0.95]^2 (`toy_densities.toy_affine`),
so `train_step` maps its batch to raw coordinates and `sample` maps the chains' end points back.

A sample-only model: the Langevin chain's law has no density we can evaluate, so there is no `log_weights` (no
"likelihood" capability) and eval/run.py refuses the lower bound and importance sampling; Parzen, figures and the
SavedModel's `sample` read its samples. Its validation metric, the denoising loss on the validation set with fixed
noise, is logged but does not rank the epochs (`monitor = None`: training keeps the last epoch, writes no
best.weights.h5, and evaluation and export read last.weights.h5). That loss hardly weighs the score's errors where
the data are thin and the chains still go (a banana's arms), so its smallest epoch need not be the DAE that samples
best (docs/langevin.md: on the banana the chains of the smallest-loss epoch were 19 times farther from the data);
the learning rate decays to 0 at the last epoch, whose weights are the ones App. F samples with.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from infusion_tf import score
from infusion_tf.config import ModelConfig, check_seed
from infusion_tf.registry import register_model, register_model_config
from infusion_tf.toy_densities import toy_affine

__all__ = ["NAME", "ESTIMATORS", "DAELangevinConfig", "DAELangevinModel", "estimator_score_fn"]

NAME = "dae_langevin"
ESTIMATORS = ("score", "residual")
_TRAIN_EXAMPLES = 50_000  # a toy training split (data.py): the learning-rate decay's length when fit_prior did not run


@register_model_config(NAME)
@dataclasses.dataclass(frozen=True)
class DAELangevinConfig(ModelConfig):
    """Settings of the DAE + Langevin sampler and its training. Defaults: App. F's banana experiment."""

    model: str = NAME  # the registered model these settings build (registry.MODELS)
    dataset: str = "banana"  # a 2-D toy of data.TOY_DATASETS: banana | kidney | mixture_of_gaussians
    example_shape: tuple[int, ...] = (2,)  # a 2-D point
    dequantize: bool = False  # toy points are floats
    train_examples: int | None = None  # train on the first N training examples
    validation_examples: int | None = None  # validate on the first N validation examples
    seed: int = 0
    sampling_steps: int = 5000  # Langevin steps (per noise level); evaluation setting
    sigma: float = 0.2  # DAE noise in the density's own coordinates (App. F: 0.2 on the banana); the last level
    annealed_sigmas: str = ""  # comma-separated larger levels sampled first, decreasing, > sigma ("1,0.5"); "": none
    width: int = 128  # units of each hidden layer of a DAE
    depth: int = 3  # hidden layers of a DAE
    activation: str = "swish"  # of the DAEs' hidden layers
    estimator: str = "score"  # score: (phi(x) - x) / sigma^2 | residual: -c grad ||phi(x) - x||^2 (App. F); evaluation
    residual_scale: float = 1.0  # c of the residual estimator (1: as App. F writes it); evaluation setting
    step_size: float = 0.01  # Langevin eps at the last level; level i uses eps (sigma_i / sigma)^2; evaluation setting
    batch_size: int = 512
    learning_rate: float = 2e-3  # Adam, cosine-decayed to 0 over the run's first start (epochs x steps per epoch)
    epochs: int = 40
    patience: int | None = None  # must stay None: this model keeps its last epoch (no monitor, no early stopping)
    sample_every: int = 10  # epochs between sample figures (each a Langevin run of 100 chains)

    def __post_init__(self) -> None:
        from infusion_tf.data import TOY_DATASETS

        if self.model != NAME:
            raise ValueError(f"DAELangevinConfig builds the {NAME} model, got model={self.model!r}")
        object.__setattr__(self, "example_shape", tuple(int(s) for s in self.example_shape))
        if self.dataset not in TOY_DATASETS:
            raise ValueError(f"the {NAME} model samples 2-D toy points; dataset must be one of {list(TOY_DATASETS)}, "
                             f"got {self.dataset!r}")
        if self.example_shape != (2,) or self.dequantize:
            raise ValueError(f"{NAME} samples 2-D points: example_shape (2,) and no dequantization, got "
                             f"{self.example_shape} and dequantize={self.dequantize}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {self.estimator!r}")
        for name in ("sampling_steps", "width", "depth", "batch_size", "epochs", "sample_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("train_examples", "validation_examples", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        for name in ("sigma", "residual_scale", "step_size", "learning_rate"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        try:
            levels = self.sigmas
        except ValueError:
            levels = None
        if levels is None or not all(math.isfinite(s) for s in levels) or any(not b < a for a, b in
                                                                               zip(levels, levels[1:])):
            raise ValueError(f"annealed_sigmas must be comma-separated finite numbers that decrease, each above sigma "
                             f"= {self.sigma}; got {self.annealed_sigmas!r}")
        check_seed(self.seed)

    @property
    def sigmas(self) -> tuple[float, ...]:
        """The noise levels (annealed_sigmas..., sigma), one DAE each; checked to decrease at construction."""
        extra = [part.strip() for part in self.annealed_sigmas.split(",")] if self.annealed_sigmas.strip() else []
        return tuple(float(part) for part in extra) + (float(self.sigma),)


def estimator_score_fn(estimator: str, phi, sigma: float, residual_scale: float = 1.0):
    """The score function x [n, d] -> [n, d] of App. F's `estimator` for the denoiser phi of noise sigma: "score",
    score.dae_score; "residual", residual_scale times score.dae_residual_score. Raises: ValueError for another name."""
    if estimator == "score":
        return lambda x: score.dae_score(phi, x, sigma)
    if estimator == "residual":
        return lambda x: residual_scale * score.dae_residual_score(phi, x)
    raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")


def _key(seed) -> tf.Tensor:
    """int32 [2] stateless seed: [seed, 0] for an int (None: 0), else the given [2] tensor."""
    if seed is None or (not tf.is_tensor(seed) and np.ndim(seed) == 0):
        return tf.constant([int(seed or 0), 0], tf.int32)
    return tf.cast(seed, tf.int32)


@register_model(NAME)
@keras.saving.register_keras_serializable(package="infusion_tf")
class DAELangevinModel(keras.Model):
    """DAEs phi_sigma_i trained on the data, sampled by Langevin with a DAE score estimator (module docstring);
    implements protocol.GenerativeModel without log_weights."""

    capabilities = ()  # sample-only: no likelihood, inpainting, chain, batch norm or isotropic rescoring
    monitor = None  # no best epoch: the denoising loss does not rank the DAEs by their samples; keep the last
    evaluation_settings = ("sampling_steps", "estimator", "residual_scale", "step_size")  # how it samples only

    def __init__(self, config: DAELangevinConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = c = DAELangevinConfig.from_dict(config) if isinstance(config, dict) else config
        self.denoisers = [score.DenoisingAutoencoder(2, s, width=c.width, depth=c.depth, activation=c.activation,
                                                     seed=c.seed + i, name=f"dae{i}") for i, s in enumerate(c.sigmas)]
        offset, scale = toy_affine(c.dataset)
        self.offset, self.scale = tf.constant(offset, tf.float32), tf.constant(scale, tf.float32)
        # Langevin's start, N(start_mean, L L^T) fitted to the training set (raw coordinates) by fit_prior.
        self.start_mean = self.add_weight(name="start_mean", shape=(2,), initializer="zeros", trainable=False)
        self.start_chol = self.add_weight(name="start_chol", shape=(2, 2), initializer="identity", trainable=False)
        self.seed_generator = keras.random.SeedGenerator(c.seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.denoising_tracker = keras.metrics.Mean(name="denoising_loss")
        self.train_size = _TRAIN_EXAMPLES if c.train_examples is None else c.train_examples
        self.built = True

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    def describe(self) -> str:
        c = self.config
        levels = ", ".join(f"{s:g}" for s in c.sigmas)
        return (f"{NAME}: {len(c.sigmas)} DAE(s) {c.depth} x {c.width} {c.activation}, sigma = {levels} (raw "
                f"coordinates of {c.dataset}); samples: unadjusted Langevin, DAE-{c.estimator}, eps = {c.step_size:g}, "
                f"{c.sampling_steps} steps per level")

    @property
    def metrics(self):
        return [self.loss_tracker, self.denoising_tracker]

    def make_optimizer(self):
        """Adam at config.learning_rate, cosine-decayed to 0 over epochs x steps per epoch (App. F's DAE training);
        the steps per epoch come from the training set fit_prior saw."""
        c = self.config
        steps = c.epochs * max(1, self.train_size // c.batch_size)
        return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(c.learning_rate, steps))

    def fit_prior(self, train_array) -> None:
        """Fits Langevin's Gaussian start to the training set, and each DAE's input standardization (adapt)."""
        raw = self._to_raw(np.asarray(train_array, np.float32).reshape(-1, 2))  # [N, 2]
        mean, cov = tf.reduce_mean(raw, 0), tf.constant(np.cov(raw.numpy().T), tf.float32)
        self.start_mean.assign(mean)
        self.start_chol.assign(tf.linalg.cholesky(cov + 1e-6 * tf.eye(2)))
        for dae in self.denoisers:
            dae.adapt(raw)
        self.train_size = len(raw)

    def _to_raw(self, x):
        return self.offset + self.scale * tf.cast(x, tf.float32)

    def _denoising_loss(self, raw, noises):
        """sum over levels of E ||phi_sigma_i(x + sigma_i eps_i) - x||^2 (App. F's DAE objective). raw: [B, 2]."""
        return tf.add_n([tf.reduce_mean(tf.reduce_sum(tf.square(dae(raw + s * e) - raw), -1))
                         for dae, s, e in zip(self.denoisers, self.config.sigmas, noises)])

    def train_step(self, x):
        """One Adam step on the DAEs' denoising loss, fresh noise for every level. x: float32 [B, 2] in [0, 1]^2."""
        raw = self._to_raw(x)
        noises = [keras.random.normal(tf.shape(raw), seed=self.seed_generator) for _ in self.denoisers]
        with tf.GradientTape() as tape:
            loss = self._denoising_loss(raw, noises)
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, x):
        """The denoising loss on the validation batch with fixed noise (seeds [seed, 100 + level])."""
        raw = self._to_raw(x)
        noises = [tf.random.stateless_normal(tf.shape(raw), tf.constant([self.config.seed, 100 + i], tf.int32))
                  for i in range(len(self.denoisers))]
        self.denoising_tracker.update_state(self._denoising_loss(raw, noises))
        return {"denoising_loss": self.denoising_tracker.result()}

    def sample(self, num_samples, num_steps=None, seed=None, **kwargs):
        """Langevin samples, float32 [n, 2] in the dataset's [0, 1]^2 coordinates: chains started at the fitted
        Gaussian, num_steps (default config.sampling_steps; an int or an int32 scalar tensor) steps per level of
        config.estimator's score. seed: an int, an int32 [2] tensor or None (0); a fixed seed gives the same samples.
        Raises: ValueError for a Python num_steps below 0."""
        steps = self.config.sampling_steps if num_steps is None else num_steps
        if not tf.is_tensor(steps) and (int(steps) != steps or steps < 0):
            raise ValueError(f"num_steps must be an integer >= 0, got {steps!r}")
        return self._sampler()(tf.cast(num_samples, tf.int32), tf.cast(steps, tf.int32), _key(seed))

    def _sampler(self):
        """The Langevin run as one tf.function per sampling setting (estimator, residual_scale, step_size), traced once
        rather than at every call. Kept out of Keras' tracking (object.__setattr__): it is not part of the model."""
        c = self.config
        cache = self.__dict__.get("_langevin_runs")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_langevin_runs", cache)
        settings = (c.estimator, c.residual_scale, c.step_size)
        if settings not in cache:
            spec = [tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int32)]
            cache[settings] = tf.function(self._langevin, input_signature=spec)
        return cache[settings]

    def _langevin(self, num_samples, steps, key):
        """num_samples, steps: int32 scalars; key: int32 [2] -> float32 [num_samples, 2] in [0, 1]^2 coordinates."""
        c = self.config
        x0 = self.start_mean + tf.random.stateless_normal(tf.stack([num_samples, 2]), key) @ tf.transpose(
            self.start_chol)  # [n, 2]
        noise_seed = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(key, 1), 0, 2**20,
                                                 dtype=tf.int32)  # below 2^31 / 1000: the levels' seeds do not wrap
        fns = [estimator_score_fn(c.estimator, dae, s, c.residual_scale) for dae, s in zip(self.denoisers, c.sigmas)]
        if len(fns) == 1:
            raw = score.langevin_sample(fns[0], x0, c.step_size, steps, seed=noise_seed)
        else:
            raw = score.annealed_langevin_sample(fns, c.sigmas, x0, c.step_size, steps, seed=noise_seed)
        return (raw - self.offset) / self.scale
