"""The settings of a synthesis run (:class:`SynthesizeConfig`) and which of them decide a unit's content."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import ClassVar

from megatron_ipt.config import ConfigError
from megatron_ipt.synth.engines import EngineConfig
from megatron_ipt.synth.rounds import SCHEDULES, RoundsConfig

# The settings that decide a unit's content (with the model): finished units made with others are refused.
CONTENT_KEYS = ("rounds", "max_new_tokens", "temperature", "top_p", "n", "seed", "max_pairs", "stop",
                "repetition_penalty", "batch_texts", "fraction", "text_key", "id_key")


@dataclass
class SynthesizeConfig:
    ALIASES: ClassVar[dict[str, str]] = {"inputs": "input", "shard_index": "task_index", "num_shards": "num_tasks"}

    input: list[str] | str = field(default_factory=list)  # files, folders or globs of {id, text} records
    output_dir: str = ""  # OUTPUT_DIR/<unit>.jsonl (+ .stats.json) per work unit, and units.plan
    engine: EngineConfig = field(default_factory=EngineConfig)
    rounds: int = 2  # M: 2 for general corpora, 3 for domain corpora
    max_new_tokens: int = 400  # tokens generated per round
    temperature: float = 0.0  # sampling temperature (0: greedy)
    top_p: float = 1.0  # nucleus sampling mass
    n: int = 1  # samples per text (their pairs are merged)
    seed: int = 0  # sampling seed
    max_pairs: int = 0  # cap on pairs per text; 0 = no cap
    stop: list[str] = field(default_factory=lambda: ["<CON>", "</CON>"])  # generation stops at these strings
    repetition_penalty: float = 1.0  # > 1 guards untuned/small synthesizers against loops
    batch_texts: int = 256  # texts per checkpointed batch
    schedule: str = "chain"  # chain: each batch of slots through all M rounds (its prefix still cached) | round: round by round (the reference's order); same output
    fraction: float = 1.0  # convert only this share of texts (chosen by a hash of the id)
    unit_texts: int = 10000  # lines (rows) of input per work unit: what array tasks share out; chains stay within one
    limit: int = 0  # read at most this many lines (rows) of each input file; 0 = all
    text_key: str = "text"  # record field holding the text
    id_key: str = "id"  # record field holding the id
    skip_bad_records: bool = False  # count and skip invalid JSON / missing text instead of failing
    task_index: int | None = None  # this task's index among num_tasks; unset: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN, else 0
    num_tasks: int | None = None  # tasks that share the work units; unset: $SLURM_ARRAY_TASK_COUNT, else 1
    start_over: bool = False  # discard output_dir's units made from other inputs or settings (one task, never in an array)
    progress: bool = True  # show a progress bar
    dry_run: bool = False  # plan only: texts and tokens per unit, GPU-hours, array size and the sbatch line; nothing generated
    plan_tokens_per_s: float = 0.0  # dry run: generated tokens/s of one task (GPU) to plan with; 0: measure on a sample (loads the model)
    plan_output_tokens: int = 0  # dry run: generated tokens per text to plan with; 0: the sample's, or max_new_tokens x n when plan_tokens_per_s is given
    plan_sample_texts: int = 256  # dry run: at most this many texts synthesized to measure throughput (when plan_tokens_per_s is 0)
    plan_sample_seconds: float = 60.0  # dry run: the measurement stops after the group of texts that passes this many seconds
    plan_sample_tokens: int = 16  # dry run: tokens generated per text and round while measuring
    plan_hours_per_task: float = 24.0  # dry run: wall-clock hours one array task may run (its sbatch --time)

    def validate(self) -> None:
        if isinstance(self.input, str):
            self.input = [self.input]
        if not self.input:
            raise ConfigError("input: give at least one input file, folder or glob")
        if not self.output_dir:
            raise ConfigError("output_dir: required")
        if not self.engine.model:
            raise ConfigError("engine.model: give the synthesizer's model directory")
        try:
            self.engine.validate()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.rounds < 1 or self.batch_texts < 1 or self.unit_texts < 1:
            raise ConfigError("rounds, batch_texts and unit_texts must be >= 1")
        if self.task_index is not None and self.task_index < 0:
            raise ConfigError(f"task_index must be 0 or more (unset: the array task's), got {self.task_index}")
        if self.num_tasks is not None and self.num_tasks < 1:
            raise ConfigError(f"num_tasks must be 1 or more (unset: the array's task count), got {self.num_tasks}")

    def rounds_config(self) -> RoundsConfig:
        return RoundsConfig(rounds=self.rounds, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                            top_p=self.top_p, n=self.n, seed=self.seed, max_pairs=self.max_pairs,
                            stop=tuple(self.stop), repetition_penalty=self.repetition_penalty)

    def fingerprint(self) -> str:
        """What decides a unit's content: a partial file from another setting is not reused."""
        spec = {k: getattr(self, k) for k in CONTENT_KEYS} | {"model": self.engine.model,
                                                              "max_model_len": self.engine.max_model_len}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def jsonable(value: object) -> object:
    """``value`` as it reads back from JSON (tuples as lists), to compare with recorded settings."""
    return json.loads(json.dumps(value))


def config_dict(cfg: SynthesizeConfig) -> dict:
    return dataclasses.asdict(cfg)
