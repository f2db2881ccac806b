"""Annealed GAN (infusion_tf/annealed_gan.py): the entropy surrogate's gradient on a Gaussian generator, a tiny run."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from infusion_tf import annealed_gan, annealing, toy_densities


def test_entropy_surrogate_gives_the_gradient_of_minus_the_entropy():
    """Generator x = a z + b, z ~ N(0, I_2): q = N(b, a^2 I), H = log(2 pi e a^2), dH/da = 2 / a. With the exact score
    -(x - b) / a^2 the surrogate's gradient is mean(-z.z) / a: -2 / a up to the sample's mean of |z|^2."""
    z = tf.random.stateless_normal([20000, 2], [1, 2])
    a, b = tf.Variable(1.5), tf.Variable([0.3, -0.2])
    with tf.GradientTape() as tape:
        x = a * z + b
        surrogate = annealed_gan.entropy_surrogate(x, -(x - b) / a**2)
    grad_a, grad_b = tape.gradient(surrogate, [a, b])
    np.testing.assert_allclose(grad_a.numpy(), -tf.reduce_mean(tf.reduce_sum(z * z, 1)).numpy() / 1.5, rtol=1e-5)
    assert abs(grad_a.numpy() - (-2 / 1.5)) < 0.05  # 5 standard errors of mean |z|^2 / a
    np.testing.assert_allclose(grad_b.numpy(), -tf.reduce_mean(z, 0).numpy() / 1.5, atol=1e-6)  # E = 0: H ignores b


@pytest.mark.parametrize("loss", ["jsd", "rkl"])
def test_a_tiny_annealed_gan_trains_and_follows_its_schedule(loss):
    x = toy_densities.banana_samples(512, seed=0).astype(np.float32)
    lambdas = annealing.linear_lambda(8, 1.0, 8)
    keras.utils.set_random_seed(0)
    gan = annealed_gan.AnnealedGAN(2, lambdas, width=16, depth=1, generator_loss=loss)
    gan.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3))
    history = gan.fit(x, batch_size=64, epochs=1, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert history["lambda"][-1] == pytest.approx(np.mean(lambdas), rel=1e-5)  # the mean over the 8 steps
    assert gan.sample(10, seed=1).shape == (10, 2)
    with pytest.raises(ValueError, match="generator_loss must be one of"):
        annealed_gan.AnnealedGAN(2, lambdas, generator_loss="wasserstein")


def test_mode_statistics_and_the_mog_command(tmp_path):
    from infusion_tf import annealed_gan_mog, data

    exact = data.toy_to_raw("mixture_of_gaussians", data.toy_samples("mixture_of_gaussians", 4000, 0))
    stats = annealed_gan_mog.mode_statistics(exact)
    assert stats["modes_covered"] == 8 and stats["high_quality_share"] > 0.98  # 3 std: 98.9% of a 2-D Gaussian
    assert annealed_gan_mog.mode_statistics(np.zeros((10, 2)))["modes_covered"] == 0
    out = tmp_path / "mog"
    assert annealed_gan_mog.main(["--output-dir", str(out), "--steps", "4", "--batch-size", "64", "--width", "8",
                                  "--depth", "1", "--seeds", "1", "--num-samples", "100"]) == 0
    assert (out / "gan_mog.png").is_file() and (out / "results.json").is_file()
