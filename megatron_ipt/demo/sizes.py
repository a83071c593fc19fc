"""Demo sizes: every stage gets an explicit time budget, turned into token/step budgets.

Calibration (``/work/shared/notes/offline-material.md``, 2 CPU cores, other load present):
SmolLM2-135M trains at ~165-230 tokens/s with bf16 autocast and scores at ~450-675 tokens/s.
The budgets below use the low-middle of those ranges so that ``small`` stays within 20 minutes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

# Aggregate training tokens/s of SmolLM2-135M under ZeRO-3 with 2 processes (1 thread each, fp32,
# doc_sdpa) on this 2-core machine: measured 107-124 tokens/s on an idle machine (2026-11-24; bf16
# ran at 51-56, so the demo trains in fp32 on CPU). Change it here (one place) after timing
# `make demo` on another machine: every step count below follows from it.
TRAIN_TOKENS_PER_S = 115.0
EVAL_TOKENS_PER_S = 550.0
TOKENS_PER_ABSTRACT = 390  # PubMed abstracts with SmolLM2's tokenizer (77,609 tokens / 200)


@dataclass(frozen=True)
class DemoSize:
    name: str
    tiny_model: bool  # a tiny random Llama with SmolLM2's tokenizer instead of SmolLM2-135M
    records: int  # PubMed records read (both shipped files stream until this many)
    heldout_fraction: float  # share of records (by PMID hash) kept out of every training set
    eval_texts: int  # held-out abstracts scored for perplexity
    eval_tasks: int  # held-out context-based tasks scored (answer loss, EM/F1, option accuracy)
    eval_max_new_tokens: int
    tune_examples: int  # mined examples turned into synthesizer tuning data
    tune_seconds: float  # time budget of synthesizer tuning (training only)
    tune_seq_len: int
    tune_lr: float
    synth_texts: int  # unstructured abstracts converted by the synthesizer
    rounds: int  # M in M-shot synthesis
    synth_max_new_tokens: int
    synth_max_model_len: int
    pretrain_seconds: float  # time budget of EACH continual pre-training run (same tokens for both)
    seq_len: int
    micro_batch: int  # per rank
    pretrain_lr: float
    train_tokens_per_s: float = TRAIN_TOKENS_PER_S
    nproc: int = 2
    min_steps: int = 2  # floor on steps (tiny: a few steps so the loss curves have points)

    def steps_for(self, seconds: float, seq_len: int, micro_batch: int) -> int:
        """Optimizer steps that fit ``seconds`` at the calibrated throughput (at least ``min_steps``)."""
        tokens = seconds * self.train_tokens_per_s
        return max(self.min_steps, math.floor(tokens / (seq_len * micro_batch * self.nproc)))

    @property
    def tune_steps(self) -> int:
        return self.steps_for(self.tune_seconds, self.tune_seq_len, 1)

    @property
    def pretrain_steps(self) -> int:
        return self.steps_for(self.pretrain_seconds, self.seq_len, self.micro_batch)

    @property
    def pretrain_tokens(self) -> int:
        return self.pretrain_steps * self.seq_len * self.micro_batch * self.nproc

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(tune_steps=self.tune_steps, pretrain_steps=self.pretrain_steps,
                 pretrain_tokens=self.pretrain_tokens)
        return d


SIZES: dict[str, DemoSize] = {
    # The smoke test's size: a tiny random model, a handful of steps, the same stages and code path.
    "tiny": DemoSize(
        name="tiny", tiny_model=True, records=400, heldout_fraction=0.1, eval_texts=4, eval_tasks=4,
        eval_max_new_tokens=8, tune_examples=60, tune_seconds=0, tune_seq_len=512, tune_lr=1e-3,
        synth_texts=4, rounds=2, synth_max_new_tokens=16, synth_max_model_len=512,
        pretrain_seconds=0, seq_len=128, micro_batch=2, pretrain_lr=1e-3, min_steps=6,
    ),
    # The default: ~20 minutes on 2 CPU cores. Budgets (s): tuning 285 = 16 steps of 2 x 1,024 tokens
    # at lr 3e-4 (fewer steps or lr 1e-4 left SmolLM2 unable to write the <QUE>/<ANS> format), plus
    # ~60 start-up, export, two pair-loss measurements; synthesis ~150 (24 texts x 128 new tokens);
    # each pre-training run 170 = 9 steps of 4 x 512 tokens (+ ~50 start-up/export); evaluation ~270
    # for 3 models (12 abstracts, 16 tasks; scoring ran at ~160 tokens/s).
    "small": DemoSize(
        name="small", tiny_model=False, records=3000, heldout_fraction=0.05, eval_texts=12, eval_tasks=16,
        eval_max_new_tokens=24, tune_examples=240, tune_seconds=285, tune_seq_len=1024, tune_lr=3e-4,
        synth_texts=24, rounds=2, synth_max_new_tokens=128, synth_max_model_len=2048,
        pretrain_seconds=170, seq_len=512, micro_batch=2, pretrain_lr=1e-4,
    ),
    # Several times the work of small (~1.5 hours here; minutes on a GPU).
    "medium": DemoSize(
        name="medium", tiny_model=False, records=12000, heldout_fraction=0.05, eval_texts=100,
        eval_tasks=120, eval_max_new_tokens=32, tune_examples=1000, tune_seconds=1200, tune_seq_len=1024,
        tune_lr=1e-4, synth_texts=160, rounds=3, synth_max_new_tokens=200, synth_max_model_len=2048,
        pretrain_seconds=1200, seq_len=512, micro_batch=2, pretrain_lr=1e-4,
    ),
}


def get_size(name: str) -> DemoSize:
    if name not in SIZES:
        raise KeyError(f"unknown demo size {name!r}: choose one of {', '.join(SIZES)}")
    return SIZES[name]


def with_settings(size: DemoSize, settings: list[str]) -> DemoSize:
    """``size`` with ``NAME=VALUE`` fields replaced (e.g. ``pretrain_seconds=600``)."""
    types = {f.name: f.type for f in fields(DemoSize)}
    changes: dict = {}
    for item in settings:
        name, sep, value = item.partition("=")
        if not sep or name not in types or name == "name":
            raise ValueError(f"--set {item!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(n for n in types if n != 'name')}")
        kind = types[name] if isinstance(types[name], str) else types[name].__name__
        try:
            changes[name] = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}[kind](value)
        except ValueError:
            raise ValueError(f"--set {item!r}: {name} must be a {kind}") from None
    return replace(size, **changes)
