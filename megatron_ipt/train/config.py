"""The training config: one dataclass tree read from YAML + ``--dotted.key=value`` overrides.

Every value lives here once; the DeepSpeed JSON in ``ds_configs/`` holds only DeepSpeed-specific
parts (ZeRO stage details, offload) and gets batch sizes, clipping and precision from this tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from megatron_ipt.config import ConfigError
from megatron_ipt.model.build import ModelConfig
from megatron_ipt.train.checkpoint import CheckpointConfig
from megatron_ipt.train.data import BatchPlan, DataConfig
from megatron_ipt.train.distributed import DEFAULT_RANK0_WAIT_MINUTES, DEFAULT_TIMEOUT_MINUTES
from megatron_ipt.train.downstream import EvalConfig
from megatron_ipt.train.optim import OptimConfig

# What the trainer writes in run_dir (metrics.py, trainer.py) and the Slurm scripts' per-job folders.
RUN_DIR_OUTPUTS = ("metrics.jsonl", "tensorboard", "config.yaml", "jobs")


@dataclass
class LoggingConfig:
    interval: int = 10  # steps between metric lines (metrics.jsonl, log, tensorboard)
    eval_interval: int = 500  # 0: no periodic evaluation
    eval_iters: int = 10  # micro-batches per rank per evaluation
    tensorboard: bool = True  # write RUN_DIR/tensorboard/ event files
    # Peak FLOP/s of one device for MFU; null: GPU spec table, or a measured CPU matmul.
    peak_flops_per_device: float | None = None


@dataclass
class ExportConfig:
    dir: str | None = None  # write an HF model directory here at the end of training
    dtype: Literal["bfloat16", "float32"] = "bfloat16"  # weights dtype of the exported model


@dataclass
class DistConfig:
    # Collective timeout: a rank waiting longer in one collective (NCCL watchdog, gloo) aborts the job.
    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES
    # How long the other ranks wait while rank 0 alone converts a checkpoint or exports the model.
    rank0_wait_minutes: float = DEFAULT_RANK0_WAIT_MINUTES


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"  # metrics.jsonl, tensorboard/ and the resolved config
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    steps: int = 1000  # optimizer steps
    micro_batch_size: int = 4  # samples per rank per forward
    global_batch_size: int = 256  # samples per optimizer step over all ranks
    # Training precision: bfloat16 (DeepSpeed bf16), float32, or bfloat16_autocast (fp32 weights and
    # optimizer, matmuls in bf16 under torch.autocast: the fastest on CPU). bf16/fp32 accepted.
    precision: Literal["bfloat16", "float32", "bfloat16_autocast"] = "bfloat16"
    ds_config: str = "ds_configs/zero2.json"  # DeepSpeed JSON (ZeRO stage, offload); shipped ones by name
    seed: int = 42  # seed of the model initialisation
    # Stop after this many steps in this process (testing preemption); 0: run to `steps`.
    stop_after: int = 0

    def validate(self) -> None:
        self.model.validate()
        self.eval.validate()
        if self.data.train in (None, "", []):
            raise ConfigError("data.train is required: an indexed-dataset prefix or blend (--data.train=PREFIX)")
        self.data.blends()  # spelling and weights, parsed once here; files are checked before compute
        for name in ("timeout_minutes", "rank0_wait_minutes"):
            if not getattr(self.dist, name) > 0:
                raise ConfigError(f"dist.{name} must be positive, got {getattr(self.dist, name)}")
        for name in ("steps", "micro_batch_size", "global_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size={self.micro_batch_size}"
            )
        if self.checkpoint.resume not in ("auto", "none") and not self.checkpoint.resume:
            raise ConfigError("checkpoint.resume must be auto, none or a checkpoint directory")
        self._check_export_dir()

    def _check_export_dir(self) -> None:
        """The export replaces its folder at the end: it must not be, hold or sit among the run's outputs."""
        if not self.export.dir:
            return
        export = Path(os.path.realpath(self.export.dir))
        clash = ""
        for key, value in (("run_dir", self.run_dir), ("checkpoint.dir", self.checkpoint.dir)):
            other = Path(os.path.realpath(value))
            if export == other:
                clash = f"is {key}={value}"
            elif export in other.parents:
                clash = f"contains {key}={value}"
            elif key == "checkpoint.dir" and other in export.parents:
                clash = f"lies inside {key}={value}, where checkpoints are listed and pruned"
            elif key == "run_dir" and other in export.parents and export.relative_to(other).parts[0] in RUN_DIR_OUTPUTS:
                clash = f"is {export.relative_to(other).parts[0]} of {key}={value}, which the trainer writes"
            if clash:
                raise ConfigError(f"export.dir={self.export.dir} {clash}; the export replaces its folder, so give "
                                  "it one of its own (run_dir/hf is fine)")

    def batch_plan(self, world_size: int) -> BatchPlan:
        """Micro/global batch, ranks and gradient accumulation: the one place they are derived."""
        per_step = self.micro_batch_size * world_size
        if world_size < 1 or self.global_batch_size % per_step:
            raise ConfigError(
                f"global_batch_size={self.global_batch_size} is not divisible by micro_batch_size "
                f"{self.micro_batch_size} x {world_size} ranks"
            )
        return BatchPlan(self.micro_batch_size, self.global_batch_size, world_size,
                         self.global_batch_size // per_step, self.steps)
