"""The paired-flow sampler as a model of the toolkit: `train/run.py --model paired_flow --dataset banana|kidney`
(Tao et al. 2019, App. G-H, I.2; issue 17, items 5 and 6).

The same updates as `paired_flow.PairedFlowSampler` (`paired_flow.paired_updates`: the MAF nu fitted by maximum
likelihood to the generator's samples, the generator G descending the tempered reverse KL E[log nu(G(z)) - beta_t
log u(G(z))]), with beta_t from an `annealing` schedule over the whole run in either form of App. B (`anneal`:
entropy, beta = 1 / (1 + lambda_t); likelihood, beta = 1 + lambda_t). The model learns from the dataset's
unnormalized log density log u (`paired_flow.TOY_LOG_U`), never from its examples: a training batch gives only its
size; the dataset's exact samples serve validation (the energy distance to as many generator samples, the
monitored metric) and evaluation (Parzen, figures).

Coordinates: G and nu live in the density's own (raw) space, where log u is written; the toolkit's toy data are
those points mapped affinely into [0.05, 0.95]^2 (`data.toy_to_raw`), so `sample` maps G's (or nu's) samples the
same way, and `log_weights` adds the map's log-Jacobian to log nu.

Two samplers, one evaluation setting (`sampler`, `eval/run.py --model-setting sampler=flow`): the generator G (the
default; free-form, no density), or the flow nu (MAF sampling, D passes per block; exact density). The likelihood
estimators need the density of the law that `sample` draws from, so the model has `log_weights` (the protocol's
"likelihood" capability) only with sampler=flow: one step, k identical proposals, log nu(x) (the lower bound and
importance sampling then both equal log nu(x) exactly). With the generator, eval/run.py refuses them, as for a GAN.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from infusion_tf import annealing, maf, paired_flow
from infusion_tf.config import ModelConfig, check_seed
from infusion_tf.protocol import LogWeights
from infusion_tf.registry import register_model, register_model_config
from infusion_tf.toy_densities import toy_affine  # re-exported: the affine map of the toy data, shared with dae_langevin

__all__ = ["NAME", "TARGETS", "SAMPLERS", "PairedFlowConfig", "PairedFlowModel", "beta_values", "toy_affine"]

NAME = "paired_flow"
TARGETS = tuple(paired_flow.TOY_LOG_U)  # the datasets whose log u the model learns from: banana, kidney
SAMPLERS = ("generator", "flow")


@register_model_config(NAME)
@dataclasses.dataclass(frozen=True)
class PairedFlowConfig(ModelConfig):
    """Settings of the paired-flow sampler and its training. Defaults: App. I.2.2's MAF on the kidney."""

    model: str = NAME  # the registered model these settings build (registry.MODELS)
    dataset: str = "kidney"  # banana | kidney: the unnormalized density log u learned from (its samples validate)
    example_shape: tuple[int, ...] = (2,)  # a 2-D point
    dequantize: bool = False  # toy points are floats
    train_examples: int | None = None  # training batches per epoch = this // batch_size (their values are not read)
    validation_examples: int | None = None  # validate on the first N exact samples of the validation split
    seed: int = 0
    sampling_steps: int = 1  # a sample is one pass of G (or one MAF sampling pass); the step count is ignored
    blocks: int = 8  # MAF blocks, each followed by an order flip (App. I.2.2: 8)
    hidden: int = 512  # units of each of the MADE's two hidden layers (App. I.2.2: [512, 512])
    generator_width: int = 256  # units of each hidden ReLU layer of the generator G
    generator_depth: int = 3  # hidden layers of G; z ~ N(0, I_2)
    flow_steps: int = 3  # flow updates per generator update (1 lets nu lag behind G: docs/langevin.md)
    anneal: str = "entropy"  # entropy: beta = 1 / (1 + lambda) | likelihood: beta = 1 + lambda (App. B)
    lambda0: float = 1.0  # lambda at step 0, > -1; 0: no annealing (the plain reverse KL throughout)
    schedule: str = "linear"  # linear (T_max = 0.9 of the run) | exponential (tau = 5 / steps) | sinusoidal (5 cycles)
    sampler: str = "generator"  # what sample() draws from: generator (G) | flow (nu, exact density: likelihood)
    batch_size: int = 256
    learning_rate: float = 1e-3  # Adam for the generator
    flow_learning_rate: float = 1e-3  # Adam for the flow
    epochs: int = 10
    patience: int | None = None  # stop after N epochs without a smaller validation energy distance
    sample_every: int = 1  # epochs between sample figures

    def __post_init__(self) -> None:
        if self.model != NAME:
            raise ValueError(f"PairedFlowConfig builds the {NAME} model, got model={self.model!r}")
        object.__setattr__(self, "example_shape", tuple(int(s) for s in self.example_shape))
        if self.dataset not in TARGETS:
            raise ValueError(f"the {NAME} model learns from an unnormalized density log u, which the toolkit has for "
                             f"{list(TARGETS)}; got dataset {self.dataset!r}")
        if self.example_shape != (2,) or self.dequantize:
            raise ValueError(f"{NAME} samples 2-D points: example_shape (2,) and no dequantization, got "
                             f"{self.example_shape} and dequantize={self.dequantize}")
        for name, allowed in (("anneal", tuple(annealing.FORMS)), ("schedule", tuple(annealing.SCHEDULES)),
                              ("sampler", SAMPLERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("blocks", "hidden", "generator_width", "generator_depth", "flow_steps", "epochs",
                     "sample_every", "sampling_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ValueError(f"batch_size must be an integer >= 2, got {self.batch_size!r}")
        for name in ("train_examples", "validation_examples", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        for name in ("learning_rate", "flow_learning_rate"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        annealing.annealed_beta(self.anneal, self.lambda0)  # lambda0 <= -1: a non-positive temperature
        if not math.isfinite(self.lambda0):
            raise ValueError(f"lambda0 must be finite, got {self.lambda0}")
        check_seed(self.seed)

    @property
    def total_steps(self) -> int:
        """Generator steps of the whole run: epochs x (training examples // batch size), 50 000 examples by default."""
        return self.epochs * max(1, (self.train_examples or 50_000) // self.batch_size)


def beta_values(config: PairedFlowConfig) -> np.ndarray:
    """float32 [total_steps] beta_t of the run: lambda_t of config.schedule (App. I.1; T_max = 0.9 T, tau = 5 / T,
    5 cycles) turned into a temperature by config.anneal (App. B; annealing.annealed_beta)."""
    steps = config.total_steps
    settings = {"linear": {"t_max": 0.9 * steps}, "exponential": {"tau": 5.0 / steps}, "sinusoidal": {"cycles": 5.0}}
    lambdas = annealing.lambda_schedule(config.schedule, steps, config.lambda0, **settings[config.schedule])
    return annealing.annealed_beta(config.anneal, lambdas).astype(np.float32)


@register_model(NAME)
@keras.saving.register_keras_serializable(package="infusion_tf")
class PairedFlowModel(keras.Model):
    """Generator G and MAF nu trained against log u (module docstring); implements protocol.GenerativeModel, with
    log_weights only when config.sampler is "flow"."""

    capabilities = ()  # no inpainting, chain, batch norm or isotropic rescoring; likelihood: see log_weights
    monitor = ("energy_distance", "min")  # the validation metric the training loop keeps the best epoch of
    evaluation_settings = ("sampler",)  # eval/run.py --model-setting sampler=flow: samples and density of nu

    def __init__(self, config: PairedFlowConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = c = PairedFlowConfig.from_dict(config) if isinstance(config, dict) else config
        self.generator = keras.Sequential([keras.layers.Dense(c.generator_width, activation="relu")
                                           for _ in range(c.generator_depth)] + [keras.layers.Dense(2)],
                                          name="generator")
        self.generator.build((None, 2))
        self.mades = [maf.MADE(2, (c.hidden, c.hidden), name=f"made{i}") for i in range(c.blocks)]
        offset, scale = toy_affine(c.dataset)
        self.offset, self.scale = tf.constant(offset, tf.float32), tf.constant(scale, tf.float32)
        self.log_jacobian = float(np.sum(np.log(scale)))  # log |d raw / d x|
        self.betas = tf.constant(beta_values(c))  # [total_steps]
        self.seed_generator = keras.random.SeedGenerator(c.seed)
        # The flow's own Adam, made and built here rather than in an overridden compile(): Keras then saves its
        # state in last.keras with the model's and restores it when a run resumes (keras.models.load_model).
        self.flow_optimizer = keras.optimizers.Adam(c.flow_learning_rate)
        self.flow_optimizer.build(self.flow_variables)
        self.built = True

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    def describe(self) -> str:
        c = self.config
        return (f"{NAME}: MAF {c.blocks} x [{c.hidden}, {c.hidden}] paired with a {c.generator_depth} x "
                f"{c.generator_width} generator, learning log u of {c.dataset}; {c.anneal} annealing from lambda0 = "
                f"{c.lambda0:g} ({c.schedule}), {c.flow_steps} flow updates per step; samples from the {c.sampler}")

    @property
    def flow(self):
        """nu: N(0, I_2) through the MAF blocks with order flips (maf.maf_distribution), in raw coordinates."""
        return maf.maf_distribution(self.mades, 2)

    @property
    def flow_variables(self) -> list:
        return [v for made in self.mades for v in made.trainable_variables]

    def make_optimizer(self):
        """Adam for the generator: the compiled optimizer, whose iterations count the steps (the flow has its own)."""
        return keras.optimizers.Adam(self.config.learning_rate)

    def fit_prior(self, train_array) -> None:
        """Nothing to fit: the model learns from log u, z ~ N(0, I)."""

    def _log_u(self, x_raw):
        return paired_flow.TOY_LOG_U[self.config.dataset](x_raw)

    def train_step(self, x):
        """flow_steps flow updates and one generator update (paired_flow.paired_updates); x gives the batch size."""
        c = self.config
        batch = tf.shape(x)[0]
        step = tf.minimum(tf.cast(self.optimizer.iterations, tf.int32), tf.shape(self.betas)[0] - 1)
        zs = [keras.random.normal((batch, 2), seed=self.seed_generator) for _ in range(c.flow_steps)]
        values = paired_flow.paired_updates(self.generator, self.flow, self.flow_variables, self.optimizer,
                                            self.flow_optimizer, self._log_u, self.betas[step], zs)
        return {"loss": values.pop("g_loss"), **values}  # loss: the tempered objective without beta log Z

    def test_step(self, x):
        """Energy distance between the validation batch and as many generator samples (smaller is better)."""
        from infusion_tf.annealed_gan_model import batch_energy_distance

        x = tf.cast(x, tf.float32)
        fake = self.sample(tf.shape(x)[0], seed=tf.constant([self.config.seed, 3], tf.int32))
        return {"energy_distance": batch_energy_distance(x, fake)}

    def _to_unit(self, x_raw):
        return (x_raw - self.offset) / self.scale

    def sample(self, num_samples, num_steps=None, seed=None, **kwargs):
        """float32 [n, 2] points in the dataset's [0, 1]^2 coordinates: G(z), z ~ N(0, I), or with config.sampler
        "flow" a MAF sample of nu. seed: an int, an int32 [2] tensor or None (0)."""
        key = tf.constant([seed or 0, 0], tf.int32) if seed is None or isinstance(seed, int) else seed
        key = tf.cast(key, tf.int32)
        if self.config.sampler == "flow":
            return self._to_unit(self.flow.sample(num_samples, seed=key))
        z = tf.random.stateless_normal(tf.stack([num_samples, 2]), key)
        return self._to_unit(self.generator(z))

    @property
    def log_weights(self):
        """The protocol's log_weights where the samples have a density (config.sampler "flow"), else None: the
        generator is free-form, and a likelihood of nu would describe another law than the samples scored."""
        return self._flow_log_weights if self.config.sampler == "flow" else None

    def _flow_log_weights(self, x, num_proposals, seed) -> LogWeights:
        """log nu of x in [0, 1]^2 coordinates: log nu(raw(x)) + log |d raw / d x|, with no latent variable, as
        LogWeights(per_step [1, B, k]) of k identical proposals. x: float32 [B, 2]; seed: unused."""
        log_nu = self.flow.log_prob(self.offset + self.scale * tf.cast(x, tf.float32)) + self.log_jacobian  # [B]
        return LogWeights(per_step=tf.tile(log_nu[None, :, None], tf.stack([1, 1, num_proposals])))
