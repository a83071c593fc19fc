"""Demo sizes: every stage gets an explicit time budget, turned into token/step budgets.

Calibration: the throughputs below, measured alone on this 2-core machine (each says where).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

# Aggregate training tokens/s of SmolLM2-135M on this 2-core machine for the demo's set-up: one process
# with both threads, ZeRO-0, fp32, 4 x 512 tokens per step. benchmarks/demo_train_speed.py measured it
# alone at 138.8 tokens/s (2026-12-03, with the loss's 64 MiB chunk floor), against
# 141.0 for a plain PyTorch fp32 loop in the same run. Change it here (one place): every step count follows.
TRAIN_TOKENS_PER_S = 135.0
# Scoring, measured in the medium demo of 2026-12-03 (2 cores, alone): held-out perplexity in fp32 at
# 350-480 tokens/s (bf16 autocast ran at 68, hence fp32 as eval.heldout's default on CPU); the held-out
# unstructured abstracts average 225 SmolLM2 tokens (45,050 / 200). lm-eval's hf model is compute-bound
# here: it scored the suite's 135,000 forward tokens per model (rct_sentence_role's five one-token
# choices share one forward; each next-sentence choice repeats its context) in 307-394 s, ~380/s, the
# same rate as a bare forward pass of SmolLM2 at 8 x 120 tokens. Per item, with the SmolLM2 tokenizer:
# rct_sentence_role 41 tokens, abstract_next_sentence 4 x (35 + 33) = 273 with CONTEXT_SENTENCES = 1
# in demo/evalsets.py (4 x (69 + 33) = 410 with two sentences).
EVAL_TOKENS_PER_S = 400.0
TOKENS_PER_ABSTRACT = 225
LMEVAL_TOKENS_PER_S = 370.0
LMEVAL_TOKENS_PER_ITEM = (41 + 273) / 2  # the suite's two families, per item
# Fixed costs of a training run (start-up, checkpoint, export), seconds: the medium demo's six runs took
# 1,460 s for 6 x 240 s of budgeted training at 135 tokens/s (trained at 134-141).
TRAIN_RUN_OVERHEAD_S = 25.0
EVAL_MODEL_OVERHEAD_S = 15.0
# An instruction-tuning run saves no checkpoint and exports nothing (its curve is what the demo keeps).
TUNING_RUN_OVERHEAD_S = 20.0
INSTRUCTION_DATA_S = 10.0  # building the instruction-tuning data (a few hundred chats, one tokenizer load)
# Synthesis: the medium demo of 2026-12-03 wrote for 64 texts x 160 new tokens (3 rounds, chain-major
# with prefix reuse) in 216 s greedy (5,296 tokens written) and in 312 s with repetition penalty 1.2 in
# the run measured after it (6,488 tokens: fewer outputs end early).
SYNTH_SECONDS_PER_TEXT_TOKEN = 312.0 / (64 * 160)


@dataclass(frozen=True)
class DemoSize:
    name: str
    tiny_model: bool  # a tiny random Llama with SmolLM2's tokenizer instead of SmolLM2-135M
    records: int  # PubMed records read (both shipped files stream until this many)
    heldout_fraction: float  # share of records (by PMID hash) kept out of every training set
    eval_texts: int  # held-out unstructured abstracts scored for perplexity
    eval_items: int  # lm-eval items per evaluation family (log-likelihood multiple choice)
    seeds: int  # continual pre-training runs per arm (data order differs; same tokens)
    general_instructions: int  # general (non-biomedical) instruction records offered to the domain recipe
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
    micro_batch: int  # continual pre-training sequences per rank and step
    pretrain_lr: float
    train_tokens_per_s: float = TRAIN_TOKENS_PER_S
    # Training processes: 1 (ZeRO-0, every thread in one process: the fastest trainer arm measured alone)
    # or 2 (ZeRO-3, one thread each: 0.67x of it here; the tiny smoke run keeps this multi-rank path).
    nproc: int = 1
    tune_batch: int = 2  # synthesizer tuning sequences per optimizer step (all ranks)
    min_steps: int = 2  # floor on steps (tiny: a few steps so the loss curves have points)
    # Stage 7, instruction tuning of every continually pre-trained model (the paper's tuning curve):
    instruction_examples: int = 160  # mined training-side examples not used for the synthesizer, as chats
    instruction_seconds: float = 24.0  # time budget of EACH tuning run (training only; same steps for all)
    instruction_seq_len: int = 512
    instruction_batch: int = 2  # sequences per optimizer step (all ranks)
    instruction_lr: float = 1e-4
    instruction_points: int = 2  # in-loop evaluations after the start (the curve has this many + 1 points)
    instruction_eval_items: int = 8  # suite items per family scored at each point (the first N of each)

    def steps_for(self, seconds: float, seq_len: int, global_batch: int) -> int:
        """Optimizer steps that fit ``seconds`` at the calibrated throughput (at least ``min_steps``)."""
        tokens = seconds * self.train_tokens_per_s
        return max(self.min_steps, math.floor(tokens / (seq_len * global_batch)))

    @property
    def global_batch(self) -> int:
        """Continual pre-training sequences per optimizer step (all ranks)."""
        return self.micro_batch * self.nproc

    @property
    def tune_steps(self) -> int:
        return self.steps_for(self.tune_seconds, self.tune_seq_len, self.tune_batch)

    @property
    def pretrain_steps(self) -> int:
        return self.steps_for(self.pretrain_seconds, self.seq_len, self.global_batch)

    @property
    def pretrain_tokens(self) -> int:
        return self.pretrain_steps * self.seq_len * self.global_batch

    @property
    def instruction_steps(self) -> int:
        return self.steps_for(self.instruction_seconds, self.instruction_seq_len, self.instruction_batch)

    @property
    def instruction_interval(self) -> int:
        """Steps between in-loop evaluations: ``instruction_points`` of them, the last at the end."""
        return max(1, math.ceil(self.instruction_steps / self.instruction_points))

    def estimate_seconds(self) -> dict[str, float]:
        """Wall time of each stage on this machine, from the calibrated throughputs (tiny: not meaningful)."""
        models = 1 + 2 * self.seeds
        per_model = (self.eval_texts * TOKENS_PER_ABSTRACT / EVAL_TOKENS_PER_S
                     + 2 * self.eval_items * LMEVAL_TOKENS_PER_ITEM / LMEVAL_TOKENS_PER_S + EVAL_MODEL_OVERHEAD_S)
        per_point = 2 * self.instruction_eval_items * LMEVAL_TOKENS_PER_ITEM / LMEVAL_TOKENS_PER_S
        # Training time from the steps a budget rounds down to, not from the budget itself.
        tune = self.tune_steps * self.tune_seq_len * self.tune_batch / self.train_tokens_per_s
        pretrain = self.pretrain_tokens / self.train_tokens_per_s
        instruction = self.instruction_steps * self.instruction_seq_len * self.instruction_batch / self.train_tokens_per_s
        return {
            "corpus": 15.0 + 0.006 * self.records,  # parsing, mining, 13-gram checks
            "synthesizer": tune + 60.0,
            "synthesis": self.synth_texts * self.synth_max_new_tokens * SYNTH_SECONDS_PER_TEXT_TOKEN,
            "pretrain": 2 * self.seeds * (pretrain + TRAIN_RUN_OVERHEAD_S),
            "evaluate": models * per_model,
            "instruction_tune": INSTRUCTION_DATA_S + 2 * self.seeds * (
                TUNING_RUN_OVERHEAD_S + instruction + (self.instruction_points + 1) * per_point),
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(tune_steps=self.tune_steps, pretrain_steps=self.pretrain_steps,
                 pretrain_tokens=self.pretrain_tokens, instruction_steps=self.instruction_steps)
        return d


SIZES: dict[str, DemoSize] = {
    # The smoke test's size: a tiny random model, a handful of steps, the same stages and code path
    # (two seeds per arm, so the intervals and the arm difference are computed as in larger sizes).
    "tiny": DemoSize(
        name="tiny", tiny_model=True, records=400, heldout_fraction=0.25, eval_texts=4, eval_items=8, seeds=2,
        general_instructions=200, tune_examples=36, tune_seconds=0, tune_seq_len=512, tune_lr=1e-3,
        synth_texts=4, rounds=2, synth_max_new_tokens=16, synth_max_model_len=512,
        pretrain_seconds=0, seq_len=128, micro_batch=2, pretrain_lr=1e-3, min_steps=6, nproc=2,
        instruction_examples=12, instruction_seconds=0, instruction_seq_len=512, instruction_lr=1e-3,
        instruction_points=2, instruction_eval_items=4,
    ),
    # The default, <= 20 minutes on 2 CPU cores, measured (estimate_seconds() is lower: it assumes the
    # calibrated 135 tokens/s; a slower day trains at ~100): tuning 260 s = 17 steps of 2 x 1,024 tokens
    # at lr 3e-4 (fewer steps or lr 1e-4 left SmolLM2 unable to write the <QUE>/<ANS> format); synthesis
    # of 8 texts; 2 seeds per arm of 2 steps each; 16 items per family and 12 abstracts for 5 models;
    # instruction tuning of the 4 models for 2 steps each, its curve scored on 4 items per family at 3
    # points. Same design as medium, NOT powered: the report says so.
    "small": DemoSize(
        name="small", tiny_model=False, records=3000, heldout_fraction=0.15, eval_texts=12, eval_items=16, seeds=2,
        general_instructions=3000, tune_examples=240, tune_seconds=260, tune_seq_len=1024, tune_lr=3e-4,
        synth_texts=8, rounds=2, synth_max_new_tokens=128, synth_max_model_len=2048,
        pretrain_seconds=45, seq_len=512, micro_batch=4, pretrain_lr=1e-4,
        instruction_examples=160, instruction_seconds=16, instruction_points=2, instruction_eval_items=4,
    ),
    # The powered size (minutes on a GPU): 3 seeds per arm,
    # 300 items per family, 200 held-out abstracts; tuning curves of 4 points on 50 items per family. 14,000 records with a 20% held-out share give
    # ~420 held-out structured abstracts (sentence-role items); 12,000 at 15% gave only 283.
    "medium": DemoSize(
        name="medium", tiny_model=False, records=14000, heldout_fraction=0.2, eval_texts=200, eval_items=300,
        seeds=3, general_instructions=6000, tune_examples=1000, tune_seconds=600, tune_seq_len=1024, tune_lr=3e-4,
        synth_texts=64, rounds=3, synth_max_new_tokens=160, synth_max_model_len=2048,
        pretrain_seconds=240, seq_len=512, micro_batch=4, pretrain_lr=1e-4,
        instruction_examples=600, instruction_seconds=90, instruction_points=3, instruction_eval_items=50,
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
