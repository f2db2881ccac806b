"""The model protocol (infusion_tf/protocol.py) and the registries: a tiny model registered from outside the package
runs the lower bound, importance sampling and Parzen through eval/run.py, against its log p(x) in closed form.

The model: z ~ N(0, I_2), x = mu + a z + s eps, eps ~ N(0, I_2), so p(x) = N(mu, (a^2 + s^2) I) exactly and the
posterior is q*(z | x) = N(a (x - mu) / (a^2 + s^2), s^2 / (a^2 + s^2) I). Its proposal q(z | x) is that posterior
with the mean scaled by `shrink` and the variance by `widen`; shrink = widen = 1 makes every log-weight equal
log p(x). Its two per-step terms are log p(z) - log q(z | x) and log p(x | z).
"""

from __future__ import annotations

import dataclasses
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from infusion_tf import data, evaluate, protocol, registry
from infusion_tf.config import ModelConfig

NAME = "gaussian_latent_test"
MU, A, S = 0.5, 0.2, 0.1


@registry.register_model_config(NAME)
@dataclasses.dataclass(frozen=True)
class GaussianLatentConfig(ModelConfig):
    model: str = NAME  # registry name
    dataset: str = "mixture_of_gaussians"  # 2-D toy data in [0, 1]^2
    example_shape: tuple[int, ...] = (2,)
    dequantize: bool = False
    seed: int = 0
    train_examples: int | None = None
    validation_examples: int | None = None
    sampling_steps: int = 1
    shrink: float = 1.0  # proposal mean = shrink * posterior mean
    widen: float = 1.0  # proposal variance = widen * posterior variance
    batch_size: int = 100  # training settings the training command reads
    learning_rate: float = 0.01
    epochs: int = 2
    patience: int | None = None
    sample_every: int = 1


