"""InfusionModel: a keras.Model whose train_step runs infusion training (Sections 2.3 and 2.4).

    model = InfusionModel(InfusionConfig())
    model.fit_prior(splits.train)                   # p(0): per-pixel mean and variance, Eq. 1
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(train_ds, validation_data=val_ds, callbacks=[...])
    images = model.sample(16)                       # model sampling chain, Section 2.2

`loss` is the objective being minimized in nats per example; `lower_bound` is the stochastic lower
bound of Eq. 3 on the batch (one chain per example), in nats per example. Validation uses the
current batch's normalization statistics, as the paper does (Appendix A.1).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from infusion_tf import chains
from infusion_tf import optimizers  # noqa: F401  registers FusedAdam, which last.keras names, for keras.models.load_model
from infusion_tf.config import InfusionConfig
from infusion_tf.networks import StepBatchNormalization, build_operator
from infusion_tf.protocol import LogWeights
from infusion_tf.registry import OBJECTIVES, register_model, register_objective
from infusion_tf.schedule import denoising_weights, infusion_rates

__all__ = ["InfusionModel", "denoising_objective", "lower_bound_objective"]


@register_objective("denoising")
def denoising_objective(model: "InfusionModel", terms: chains.ChainTerms) -> tf.Tensor:
    """Section 2.3.2: -sum_t eta(t) log p(t)(x | z~(t-1)), eta(t) = eta0 t / T (footnote 3). [T, B] terms -> [B]."""
    return -tf.reduce_sum(model.eta[:, None] * terms.log_p_target, axis=0)


denoising_objective.reparametrized = False  # no gradient through the chain's draws


@register_objective("lower_bound")
def lower_bound_objective(model: "InfusionModel", terms: chains.ChainTerms) -> tf.Tensor:
    """Section 2.4.1: minus the integrand of Eq. 3 along a reparametrized chain. [T, B] terms -> [B]."""
    return -tf.reduce_sum(chains.lower_bound_terms(terms), axis=0)


lower_bound_objective.reparametrized = True  # gradients flow through the draws


@register_model("infusion")
@keras.saving.register_keras_serializable(package="infusion_tf")
class InfusionModel(keras.Model):
    """Prior p(0), transition operator p(t) and infusion schedule alpha(t), trained by infusion training.

    A model of the toolkit's protocol (protocol.py) with every optional capability.
    """

    capabilities = ("inpaint", "chain", "batch_norm", "isotropic")

    def __init__(self, config: InfusionConfig | dict | None = None, **kwargs):
        super().__init__(**kwargs)
        if config is None:
            config = InfusionConfig()
        elif isinstance(config, dict):
            config = InfusionConfig.from_dict(config)
        self.config = config
        self.operator = build_operator(config)
        shape = config.example_shape
        self.prior_mean = self.add_weight(name="prior_mean", shape=shape, initializer="zeros",
                                          trainable=False, autocast=False)
        self.prior_variance = self.add_weight(name="prior_variance", shape=shape, initializer="ones",
                                              trainable=False, autocast=False)
        # Schedules are variables, not constants: changing alpha does not retrace the step functions.
        alpha = infusion_rates(config.num_steps, config.alpha0, config.omega, config.schedule)
        self.alpha = self.add_weight(name="alpha", shape=(config.num_steps,), trainable=False, autocast=False,
                                     initializer=keras.initializers.Constant(alpha.astype(np.float32)))
        self.eta = self.add_weight(name="eta", shape=(config.num_steps,), trainable=False, autocast=False,
                                   initializer=keras.initializers.Constant(
                                       denoising_weights(config.num_steps, config.eta0).astype(np.float32)))
        # Random state of training: step counter folded into the seed; saved with the weights, so a
        # resumed run continues the same random stream.
        self.rng_counter = self.add_weight(name="rng_counter", shape=(), dtype="int64", initializer="zeros",
                                           trainable=False, aggregation="only_first_replica")
        # The denoising train_step can draw the chain first and then score all T steps as one batch of T * B
        # rows: the same update with T times fewer, larger operations. An operator that replays the products
        # it computed while drawing (MLPOperator) does no extra products; others run one more forward pass.
        # Measured on 2 CPU cores (docs/performance.md), it pays at batch <= 256 (float32 with replay: 1.11x
        # faster at batch 100; bfloat16) and not at batch 512, where the [T * B, 1200] tensors of the scoring
        # pass no longer fit the caches (float32 1.16x slower). Settable.
        self.score_steps_together = config.batch_size <= 256 and (
            getattr(self.operator, "supports_replay", False) or config.precision == "mixed_bfloat16")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.bound_tracker = keras.metrics.Mean(name="lower_bound")
        self.built = True

    # ----------------------------------------------------------------------------------------- setup
    def describe(self) -> str:
        """One line for the training header: operator, steps and infusion schedule."""
        c = self.config
        schedule = (f"alpha(0) = {c.alpha0:g}, omega = {c.omega:g}" if c.schedule == "increasing"
                    else f"alpha = {c.alpha0:g} (constant)")
        layers = f"{c.depth} x {c.width}" if c.operator == "mlp" else f"width {c.width}"
        return f"{c.operator} operator ({layers}), T = {c.num_steps} steps, {schedule}"

    def warm_start(self, weights_path: str) -> None:
        """Starts training from another run's weights (operator, prior, batch-norm statistics), keeping this config's
        schedules alpha and eta and a fresh random stream. Raises: ValueError when the shapes differ."""
        alpha, eta = self.alpha.numpy(), self.eta.numpy()
        self.load_weights(weights_path)
        self.alpha.assign(alpha)
        self.eta.assign(eta)
        self.rng_counter.assign(0)

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(InfusionConfig.from_dict(config["config"]), name=config.get("name"))

    @property
    def metrics(self):
        return [self.loss_tracker, self.bound_tracker]

    def set_prior(self, mean, variance) -> None:
        """Sets p(0)'s per-pixel mean and variance (floored at config.prior_variance_floor), Eq. 1."""
        mean, variance = chains.prior_parameters(mean, variance, self.config.prior_variance_floor)
        if mean.shape != self.config.example_shape or variance.shape != self.config.example_shape:
            raise ValueError(f"prior mean/variance must have shape {self.config.example_shape}, "
                             f"got {mean.shape} and {variance.shape}")
        self.prior_mean.assign(mean)
        self.prior_variance.assign(variance)

    def fit_prior(self, train_array: np.ndarray) -> None:
        """Fits p(0) to the training set as the model sees it (dequantized or not), Eq. 1."""
        from infusion_tf.data import pixel_statistics

        self.set_prior(*pixel_statistics(train_array, self.config.dequantize))

    def _next_seed(self) -> tf.Tensor:
        """A fresh stateless seed [2] per call: (config seed, counter), folded with the replica id."""
        counter = self.rng_counter.assign_add(1)
        seed = tf.stack([tf.constant(self.config.seed, tf.int64), tf.convert_to_tensor(counter)])
        replica = tf.distribute.get_replica_context()
        replica_id = 0 if replica is None else replica.replica_id_in_sync_group
        return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int32), replica_id)

    @staticmethod
    def _images(data):
        return tf.cast(data[0] if isinstance(data, (tuple, list)) else data, tf.float32)

    # ---------------------------------------------------------------------------------- the objective
    def chain_terms(self, x, seed, *, use_batch_statistics=True, update_statistics=False, stop_gradient=True,
                    score_draws=True):
        """Infusion chain q(z~ | x) scored under p: see `chains.infusion_chain`. x: [B, ...] -> [T, B] terms."""
        return chains.infusion_chain(
            self.operator, x, self.prior_mean, self.prior_variance, self.alpha, self.config.delta_variance,
            seed, use_batch_statistics=use_batch_statistics, update_statistics=update_statistics,
            stop_gradient=stop_gradient, score_draws=score_draws)

    def objective(self, terms: chains.ChainTerms) -> tf.Tensor:
        """Per-example loss to minimize, float32 [B]: the registered objective config.objective (see below)."""
        return OBJECTIVES.get(self.config.objective)(self, terms)

    def log_weights(self, x, num_proposals, seed) -> LogWeights:
        """Protocol (protocol.py): k infusion chains per example scored under p and q, Eq. 2-3 and footnote 4.

        x: float32 [B, ...] -> LogWeights(per_step [T + 1, B, k], squared_error [B, k]); moving (or recomputed)
        batch-norm statistics.
        """
        return chains.infusion_log_weights(self.operator, x, self.prior_mean, self.prior_variance, self.alpha,
                                           self.config.delta_variance, num_proposals, seed)

    def train_step(self, data):
        x = self._images(data)
        seed = self._next_seed()
        denoising = not OBJECTIVES.get(self.config.objective).reparametrized  # no gradient through the draws
        # Without the training-batch bound, the denoising gradient needs only the draws and log p(t)(x | z~(t-1)).
        skip_bound = denoising and not self.config.train_bound
        together = denoising and self.score_steps_together
        if together:
            # No gradient flows through the chain's draws (Section 2.3.2), so they can be drawn first, outside
            # the tape, and all T steps scored in one batch: the same terms, with T times larger products.
            # An operator that can replay its products records them while drawing: the scoring pass then runs
            # only the backward products, so the step does no more products than the step-by-step chain.
            replay = getattr(self.operator, "supports_replay", False)
            drawn = chains.infusion_trajectory(self.operator, x, self.prior_mean, self.prior_variance, self.alpha,
                                               self.config.delta_variance, seed, record_products=replay)
            z_tilde, products = drawn if replay else (drawn, None)  # [T, B, ...], Dense outputs [T * B, units]
        with tf.GradientTape() as tape:
            if together:
                terms = chains.score_infusion_chain(self.operator, x, z_tilde, self.prior_mean, self.prior_variance,
                                                    self.alpha, self.config.delta_variance, update_statistics=True,
                                                    products=products, score_draws=not skip_bound)
            else:
                terms = self.chain_terms(x, seed, use_batch_statistics=True, update_statistics=True,
                                         stop_gradient=denoising, score_draws=not skip_bound)
            per_example = self.objective(terms)  # [B]
            # Mean over the global batch: each replica holds 1 / num_replicas of it, and the optimizer
            # sums the replicas' gradients.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss = tf.reduce_mean(per_example) / replicas
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        if skip_bound:  # the progress bar and log.csv show the loss; the bound is validation's (val_lower_bound)
            self.loss_tracker.update_state(per_example)
            return {"loss": self.loss_tracker.result()}
        return self._update_metrics(per_example, terms)

    def test_step(self, data):
        x = self._images(data)
        terms = self.chain_terms(x, self._next_seed(), use_batch_statistics=True, update_statistics=False)
        return self._update_metrics(self.objective(terms), terms)

    def _update_metrics(self, per_example, terms):
        self.loss_tracker.update_state(per_example)
        self.bound_tracker.update_state(tf.reduce_sum(chains.lower_bound_terms(terms), axis=0))
        return {m.name: m.result() for m in self.metrics}

    def call(self, x, training=False):
        """Per-example stochastic lower bound of Eq. 3 (one chain), float32 [B]; moving statistics unless training."""
        terms = self.chain_terms(tf.cast(x, tf.float32), self._next_seed(), use_batch_statistics=training)
        return tf.reduce_sum(chains.lower_bound_terms(terms), axis=0)

    # ------------------------------------------------------------------------------------ generation
    def sample(self, num_samples: int, num_steps: int | None = None, seed: int | None = None, *,
               return_means: bool = True, return_chain: bool = False, use_batch_statistics: bool = False):
        """Samples by the model sampling chain (Section 2.2), `config.sampling_steps` steps by default.

        seed: None (the model's seed generator), an integer or an int32 [2] tensor (see chains.seed_pair).

        Returns: float32 [num_samples, *example_shape]; with `return_chain`, also [steps + 1, n, ...].
        """
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        num_steps = self.config.sampling_steps if num_steps is None else int(num_steps)
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        return chains.sampling_chain(
            self.operator, self.prior_mean, self.prior_variance, int(num_samples), num_steps,
            self._seed_tensor(seed), return_means=return_means, return_chain=return_chain,
            use_batch_statistics=use_batch_statistics)

    def inpaint(self, images, mask, num_steps: int | None = None, seed: int | None = None, *,
                return_chain: bool = False):
        """Fills the pixels where mask = 0, clamping those where mask = 1 at every step (inpainting).

        images, mask: [B, *example_shape] in [0, 1]. Returns float32 [B, *example_shape] (means).
        """
        images = tf.convert_to_tensor(images, tf.float32)
        mask = tf.convert_to_tensor(mask, tf.float32)
        expected = tuple(self.config.example_shape)
        for name, value in (("images", images), ("mask", mask)):
            if len(value.shape) != len(expected) + 1 or tuple(value.shape[1:]) != expected:
                raise ValueError(f"{name} must have shape [batch, {', '.join(map(str, expected))}], "
                                 f"got {list(value.shape)}")
        if images.shape[0] is not None and mask.shape[0] is not None and images.shape[0] != mask.shape[0]:
            raise ValueError(f"images and mask batch sizes differ: {images.shape[0]} vs {mask.shape[0]}")
        num_steps = self.config.sampling_steps if num_steps is None else int(num_steps)
        return chains.sampling_chain(
            self.operator, self.prior_mean, self.prior_variance, tf.shape(images)[0], num_steps,
            self._seed_tensor(seed), known=images, mask=mask, return_chain=return_chain)

    def _seed_tensor(self, seed):
        """int32 [2]: a fresh seed for None, else chains.seed_pair(seed) ([seed, 0] for an int below 2^31)."""
        if seed is None:
            return self._next_seed()
        return chains.seed_pair(seed)

    def step_batch_norms(self) -> list[StepBatchNormalization]:
        """The operator's per-step batch-normalization layers (for recomputing their statistics)."""
        return [layer for layer in self.operator._flatten_layers() if isinstance(layer, StepBatchNormalization)]
