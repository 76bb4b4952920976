from setuptools import find_packages, setup

setup(
    name="dann_dist",
    version="0.1.0",
    description="Data-parallel Domain-Adversarial Neural Networks (DANN) on "
    "MNIST -> MNIST-M with TensorFlow 2 / Keras 3, Horovod and tf.distribute",
    packages=find_packages(include=["dann_dist", "dann_dist.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "absl-py>=2",
        "tensorboard>=2.16",
        "numpy>=1.26",
    ],
    extras_require={
        # GPU hosts: pip install -e .[gpu]; Horovod is built by scripts/setup_env.sh.
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "test": ["pytest>=8"],
    },
    entry_points={
        "console_scripts": [
            "dann-train=dann_dist.train:run",
            "dann-evaluate=dann_dist.evaluate:run",
            "dann-data=dann_dist.data.__main__:run",
            "dann-bench=dann_dist.bench:run",
            "dann-report=dann_dist.report:run",
        ]
    },
)
