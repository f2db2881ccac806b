"""Installs the infusion_tf library and its console scripts (train, eval, export)."""

from setuptools import find_packages, setup

setup(
    name="infusion-tf",
    version="0.1.0",
    description="Infusion training (Bordes, Honari & Vincent, ICLR 2017) in Keras 3 / TensorFlow",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["infusion_tf", "infusion_tf.*"]),
    package_data={"infusion_tf": ["datasets/mnist/*.gz"]},
    include_package_data=True,
    install_requires=[
        "tensorflow==2.21.*",
        "keras>=3.15",
        "tensorflow-probability==0.25.*",
        "tf-keras==2.21.*",  # tensorflow-probability 0.25 does not import without it
        "tensorflow-datasets==4.9.*",
        "importlib_resources",  # imported by TFDS 4.9.10's download path, which does not install it
        "numpy",
        "scipy",
        "matplotlib",
        "tensorboard",  # TensorBoard logs of training; tensorflow 2.21 does not install it
    ],
    # scikit-learn ships the Cancer data of the Bayesian logistic-regression experiment (bayes_logreg.py)
    extras_require={"test": ["pytest", "hypothesis", "scikit-learn"], "baselines": ["scikit-learn"]},
    entry_points={
        "console_scripts": [
            "infusion-train=infusion_tf.cli:train_main",
            "infusion-eval=infusion_tf.evaluate:main",
            "infusion-export=infusion_tf.cli:export_main",
        ]
    },
)
