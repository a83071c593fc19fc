"""The model the demo starts from: SmolLM2-135M-Instruct, or (size ``tiny``) a tiny random Llama.

The tiny model keeps SmolLM2's tokenizer so every stage runs the same code path on the same
token ids; only the network is small and untrained.
"""

from __future__ import annotations

from pathlib import Path

from megatron_ipt.demo.paths import DemoPaths
from megatron_ipt.demo.sizes import DemoSize
from megatron_ipt.io import atomic_dir
from megatron_ipt.log import get_logger

log = get_logger(__name__)

TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                  max_position_embeddings=1024, tie_word_embeddings=True)


def build_tiny_model(out_dir: Path, tokenizer_dir: Path | None = None, seed: int = 0) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (from ``tokenizer_dir``, default the cached
    SmolLM2 directory), saved as an HF directory (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_ipt.model.build import ModelConfig, hf_config
    from megatron_ipt.model.hf_import import smollm2_hf_dir

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir or smollm2_hf_dir()))
    config = hf_config(ModelConfig(arch="llama", vocab_size=len(tokenizer), **TINY_SHAPE))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    log.info("tiny start model (%s parameters) -> %s", f"{model.num_parameters():,}", out_dir)
    return out_dir


def start_model_dir(size: DemoSize, paths: DemoPaths) -> Path:
    """The HF directory of the starting model (built or converted once, then reused)."""
    if size.tiny_model:
        if not (paths.start_model / "config.json").is_file():
            paths.start_model.parent.mkdir(parents=True, exist_ok=True)
            build_tiny_model(paths.start_model)
        return paths.start_model
    from megatron_ipt.model.hf_import import smollm2_hf_dir

    return smollm2_hf_dir()