@registry.register_model(NAME)
@keras.saving.register_keras_serializable(package="tests")
class GaussianLatentModel(keras.Model):
    capabilities = ()  # no inpainting, chain, batch norm or isotropic rescoring

    def __init__(self, config: GaussianLatentConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = GaussianLatentConfig.from_dict(config) if isinstance(config, dict) else config
        self.mu = self.add_weight(name="mu", shape=(2,), initializer=keras.initializers.Constant(MU))
        self.a = self.add_weight(name="a", shape=(), initializer=keras.initializers.Constant(A))
        self.s = self.add_weight(name="s", shape=(), initializer=keras.initializers.Constant(S))
        self.built = True

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    def train_step(self, x):
        """Maximizes the one-proposal bound, reparametrized: mean over the batch of sum_S per_step."""
        seed = tf.stack([tf.cast(self.optimizer.iterations, tf.int32), tf.constant(1, tf.int32)])
        with tf.GradientTape() as tape:
            bound = tf.reduce_mean(tf.reduce_sum(self.log_weights(x, 1, seed).per_step, axis=0))
            loss = -bound
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        return {"loss": loss, "lower_bound": bound}

    def test_step(self, x):
        bound = tf.reduce_mean(tf.reduce_sum(self.log_weights(x, 1, tf.constant([0, 2], tf.int32)).per_step, axis=0))
        return {"loss": -bound, "lower_bound": bound}

    def fit_prior(self, train_array) -> None:
        pass

    def log_weights(self, x, num_proposals, seed) -> protocol.LogWeights:
        b = tf.shape(x)[0]
        total = self.a**2 + self.s**2
        post_mean = self.config.shrink * self.a * (x - self.mu) / total  # [B, 2]
        post_var = self.config.widen * self.s**2 / total
        noise = tf.random.stateless_normal([b, num_proposals, 2], seed)
        z = post_mean[:, None] + tf.sqrt(post_var) * noise  # [B, k, 2]

        def log_normal(v, mean, var):
            return tf.reduce_sum(-0.5 * tf.math.log(2 * math.pi * var) - 0.5 * tf.square(v - mean) / var, axis=-1)

        prior_minus_q = log_normal(z, 0.0, 1.0) - log_normal(z, post_mean[:, None], post_var)  # [B, k]
        likelihood = log_normal(x[:, None], self.mu + self.a * z, self.s**2)  # [B, k]
        return protocol.LogWeights(tf.stack([prior_minus_q, likelihood]))  # [2, B, k]

    def sample(self, num_samples, num_steps=None, seed=None, **kwargs):
        """seed: an int, an int32 [2] tensor (the SavedModel's), or None (seed 0); num_samples may be a tensor."""
        key = tf.constant([seed or 0, 0], tf.int32) if seed is None or isinstance(seed, int) else seed
        eps = tf.random.stateless_normal(tf.stack([num_samples, 2]), tf.convert_to_tensor(key, tf.int32))
        return self.mu + tf.sqrt(self.a**2 + self.s**2) * eps


KEEPS_LAST = "gaussian_latent_keeps_last_test"


@registry.register_model_config(KEEPS_LAST)
@dataclasses.dataclass(frozen=True)
class KeepsLastConfig(GaussianLatentConfig):
    model: str = KEEPS_LAST  # registry name


@registry.register_model(KEEPS_LAST)
@keras.saving.register_keras_serializable(package="tests")
class KeepsLastModel(GaussianLatentModel):
    """The same model, declaring that no validation metric ranks its epochs: training keeps its last epoch."""

    monitor = None


def exact_log_p(x: np.ndarray, extra_variance: float = 0.0) -> np.ndarray:
    return stats.norm.logpdf(x, MU, math.sqrt(A**2 + S**2 + extra_variance)).sum(axis=1)


def make_run(folder, **config) -> str:
    cfg = GaussianLatentConfig(**config)
    model = GaussianLatentModel(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    model.save_weights(str(folder / "best.weights.h5"))
    return str(folder)


def run_eval(run: str, *flags) -> dict:
    out = f"{run}/results.json"
    assert evaluate.main(["--checkpoint", run, "--output", out, "--num-examples", "300", *flags]) == 0
    with open(out) as f:
        return json.load(f)


def evaluated_points() -> np.ndarray:
    return data.load_splits("mixture_of_gaussians", seed=0).test[:300].astype(np.float64)


def test_registries_list_builtins_without_importing_and_refuse_unknown_names():
    assert {"infusion", NAME} <= set(registry.MODELS.names())
    assert {"mlp", "conv"} <= set(registry.OPERATORS.names())
    assert {"lower_bound", "importance_sampling", "isotropic", "parzen", "sample_quality"} <= \
        set(registry.ESTIMATORS.names())
    with pytest.raises(ValueError, match="unknown model 'nope'; choose one of"):
        registry.MODELS.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model(NAME)(object)


def test_capabilities_are_discovered():
    from infusion_tf.model import InfusionModel

    assert protocol.capabilities(GaussianLatentModel(GaussianLatentConfig())) == {"likelihood"}
    assert protocol.capabilities(InfusionModel.__new__(InfusionModel)) >= {"inpaint", "chain", "batch_norm"}
    with pytest.raises(ValueError, match="the isotropic estimator needs the 'isotropic' capability"):
        protocol.require(GaussianLatentModel(GaussianLatentConfig()), "isotropic", "the isotropic estimator")


def test_exact_proposal_gives_exact_log_likelihood_for_every_estimator(tmp_path):
    run = make_run(tmp_path / "exact")
    exact = exact_log_p(evaluated_points()).mean()
    for estimator in ("lower_bound", "importance_sampling"):
        result = run_eval(run, "--estimator", estimator, "--k", "5", "--repeats", "2")
        assert result["mean_nats"] == pytest.approx(exact, abs=1e-4), estimator
        assert len(result["per_step"]) == 2
        assert result["batch_norm"]["mode"].startswith("none")


def test_importance_sampling_closes_the_gap_of_a_poor_proposal(tmp_path):
    run = make_run(tmp_path / "poor", shrink=0.7, widen=2.0)
    exact = exact_log_p(evaluated_points()).mean()
    bound = run_eval(run, "--estimator", "lower_bound", "--k", "10", "--repeats", "2")
    estimate = run_eval(run, "--estimator", "importance_sampling", "--k", "2000", "--repeats", "2")
    # Per-example standard errors of the two estimates are well below these margins (300 examples, 2 repeats).
    assert bound["mean_nats"] < exact - 0.05, "a poor proposal leaves a gap in the bound"
    assert abs(estimate["mean_nats"] - exact) < 0.01, (estimate["mean_nats"], exact)


def test_parzen_matches_the_smoothed_closed_form(tmp_path):
    """A Parzen window of width sigma on exact samples estimates log (p * N(0, sigma^2 I))(x)."""
    run = make_run(tmp_path / "parzen")
    result = run_eval(run, "--estimator", "parzen", "--repeats", "2", "--num-samples", "10000")
    for value, sigma in zip(result["repeats_nats"], result["sigma"]):  # each repeat chose its own width
        smoothed = exact_log_p(evaluated_points(), sigma**2).mean()
        assert abs(value - smoothed) < 0.03, (value, smoothed, sigma)


def test_isotropic_estimator_is_refused_for_a_model_without_the_capability(tmp_path, capsys):
    run = make_run(tmp_path / "iso")
    assert evaluate.main(["--checkpoint", run, "--estimator", "isotropic", "--output", f"{run}/r.json"]) == 2
    assert "needs the 'isotropic' capability" in capsys.readouterr().err


def test_export_serves_the_models_own_samples_without_inpainting(tmp_path):
    from infusion_tf.export import export_from_checkpoint

    run = make_run(tmp_path / "export")
    loaded = tf.saved_model.load(export_from_checkpoint(run))
    assert "sample" in loaded.signatures and "inpaint" not in loaded.signatures  # no "inpaint" capability
    images = np.concatenate([loaded.signatures["sample"](num_samples=tf.constant(1000), num_steps=tf.constant(1),
                                                         seed=tf.constant(seed))["images"].numpy() for seed in range(4)])
    assert images.shape == (4000, 2)
    # Exact samples of N(mu, (a^2 + s^2) I): mean and standard deviation within 5 standard errors.
    sd = math.sqrt(A**2 + S**2)
    np.testing.assert_allclose(images.mean(axis=0), MU, atol=5 * sd / math.sqrt(4000))
    np.testing.assert_allclose(images.std(axis=0), sd, atol=5 * sd / math.sqrt(2 * 4000))


def test_the_training_command_trains_resumes_and_exports_any_registered_model(tmp_path, capsys):
    """training.train (what train/run.py runs) on the tiny model: folder, header, pictures, resume, export, eval."""
    from infusion_tf import training
    from infusion_tf.config import load_config

    run = tmp_path / "trained"
    config = GaussianLatentConfig(train_examples=1000, validation_examples=200)
    training.train(config, str(run), verbose=2)
    out = capsys.readouterr().out
    assert f"model:     {NAME} model, 4 parameters" in out
    assert load_config(str(run)) == config and json.loads((run / "config.json").read_text())["model"] == NAME
    assert (run / "samples" / "samples_epoch0001.png").is_file()  # a scatter plot: the data are 2-D
    assert not list((run / "samples").glob("chains*"))  # no "chain" capability
    training.train(dataclasses.replace(config, epochs=3), str(run), resume=True, verbose=0)
    rows = (run / "log.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[-1].startswith("2,")  # a header and epochs 0, 1, 2
    assert tf.saved_model.load(str(run / "saved_model")).signatures["sample"] is not None
    result = run_eval(str(run), "--estimator", "lower_bound", "--k", "4", "--repeats", "1")
    assert math.isfinite(result["mean_nats"]) and result["settings"]["config"]["model"] == NAME


def test_a_sample_only_model_has_no_likelihood_and_the_chain_estimators_refuse_it():
    class SampleOnly:
        config = GaussianLatentConfig()
        capabilities = ()

        def sample(self, num_samples, num_steps=None, seed=None):
            return tf.zeros([num_samples, 2])

    assert protocol.capabilities(SampleOnly()) == frozenset()
    assert "likelihood" in protocol.capabilities(GaussianLatentModel(GaussianLatentConfig()))
    for name in ("lower_bound", "importance_sampling"):
        assert registry.ESTIMATORS.get(name).needs == "likelihood"
    with pytest.raises(ValueError, match="needs the 'likelihood' capability"):
        protocol.require(SampleOnly(), "likelihood", "the lower_bound estimator")


def test_a_model_without_a_monitor_keeps_its_last_epoch(tmp_path):
    """monitor = None: training writes no best.weights.h5 and records no best epoch; the default weights of
    evaluation (find_weights, load_checkpoint) and the exported SavedModel are the last epoch's; a patience, which
    would have nothing to count, is refused before anything is written."""
    from infusion_tf import checkpoint, training

    assert protocol.monitor(KeepsLastModel) is None and protocol.monitor(GaussianLatentModel) == ("lower_bound", "max")
    run = tmp_path / "keeps_last"
    config = KeepsLastConfig(train_examples=1000, validation_examples=200, epochs=3)
    training.train(config, str(run), verbose=0)
    assert not (run / "checkpoints" / "best.weights.h5").exists()
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 3 and state["best_epoch"] == -1
    last = keras.models.load_model(run / "checkpoints" / "last.keras")  # epoch 3's weights
    assert not np.allclose(last.mu.numpy(), MU)  # training moved them, so an earlier epoch's would differ
    assert checkpoint.find_weights(str(run)) == str(run / "checkpoints" / "last.weights.h5")
    loaded = checkpoint.load_checkpoint(str(run))
    for name in ("mu", "a", "s"):
        np.testing.assert_array_equal(getattr(loaded, name).numpy(), getattr(last, name).numpy(), err_msg=name)
    exported = tf.saved_model.load(str(run / "saved_model")).signatures["sample"]
    images = exported(num_samples=tf.constant(50), num_steps=tf.constant(1), seed=tf.constant(3))["images"]
    np.testing.assert_allclose(images.numpy(), last.sample(50, seed=3).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="keeps its last epoch.*--patience"):
        training.train(dataclasses.replace(config, patience=1), str(tmp_path / "refused"), verbose=0)
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ValueError, match="monitor must be"):
        protocol.monitor(type("BadMonitor", (), {"monitor": ("lower_bound", "largest")}))
