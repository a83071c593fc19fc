"""The training config: one dataclass tree read from YAML + ``--dotted.key=value`` overrides.

Every value lives here once; the DeepSpeed JSON in ``ds_configs/`` holds only DeepSpeed-specific
parts (ZeRO stage details, offload) and gets batch sizes, clipping and precision from this tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from megatron_ipt.config import ConfigError
from megatron_ipt.data.blend import Blend
from megatron_ipt.model.config import ModelConfig

if TYPE_CHECKING:
    from megatron_ipt.train.data import TrainStream


@dataclass(frozen=True)
class BatchPlan:
    """The batch arithmetic of a run on ``world`` ranks, computed and checked once."""

    micro_batch: int  # samples per rank per forward
    global_batch: int  # samples per optimizer step over all ranks
    world: int  # data-parallel ranks
    grad_accum: int  # micro-batches per rank per optimizer step
    steps: int  # optimizer steps of the whole run

    @property
    def total_samples(self) -> int:
        return self.steps * self.global_batch


@dataclass
class DataConfig:
    # Blend of indexed-dataset prefixes: a prefix, "0.7 a 0.3 b", [[0.7, a], [0.3, b]] or [{weight, prefix}, ...].
    train: Any = None
    # Held-out blend for periodic evaluation (null: no evaluation).
    valid: Any = None
    seq_len: int = 2048  # tokens per training sample
    tokenizer: str = "mistral"  # the tokenizer the data was built with (mistral, .model, HF dir, .gguf)
    allow_tokenizer_mismatch: bool = False  # train on datasets whose recorded tokenizer differs (warned)
    seed: int = 1234  # seed of the blend and sample shuffling
    # Where the data core caches blend/packing indices (null: next to the first train prefix).
    cache_dir: str | None = None
    num_workers: int = 0  # DataLoader worker processes per rank

    def build_train(self, batch: BatchPlan, rank: int, consumed_samples: int = 0) -> TrainStream:
        """This rank's stream of optimizer steps over ``train``, from ``consumed_samples`` on."""
        from megatron_ipt.train.data import TrainStream

        return TrainStream.from_config(self, batch, rank, consumed_samples)

    def build_valid(self, batch: BatchPlan, eval_iters: int, rank: int) -> list[dict[str, Any]]:
        """This rank's fixed held-out micro-batches over ``valid`` (the same at every evaluation)."""
        from megatron_ipt.train.data import eval_batches

        return eval_batches(self, batch, eval_iters, rank)


@dataclass
class OptimConfig:
    lr: float = 3e-4  # peak learning rate (after warm-up)
    min_lr: float = 3e-5  # cosine decay floor
    warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not on norms and biases)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # global gradient-norm clip


@dataclass
class CheckpointConfig:
    dir: str = "checkpoints"  # checkpoint directory (relative: under the cwd)
    interval: int = 1000  # steps between saves (0: only at the end and on preemption)
    keep_last: int = 3  # checkpoints kept; older ones are deleted
    resume: str = "auto"  # auto | none | a checkpoint tag directory
    allow_data_change: bool = False  # resume although data, tokenizer or sample count differ (changes logged)
    save_at_end: bool = True  # save a checkpoint after the last step


@dataclass
class LoggingConfig:
    interval: int = 10  # steps between metric lines (metrics.jsonl, log, tensorboard)
    eval_interval: int = 500  # 0: no periodic evaluation
    eval_iters: int = 10  # micro-batches per rank per evaluation
    tensorboard: bool = True  # write RUN_DIR/tensorboard/ event files
    # Peak FLOP/s of one device for MFU; null: GPU spec table, or a measured CPU matmul.
    peak_flops_per_device: float | None = None


@dataclass
class EvalConfig:
    # Steps between in-loop downstream evaluations (0: none); the last step is always scored.
    downstream_interval: int = 0
    # lm-eval tasks scored on the model being trained: task folders (e.g. the demo's suite) or task names
    # available offline. Each score is a curve in metrics.jsonl and TensorBoard ("downstream" records).
    downstream_tasks: list[str] = field(default_factory=list)
    downstream_limit: int | None = None  # score only the first N items of each task (null: all)
    downstream_batch_size: int = 8  # log-likelihood requests per forward pass

    def validate(self) -> None:
        if self.downstream_interval < 0:
            raise ConfigError(f"eval.downstream_interval must be 0 (off) or positive, got {self.downstream_interval}")
        if self.downstream_interval and not self.downstream_tasks:
            raise ConfigError("eval.downstream_interval is set but eval.downstream_tasks is empty")

    def build(self, tokenizer_spec: str, total_steps: int) -> Any:
        """The in-loop evaluator callback, or None when switched off."""
        if not self.downstream_interval:
            return None
        from megatron_ipt.train.downstream import DownstreamEvaluator

        return DownstreamEvaluator(self, tokenizer_spec, total_steps)


@dataclass
class ExportConfig:
    dir: str | None = None  # write an HF model directory here at the end of training
    dtype: Literal["bfloat16", "float32"] = "bfloat16"  # weights dtype of the exported model


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"  # metrics.jsonl, tensorboard/ and the resolved config
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
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
        Blend.parse(self.data.train, "data.train")  # spelling and weights; files are checked where read
        Blend.optional(self.data.valid, "data.valid")
        for name in ("steps", "micro_batch_size", "global_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size={self.micro_batch_size}"
            )
        if self.checkpoint.resume not in ("auto", "none") and not self.checkpoint.resume:
            raise ConfigError("checkpoint.resume must be auto, none or a checkpoint directory")

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
