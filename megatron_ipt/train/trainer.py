"""The training entry point: config → launcher → data → model → DeepSpeed engine → loop.

``run(cfg)`` returns an exit status: 0 when training finished, 75 after a preemption checkpoint.
Every check that can reject the input (data prefixes, tokenizer vs embedding, sequence length,
checkpoint shape and data fingerprint) runs before the model is built.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_ipt.config import ConfigError, save_config
from megatron_ipt.dist_env import DistEnv, dist_env_from_environ
from megatron_ipt.io import OutputLocked, OutputRefused, check_replaceable_dir, output_lock
from megatron_ipt.log import get_logger, setup_logging
from megatron_ipt.model.attention import DOC_BACKENDS, packed_documents
from megatron_ipt.model.build import model_shape
from megatron_ipt.park import park_point
from megatron_ipt.train import checkpoint as ckpt
from megatron_ipt.train.config import TrainConfig
from megatron_ipt.train.data import TrainStream, check_data_tokenizer, check_datasets, dataset_ids
from megatron_ipt.train.distributed import init_distributed, wait_for_rank0
from megatron_ipt.train.ds_config import build_ds_config, zero_stage
from megatron_ipt.train.loss import attach_chunked_loss, backward_scale, global_token_count
from megatron_ipt.train.metrics import MetricsWriter, StepRecorder, model_flops_per_token, peak_flops
from megatron_ipt.train.preemption import EXIT_REQUEUE, PreemptionFlag

log = get_logger(__name__)


@dataclass
class Plan:
    """Everything decided before compute: validated data, resume point, DeepSpeed config."""

    dist: DistEnv
    ds_config: dict[str, Any]
    train: TrainStream
    valid: list[dict[str, Any]] | None
    tokenizer: Any
    checkpointer: ckpt.Checkpointer
    resume_from: Path | None = None
    resume_meta: ckpt.CheckpointMeta | None = None
    universal: bool = False
    callbacks: list[Any] = field(default_factory=list)  # before the first step and after every step


def _check_model_fits(cfg: TrainConfig, tokenizer: Any) -> None:
    hf = cfg.model.hf
    if cfg.data.seq_len > hf.max_position_embeddings:
        raise ConfigError(
            f"data.seq_len={cfg.data.seq_len} exceeds the model's max_position_embeddings={hf.max_position_embeddings}"
        )
    if tokenizer.vocab_size != hf.vocab_size:
        raise ConfigError(
            f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens but the model's embedding has "
            f"{hf.vocab_size} rows (model.vocab_size / init_from config.json)"
        )


def plan_run(cfg: TrainConfig, dist_env: DistEnv) -> Plan:
    from megatron_ipt.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.data.tokenizer)
    check_data_tokenizer(cfg.data, tokenizer)  # data tokenized with another tokenizer: refused first
    _check_model_fits(cfg, tokenizer)
    ds_config = build_ds_config(cfg, dist_env.world_size)
    checkpointer = cfg.checkpoint.build()
    resume_from, meta = checkpointer.resume_point() or (None, None)
    batch = cfg.batch_plan(dist_env.world_size)
    for where, blend in cfg.data.blends().items():
        check_datasets(blend, where, tokenizer.vocab_size)
    train = cfg.data.build_train(batch, dist_env.rank, meta.consumed_samples if meta else 0)
    valid = None
    if cfg.data.valid_blend is not None and cfg.logging.eval_interval:
        valid = cfg.data.build_valid(batch, cfg.logging.eval_iters, dist_env.rank)
    if meta is not None and resume_from is not None:
        this_run = ckpt.CheckpointMeta(
            step=0, global_batch_size=cfg.global_batch_size, world_size=dist_env.world_size,
            model_shape=_shape_of_config(cfg), data_fingerprint=train.fingerprint, data_spec=train.loader.spec,
            tokenizer=cfg.data.tokenizer, tokenizer_fingerprint=tokenizer.fingerprint())
        checkpointer.check_resumable(resume_from, meta, this_run)
    downstream = cfg.eval.build(cfg.data.tokenizer, cfg.steps, lockstep=zero_stage(ds_config) == 3)
    return Plan(dist_env, ds_config, train, valid, tokenizer, checkpointer, resume_from, meta,
                meta is not None and meta.world_size != dist_env.world_size,
                [cb for cb in (downstream,) if cb is not None])


def _shape_of_config(cfg: TrainConfig) -> dict[str, Any]:
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        return model_shape(AutoModelForCausalLM.from_config(cfg.model.hf_copy()))


def weights_dtype(precision: str) -> torch.dtype:
    """The dtype the model is built (or a checkpoint loaded) in: bf16 where DeepSpeed trains bf16
    weights; fp32 for fp32 and for autocast (fp32 weights, bf16 matmuls)."""
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


class Trainer:
    """The training loop over its parts, all built in ``__init__``."""

    # The parts the loop drives.
    engine: Any  # DeepSpeed engine: the model, its optimizer and LR schedule
    data: TrainStream  # training micro-batches, resumable at a sample count
    checkpointer: ckpt.Checkpointer
    metrics: MetricsWriter  # rank-0 sink: metrics.jsonl, TensorBoard, console
    recorder: StepRecorder  # train records: throughput, FLOPs/MFU, memory, tokens per dataset
    callbacks: list[Any]  # called before the first step and after every step (in-loop evaluation)
    # The loop's state, saved in every checkpoint.
    step: int
    tokens_per_dataset: dict[str, int]

    def __init__(self, cfg: TrainConfig, plan: Plan) -> None:
        self.cfg = cfg
        self.plan = plan
        self.rank = plan.dist.rank
        self.world = plan.dist.world_size
        # init_distributed chose the rank's device (local rank modulo the visible devices)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.dtype = torch.bfloat16 if cfg.precision in ("bfloat16", "bfloat16_autocast") else torch.float32
        # fp32 master weights and optimizer, matmuls in bf16: on CPU, DeepSpeed's bf16 mode trained at
        # half the speed of fp32, while autocast in a plain loop ran faster than both.
        self.autocast = cfg.precision == "bfloat16_autocast"
        self.engine, self.n_params, self.shape = self._build_engine()
        hf = self.engine.module.config
        self.attention = hf._attn_implementation
        self.data = plan.train
        self.grad_accum = plan.train.grad_accum
        self.checkpointer = plan.checkpointer
        self.callbacks = plan.callbacks
        self.step = 0
        self.tokens_per_dataset = {}
        if plan.resume_from is not None and plan.resume_meta is not None:
            self.checkpointer.load(self.engine, plan.resume_from, plan.universal)
            self.step = plan.resume_meta.step
            self.tokens_per_dataset = dict(plan.resume_meta.tokens_per_dataset)
        self.metrics = MetricsWriter(Path(cfg.run_dir), self.rank == 0, cfg.logging.tensorboard)
        # Steps after the checkpoint are redone: drop their records so no step is logged twice (a run
        # without a checkpoint redoes every step, step 0's in-loop evaluation included).
        self.metrics.truncate_after(self.step if plan.resume_from is not None else -1)
        self.recorder = StepRecorder(
            self.metrics, model_flops_per_token(hf, self.n_params, cfg.data.seq_len),
            peak_flops(cfg.logging.peak_flops_per_device, self.device.type, self.dtype),
            self.world, self.device, cfg.steps)

    def _build_engine(self) -> tuple[Any, int, dict[str, Any]]:
        """The model (in its weights' dtype, with the chunked loss) inside a DeepSpeed engine, with the
        model's parameter count and shape (read before DeepSpeed wraps it)."""
        import deepspeed

        cfg, plan = self.cfg, self.plan
        ds_config = plan.ds_config
        if plan.universal:
            ds_config = {**ds_config, "checkpoint": {"load_universal": True}}
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self._hf_ds_config = None
        if zero_stage(ds_config) == 3:
            from transformers.integrations import HfDeepSpeedConfig

            # Kept alive on self: while it exists, from_config/from_pretrained build partitioned.
            self._hf_ds_config = HfDeepSpeedConfig(ds_config)
        # In the weights' dtype, on the device (below ZeRO-3; partitioned at construction there): no
        # rank holds an fp32 copy of a bf16 model on the host.
        model = cfg.model.build(self.device.type, dtype=weights_dtype(cfg.precision), compute_dtype=self.dtype,
                                device=None if self._hf_ds_config is not None else self.device)
        attach_chunked_loss(model)  # the engine's forward returns the loss sum; no full logits
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        shape = model_shape(model)
        optimizer, scheduler = cfg.optim.build(model, cfg.steps, self.device.type, ds_config)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=ds_config)
        return engine, n_params, shape

    # -- one optimizer step -------------------------------------------------------------------
    def _model_inputs(self, mb: dict[str, Any]) -> dict[str, Any]:
        """Model keywords of one micro-batch; document boundaries built here once, for every layer."""
        # non_blocking: a blocking host-to-device copy waits for all queued GPU work (a launch gap)
        inputs: dict[str, Any] = {"input_ids": mb["input_ids"].to(self.device, non_blocking=True),
                                  "position_ids": mb["position_ids"].to(self.device, non_blocking=True)}
        if self.attention in DOC_BACKENDS:  # from the loader's host-side cu_seqlens: no device sync
            inputs["packed_documents"] = packed_documents(self.attention, mb["position_ids"], mb.get("cu_seqlens"),
                                                          mb.get("max_seqlen"), self.device)
        return inputs

    def _forward_loss_sum(self, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        # Inside the engine's forward, so DeepSpeed's hooks see the loss as the module's output.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.engine(**self._model_inputs(mb), attention_mask=None, use_cache=False,
                               labels=mb["labels"].to(self.device, non_blocking=True),
                               loss_mask=mb["loss_mask"].to(self.device, non_blocking=True))

    def train_step(self) -> dict[str, Any]:
        """One optimizer step; loss and grad norm stay on the device (read at logging steps only)."""
        micro = self.data.next_step()
        lr = float(self.engine.get_lr()[0])  # the LR this step's update uses
        n_tokens = global_token_count(micro, self.device)
        scale = backward_scale(self.grad_accum, self.world)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for mb in micro:
            s = self._forward_loss_sum(mb)
            self.engine.backward(s / n_tokens.to(s.dtype).clamp(min=1) * scale)
            self.engine.step()
            loss_sum += s.detach().to(torch.float64)
            for ds_id, row in zip(dataset_ids(mb).tolist(), mb["input_ids"], strict=True):
                name = self.data.dataset_names[ds_id]
                self.tokens_per_dataset[name] = self.tokens_per_dataset.get(name, 0) + row.numel() * self.world
        if dist.is_initialized():
            dist.all_reduce(loss_sum)
        self.step += 1
        grad_norm = self.engine.get_global_grad_norm()
        return {
            "loss": loss_sum / n_tokens.clamp(min=1),
            "grad_norm": grad_norm.detach().clone() if isinstance(grad_norm, torch.Tensor) else grad_norm,
            "lr": lr,
            "tokens": float(sum(mb["input_ids"].numel() for mb in micro) * self.world),
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        assert self.plan.valid is not None
        self.engine.eval()
        micro = self.plan.valid
        n_tokens = global_token_count(micro, self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for mb in micro:
            total += self._forward_loss_sum(mb).to(torch.float64)
        if dist.is_initialized():
            dist.all_reduce(total)
        self.engine.train()
        loss = float(total / n_tokens.clamp(min=1))
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": float(n_tokens)}

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self) -> Path:
        meta = ckpt.CheckpointMeta(
            step=self.step, consumed_samples=self.data.consumed_samples, global_batch_size=self.cfg.global_batch_size,
            world_size=self.world, zero_stage=zero_stage(self.plan.ds_config), model_shape=self.shape,
            data_fingerprint=self.data.fingerprint, data_spec=self.data.loader.spec, tokenizer=self.cfg.data.tokenizer,
            tokenizer_fingerprint=self.plan.tokenizer.fingerprint(), hf_config=self.engine.module.config.to_dict(),
            tokens_per_dataset=dict(self.tokens_per_dataset))
        return self.checkpointer.save(self.engine, meta)

    def close(self) -> None:
        """Release the ZeRO-3 construction context so later model builds (export) are plain."""
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        self.metrics.close()
        self._hf_ds_config = None
        unset_hf_deepspeed_config()

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, preemption: PreemptionFlag) -> int:
        """Train to ``cfg.steps``; returns the exit status (``EXIT_REQUEUE`` after a preemption)."""
        cfg = self.cfg
        signal_every = max(1, cfg.checkpoint.signal_check_interval)
        for callback in self.callbacks:  # before the clock starts: not training time
            callback.pre_train(self)
        self.recorder.start(self.step)
        steps_this_run = 0
        last_saved = self.step if self.plan.resume_from is not None else -1
        while self.step < cfg.steps:
            if steps_this_run % signal_every == 0 and preemption.any_rank():  # a collective and a host sync
                return self._requeue(saved=last_saved == self.step)
            self.recorder.add(self.train_step())
            steps_this_run += 1
            if self._due(max(1, cfg.logging.interval)):
                self.recorder.write(self.step, self.data.consumed_samples, self.tokens_per_dataset)
            park_point("train_step", self.step)  # test-only (see megatron_ipt.park); inert unless set
            with self.recorder.paused():  # evaluation, callbacks and checkpoints are not training time
                if self.plan.valid is not None and self._due(cfg.logging.eval_interval):
                    self.metrics.write(self.step, "eval", self.evaluate())
                for callback in self.callbacks:
                    callback.post_step(self)
                if cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0:
                    self.save()
                    last_saved = self.step
            if cfg.stop_after and steps_this_run >= cfg.stop_after and self.step < cfg.steps:
                log.info("stop_after=%d reached at step %d", cfg.stop_after, self.step)
                return 0
        if cfg.checkpoint.save_at_end and last_saved != self.step:
            self.save()
        return 0

    def _requeue(self, saved: bool) -> int:
        """Preempted: checkpoint this step (unless saved already) and ask to be run again."""
        if not saved:
            self.save()
        log.warning("preempted at step %d: checkpoint saved, exiting %d", self.step, EXIT_REQUEUE)
        return EXIT_REQUEUE

    def _due(self, interval: int) -> bool:
        """Every ``interval`` steps and at the last step; never when ``interval`` is 0 (off)."""
        return interval != 0 and (self.step % interval == 0 or self.step == self.cfg.steps)


