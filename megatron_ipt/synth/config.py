"""The settings of a synthesis run (:class:`SynthesizeConfig`) and which of them decide a unit's content."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import ClassVar

from megatron_ipt.config import ConfigError
from megatron_ipt.synth.engine_types import SamplingParams
from megatron_ipt.synth.engines import EngineConfig
from megatron_ipt.synth.rounds import SCHEDULES, RoundsConfig, synthesis_sampling

SAMPLING_KEYS = tuple(f.name for f in dataclasses.fields(SamplingParams))  # also top-level keys: --temperature

# The settings that decide a unit's content (with the model): finished units made with others are
# refused. The sampling ones go by their own names (``temperature``, not ``sampling.temperature``).
CONTENT_KEYS = ("rounds", *SAMPLING_KEYS, "max_pairs", "batch_texts", "fraction", "text_key", "id_key")


@dataclass
class SynthesizeConfig:
    ALIASES: ClassVar[dict[str, str]] = {"inputs": "input", "shard_index": "task_index", "num_shards": "num_tasks",
                                         **{key: f"sampling.{key}" for key in SAMPLING_KEYS}}

    input: list[str] | str = field(default_factory=list)  # files, folders or globs of {id, text} records
    output_dir: str = ""  # OUTPUT_DIR/<unit>.jsonl (+ .stats.json) per work unit, and units.plan
    engine: EngineConfig = field(default_factory=EngineConfig)
    rounds: int = 2  # M: 2 for general corpora, 3 for domain corpora
    sampling: SamplingParams = field(default_factory=synthesis_sampling)  # how each round decodes
    max_pairs: int = 0  # cap on pairs per text; 0 = no cap
    batch_texts: int = 256  # texts per checkpointed batch
    schedule: str = "chain"  # chain: each batch of slots through all M rounds (its prefix still cached) | round: round by round (the reference's order); same output
    fraction: float = 1.0  # convert only this share of texts (chosen by a hash of the id and sampling.seed)
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
        return RoundsConfig(rounds=self.rounds, max_pairs=self.max_pairs, sampling=self.sampling)

    def fingerprint(self) -> str:
        """What decides a unit's content: a partial file from another setting is not reused."""
        spec = content_settings(jsonable(config_dict(self))) | {"model": self.engine.model,
                                                                "max_model_len": self.engine.max_model_len}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def content_settings(settings: dict) -> dict:
    """The ``CONTENT_KEYS`` of a config dict (:func:`config_dict`'s, or the settings a unit's stats
    record, where the sampling keys may be top-level), the sampling ones by their own names."""
    flat = settings | (settings.get("sampling") if isinstance(settings.get("sampling"), dict) else {})
    return {k: flat[k] for k in CONTENT_KEYS if k in flat}


def jsonable(value: object) -> object:
    """``value`` as it reads back from JSON (tuples as lists), to compare with recorded settings."""
    return json.loads(json.dumps(value))


def config_dict(cfg: SynthesizeConfig) -> dict:
    return dataclasses.asdict(cfg)