def run(cfg: TrainConfig) -> int:
    """Train per ``cfg`` in this process (one rank of the job); returns the process exit status."""
    dist_env = dist_env_from_environ()
    setup_logging(dist_env.rank)
    with contextlib.ExitStack() as stack:
        if dist_env.rank == 0:  # a second job into the same checkpoints would tear them: refused
            key = "checkpoint.dir"
            try:
                stack.enter_context(output_lock(Path(cfg.checkpoint.dir)))
                key = "run_dir"
                Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)  # unwritable: said now, not after init
                if cfg.export.dir:  # replaced at the end: a folder the export did not write is refused now
                    check_replaceable_dir(cfg.export.dir)
            except OutputRefused as err:
                raise ConfigError(f"export.dir: {err}") from None
            except OutputLocked as err:
                raise ckpt.CheckpointError(f"checkpoint.dir: {err}") from None
            except OSError as err:
                raise ConfigError(f"{key}: cannot write {err.filename or ''}: {err.strerror or err}") from None
        return _run(cfg, dist_env)


def _run(cfg: TrainConfig, dist_env: DistEnv) -> int:
    preemption = PreemptionFlag()
    plan = plan_run(cfg, dist_env)  # every input check, before torch.distributed and DeepSpeed start
    plan.dist = init_distributed(timeout_minutes=cfg.dist.timeout_minutes,
                                 rank0_wait_minutes=cfg.dist.rank0_wait_minutes)
    if dist_env.rank == 0:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(cfg.run_dir) / "config.yaml")
    trainer = Trainer(cfg, plan)
    status = trainer.fit(preemption)
    trainer.close()
    if status == 0 and cfg.export.dir:
        latest = plan.checkpointer.latest()
        if latest is None:
            raise ckpt.CheckpointError("export.dir is set but no checkpoint was saved (checkpoint.save_at_end=false?)")
        if dist_env.rank == 0:  # reads files only; no collective inside
            from megatron_ipt.train.export import export_checkpoint

            export_checkpoint(latest, cfg.export.dir, dtype=cfg.export.dtype)
        wait_for_rank0()
    if dist.is_initialized():
        dist.destroy_process_group()
    return status
