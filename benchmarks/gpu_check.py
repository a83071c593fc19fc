"""One prepared device check of the GPU path: attention, training throughput and MFU, synthesis speed.

Parts (each runs in its own process under its own time limit; the JSON is rewritten after every
part and every training run, so a part that fails or overruns loses nothing else):
  a. each document-masked attention backend, the model built with it from the start, vs ``doc_sdpa``
     on the device (bf16 on CUDA): max abs difference of packed vs per-document logits (500M model,
     one packed row of 4,096 tokens), and attention forward+backward time at seq 4,096;
  b. ``torchrun -m megatron_ipt.train`` with ``configs/pretrain_500M.yaml`` shortened by overrides, 30
     steps on one device in bf16: ZeRO-2 once per attention backend the device trains with, and
     ZeRO-3 with ``auto``: tokens/s, MFU against the device's measured bf16 matmul peak, peak memory;
  c. HF-engine synthesis of 64 PubMed abstracts, M=2 rounds, with SmolLM2-135M: generated tokens/s.

Every path (material, work, report) is resolved against the directory it is started from, so the
check runs from any directory.

Material (PubMed abstracts, a Mistral-tokenized indexed dataset, the Mistral tokenizer file, SmolLM2's
config and tokenizer) is gathered where the project's full dependencies are installed, so the GPU
machine needs only CUDA torch, transformers and DeepSpeed (wheels carried along; benchmarks/README.md):

    python benchmarks/gpu_check.py --prepare gpu_material            # CPU side, ~1 minute
    python benchmarks/gpu_check.py --material gpu_material --out gpu_check.json   # GPU, <= 8 minutes
    python benchmarks/gpu_check.py --device cpu --tiny --out check.json            # CPU, end to end

Without SmolLM2's weights in the material (``--with-weights`` adds the 270 MB safetensors) part c
decodes with randomly initialized weights of SmolLM2-135M's shape: the same work per token, recorded as
such in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

FULL = {"attn_seq": 4096, "docs": [1000, 37, 1500, 559, 1000], "steps": 30, "micro": 8, "log_every": 10,
        "seq_len": 2048, "synth_texts": 64, "new_tokens": 400, "train_texts": 600, "timed": 10,
        "limits_s": {"a": 100, "b": 300, "c": 80}, "run_limit_s": 150}  # 8 minutes at most in all
TINY = {"attn_seq": 256, "docs": [60, 3, 100, 93], "steps": 4, "micro": 2, "log_every": 2, "seq_len": 128,
        "synth_texts": 4, "new_tokens": 8, "train_texts": 60, "timed": 2,
        "limits_s": {"a": 300, "b": 600, "c": 300}, "run_limit_s": 280}
PARTS = {"a": "attention", "b": "training", "c": "synthesis"}
TINY_MODEL = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}
# --tiny decodes with SmolLM2's tokenizer and vocabulary but a 2-layer body (random weights).
TINY_SYNTH = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16}
SMOLLM2_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "special_tokens_map.json")


# -- material -------------------------------------------------------------------------------------
def prepare(material: Path, n_train: int, n_synth: int, with_weights: bool) -> Path:
    """Abstracts, the tokenized training corpus, the Mistral tokenizer file and SmolLM2's files."""
    from megatron_ipt.data.preprocess import preprocess
    from megatron_ipt.io import atomic_write_json
    from megatron_ipt.model.hf_import import smollm2_hf_dir
    from megatron_ipt.tokenizer import load_tokenizer, mistral_model_path
    from megatron_ipt.tuning.pubmed import iter_pubmed_records, sections_text

    material.mkdir(parents=True, exist_ok=True)
    texts = [sections_text(r.sections) for r in iter_pubmed_records(limit=n_train + n_synth)]
    if len(texts) < n_train + n_synth:
        raise SystemExit(f"only {len(texts)} PubMed abstracts found, {n_train + n_synth} needed")
    (material / "synth.jsonl").write_text(
        "".join(json.dumps({"id": f"pm{i}", "text": t}) + "\n" for i, t in enumerate(texts[:n_synth])))
    train_jsonl = material / "train.jsonl"
    train_jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[n_synth:]))
    shutil.copyfile(mistral_model_path(), material / "tokenizer.model")
    preprocess(train_jsonl, material / "train", load_tokenizer("mistral"), workers=0, prepend_bos=True,
               append_eod=True, dataset_suffix=False, progress=False)
    train_jsonl.unlink()
    src = smollm2_hf_dir()
    (material / "smollm2").mkdir(exist_ok=True)
    names = [*SMOLLM2_FILES, *(["model.safetensors"] if with_weights else [])]
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, material / "smollm2" / name)
    atomic_write_json(material / "material.json", {"synth_texts": n_synth, "train_texts": n_train,
                                                   "smollm2_weights": with_weights, "train_prefix": "train"})
    return material


# -- a: attention ---------------------------------------------------------------------------------
def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _model_config(tiny: bool, seq: int):
    from megatron_ipt.config import load_config
    from megatron_ipt.train.config import TrainConfig

    overrides = ["--data.train=x", f"--model.max_position_embeddings={max(seq, 2048)}"]
    if tiny:
        overrides += [f"--model.{k}={v}" for k, v in TINY_MODEL.items()] + ["--model.expected_parameters=null",
                                                                              "--model.vocab_size=500"]
    return load_config(TrainConfig, str(ROOT / "configs" / "pretrain_500M.yaml"), overrides).model


def check_attention(device: str, dtype_name: str, sizes: dict, tiny: bool) -> dict[str, Any]:
    import torch

    from megatron_ipt.model import attention
    from megatron_ipt.model.build import build_model

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    seq, docs = sizes["attn_seq"], sizes["docs"]
    assert sum(docs) == seq
    cfg = _model_config(tiny, seq)

    def built(name: str) -> Any:
        """The model built with ``name`` from the start (what training does), the same weights each time."""
        cfg.attention = name
        torch.manual_seed(0)
        return build_model(cfg, device, dtype=dtype, compute_dtype=dtype, device=device).eval()

    gen = torch.Generator().manual_seed(1)
    pieces = [torch.randint(3, cfg.vocab_size, (n,), generator=gen) for n in docs]
    ids = torch.cat(pieces)[None].to(device)
    pos = torch.cat([torch.arange(n) for n in docs])[None]
    cu = torch.tensor([0, *docs]).cumsum(0).to(torch.int32)
    out: dict[str, Any] = {"auto": attention.resolve_backend("auto", device, dtype), "seq": seq,
                           "documents": len(docs), "dtype": dtype_name, "backends": {}}
    with torch.no_grad():
        model = built("doc_sdpa")
        reference = torch.cat([model(input_ids=p[None].to(device), use_cache=False).logits[0].float() for p in pieces])
        del model
    for name in attention_backends(device, dtype):
        row: dict[str, Any] = {}
        try:
            model = built(name)
            row["built_with"] = model.config._attn_implementation
            with torch.no_grad():
                packed = attention.packed_documents(name, pos, cu, max(docs), device)
                logits = model(input_ids=ids, position_ids=pos.to(device), attention_mask=None, use_cache=False,
                               packed_documents=packed).logits[0].float()
            row["max_abs_diff"] = float((logits - reference).abs().max())
            hf = model.config
            del model
            row.update(_time_attention(name, device, dtype, hf, pos, cu, max(docs), sizes["timed"]))
        except Exception as err:  # noqa: BLE001 - one backend failing must not hide the others
            row["error"] = f"{type(err).__name__}: {err}"[:300]
        out["backends"][name] = row
    if "fwd_bwd_ms" in out["backends"].get("doc_varlen", {}):
        out["varlen_gqa"] = varlen_gqa_ways(device, dtype, hf, pos, cu, max(docs), sizes["timed"])
    return out


def attention_backends(device: str, dtype: Any) -> list[str]:
    """The document-masked backends this device and dtype can run, the fastest candidates first."""
    from megatron_ipt.model import attention

    names = []
    if device == "cuda" and dtype in attention.HALF and attention.flash_attn_available():
        names.append("doc_fa_varlen")
    if device == "cuda" and not attention.varlen_missing(True, dtype):
        names.append("doc_varlen")
    return [*names, "doc_flex", "doc_sdpa"]


def _time_attention(name: str, device: str, dtype, hf, pos, cu, max_len: int, timed: int) -> dict[str, float]:
    """Forward(+backward where the device has one) time of the attention op alone, in ms."""
    from megatron_ipt.model import attention

    fn = {"doc_sdpa": attention.doc_sdpa_forward, "doc_flex": attention.doc_flex_forward,
          "doc_varlen": attention.doc_varlen_forward, "doc_fa_varlen": attention.doc_fa_varlen_forward}[name]
    docs = attention.packed_documents(name, pos, cu, max_len, device)
    backward = not (name == "doc_flex" and device == "cpu")  # torch has no FlexAttention backward on CPU
    scale = hf.head_dim**-0.5
    return _time_op(lambda q, k, v: fn(None, q, k, v, None, scaling=scale, packed_documents=docs)[0],
                    device, dtype, hf, pos.shape[1], timed, backward)


def _time_op(op: Any, device: str, dtype, hf, s: int, timed: int, backward: bool) -> dict[str, float]:
    import torch

    d = hf.head_dim
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, hf.num_attention_heads, s, d, generator=gen).to(device, dtype)
    k = torch.randn(1, hf.num_key_value_heads, s, d, generator=gen).to(device, dtype)
    v = torch.randn(1, hf.num_key_value_heads, s, d, generator=gen).to(device, dtype)
    q, k, v = (t.requires_grad_(backward) for t in (q, k, v))

    def once() -> None:
        with torch.enable_grad() if backward else torch.no_grad():
            o = op(q, k, v)
            if backward:
                o.float().sum().backward()

    for _ in range(2):  # warm-up (FlexAttention compiles here on CUDA)
        once()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(timed):
        once()
    _sync(device)
    ms = (time.perf_counter() - t0) / timed * 1e3
    return {"fwd_bwd_ms" if backward else "fwd_ms": ms}


def varlen_gqa_ways(device: str, dtype, hf, pos, cu, max_len: int, timed: int) -> dict[str, Any]:
    """torch's varlen kernel with grouped KV heads, two ways: KV heads repeated to the query heads
    (what doc_varlen does without ``enable_gqa``), and KV heads passed as they are (with
    ``enable_gqa=True`` where the keyword exists; bare on torch 2.11, whose flash kernel may take them)."""
    import inspect

    import torch
    from torch.nn.attention.varlen import varlen_attn

    has_flag = "enable_gqa" in inspect.signature(varlen_attn).parameters
    cu_dev, scale, h = cu.to(device), hf.head_dim**-0.5, hf.num_attention_heads

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(t.shape[0] * t.shape[2], t.shape[1], t.shape[3])

    def repeated(q, k, v):  # noqa: ANN001, ANN202
        rep = h // k.shape[1]
        return varlen_attn(flat(q), flat(k.repeat_interleave(rep, 1)), flat(v.repeat_interleave(rep, 1)), cu_dev,
                           cu_dev, max_len, max_len, scale=scale, window_size=(-1, 0))

    def grouped(q, k, v):  # noqa: ANN001, ANN202
        return varlen_attn(flat(q), flat(k), flat(v), cu_dev, cu_dev, max_len, max_len, scale=scale,
                           window_size=(-1, 0), **({"enable_gqa": True} if has_flag else {}))

    out: dict[str, Any] = {"enable_gqa_keyword": has_flag}
    reference = None
    for way, op in (("repeat_kv", repeated), ("kv_heads_as_they_are", grouped)):
        try:
            row = _time_op(op, device, dtype, hf, pos.shape[1], timed, True)
            gen = torch.Generator().manual_seed(3)
            q, k, v = (torch.randn(1, n, pos.shape[1], hf.head_dim, generator=gen).to(device, dtype)
                       for n in (h, hf.num_key_value_heads, hf.num_key_value_heads))
            with torch.no_grad():
                result = op(q, k, v).float()
            reference = result if reference is None else reference
            row["max_abs_diff_vs_repeat"] = float((result - reference).abs().max())
        except Exception as err:  # noqa: BLE001 - a way this torch does not take is a finding, not a failure
            row = {"unsupported": f"{type(err).__name__}: {err}"[:300]}
        out[way] = row
    return out


# -- b: training ------------------------------------------------------------------------------------
def matmul_peak(device: str, dtype_name: str) -> float:
    """Measured dense matmul FLOP/s (bf16 8192^3 on CUDA; fp32 512^3 on CPU)."""
    import torch

    if device != "cuda":
        from megatron_ipt.train.metrics import measure_cpu_matmul_flops

        return measure_cpu_matmul_flops(n=512, repeats=4)
    n = 8192
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * 10 / (time.perf_counter() - t0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_runs(device: str, dtype_name: str) -> list[tuple[int, str]]:
    """(ZeRO stage, model.attention) of each training run: ZeRO-2 once per backend the device trains
    with (doc_sdpa, the dense-mask reference, last), then ZeRO-3 with ``auto``."""
    import torch

    from megatron_ipt.model.attention import resolve_backend

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    # FlexAttention has no backward on CPU: there the CPU backend is the only one that trains.
    backends = attention_backends(device, dtype) if device == "cuda" else [resolve_backend("auto", device, dtype)]
    return [(2, name) for name in backends if name != "doc_sdpa"] + [(3, "auto")] + (
        [(2, "doc_sdpa")] if "doc_sdpa" in backends else [])


def check_training(material: Path, work: Path, device: str, dtype_name: str, sizes: dict, tiny: bool,
                   peak: float, save: Any = None) -> dict[str, Any]:
    """Each run through the real entry point (``torchrun -m megatron_ipt.train``, one process), under its
    own time limit; ``save(results)`` after every run."""
    results: dict[str, Any] = {"peak_flops_measured": peak, "steps": sizes["steps"], "runs": []}
    for stage, attention in training_runs(device, dtype_name):
        run = work / f"zero{stage}_{attention}"
        shutil.rmtree(run, ignore_errors=True)
        args = [
            "--config", str(ROOT / "configs" / "pretrain_500M.yaml"),
            f"--data.train={material / 'train'}", f"--data.tokenizer={material / 'tokenizer.model'}",
            f"--data.seq_len={sizes['seq_len']}", f"--steps={sizes['steps']}", f"--model.attention={attention}",
            f"--micro_batch_size={sizes['micro']}", f"--global_batch_size={sizes['micro']}",
            f"--ds_config={ROOT / 'ds_configs' / f'zero{stage}.json'}", f"--precision={dtype_name}",
            f"--run_dir={run}", f"--checkpoint.dir={run / 'ckpt'}", "--checkpoint.interval=0",
            "--checkpoint.save_at_end=false", "--checkpoint.resume=none", "--optim.warmup_steps=5",
            f"--logging.interval={sizes['log_every']}", "--logging.eval_interval=0", "--logging.tensorboard=false",
            f"--logging.peak_flops_per_device={peak}",
        ]
        if tiny:
            args += [f"--model.{k}={v}" for k, v in TINY_MODEL.items()] + ["--model.expected_parameters=null"]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        run.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
               "-m", "megatron_ipt.train", *args]
        row: dict[str, Any] = {"zero": stage, "attention": attention}
        t0 = time.perf_counter()
        with open(run / "train.log", "w") as fh:
            code = _run_limited(cmd, env, fh, sizes["run_limit_s"])
        row.update(exit=code, wall_s=time.perf_counter() - t0)
        metrics = run / "metrics.jsonl"
        lines = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
        train = [m for m in lines if m.get("kind") == "train"]
        log_text = (run / "train.log").read_text()
        built = [line.rsplit("attention ", 1)[-1].strip() for line in log_text.splitlines()
                 if "parameters, attention" in line]
        if built:
            row["built_with"] = built[-1]
        if code != 0 or not train:
            why = f"time limit {sizes['run_limit_s']} s" if code is None else f"exit {code}"
            row["error"] = f"training failed ({why}): " + log_text[-1500:]
        else:
            last = train[-1]  # the last window: start-up and the first steps are outside it
            row.update(step=last["step"], tokens_per_s=last["tokens_per_s"], mfu=last["mfu"],
                       tflops_per_device=last["tflops_per_device"], peak_memory_gib=last["peak_memory_gib"],
                       loss_first=train[0]["loss"], loss_last=last["loss"])
        results["runs"].append(row)
        if save is not None:
            save(results)
    return results


def _run_limited(cmd: list[str], env: dict[str, str], out: Any, limit_s: float) -> int | None:
    """Run ``cmd`` in its own process group; None when it overran ``limit_s`` (the group is killed)."""
    import signal

    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        return proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


# -- c: synthesis -----------------------------------------------------------------------------------
class _CountingEngine:
    """Delegates to an engine and counts the tokens it generates."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.generated, self.seconds = engine, 0, 0.0
        self.tokenizer, self.max_model_len = engine.tokenizer, engine.max_model_len

    def generate(self, prompt_ids, params, show_progress: bool = False):  # noqa: ANN001, ANN201
        t0 = time.perf_counter()
        out = self.engine.generate(prompt_ids, params, show_progress)
        self.seconds += time.perf_counter() - t0
        self.generated += sum(len(g.token_ids) for gens in out for g in gens)
        return out


def check_synthesis(material: Path, device: str, dtype_name: str, sizes: dict, tiny: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from megatron_ipt.synth.engines import EngineConfig
    from megatron_ipt.synth.rounds import RoundsConfig, run_rounds, synthesis_sampling

    model_dir = material / "smollm2"
    texts = [(r["id"], r["text"]) for r in map(json.loads, (material / "synth.jsonl").read_text().splitlines())]
    texts = texts[: sizes["synth_texts"]]
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    real = (model_dir / "model.safetensors").is_file() and not tiny
    model = None
    if not real:  # SmolLM2-135M's shape with random weights: the same decoding work per token
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(model_dir)
        for key, value in (TINY_SYNTH if tiny else {}).items():
            setattr(config, key, value)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    engine_cfg = EngineConfig(kind="hf", model=str(model_dir), device=device, dtype=dtype_name,
                              batch_size=len(texts), max_model_len=2048)
    engine = _CountingEngine(engine_cfg.build(model=model))
    cfg = RoundsConfig(rounds=2, sampling=synthesis_sampling(max_new_tokens=sizes["new_tokens"]))
    t0 = time.perf_counter()
    entries = run_rounds(engine, texts, cfg, batch_texts=len(texts))
    wall = time.perf_counter() - t0
    shape = "tiny 2-layer body" if tiny else "SmolLM2-135M shape"
    return {"texts": len(texts), "rounds": 2, "weights": "SmolLM2-135M-Instruct" if real else f"random ({shape})", "generated_tokens": engine.generated, "wall_s": wall,
            "generated_tokens_per_s": engine.generated / max(engine.seconds, 1e-9),
            "pairs": sum(len(e.pairs) for e in entries), "failures": sum(1 for e in entries if e.failure)}


# -- report -----------------------------------------------------------------------------------------
def table(report: dict[str, Any]) -> str:
    lines = [f"device: {report['device_name']} ({report['device']}, {report['dtype']}); "
             f"torch {report['torch']}, transformers {report['transformers']}, deepspeed {report['deepspeed']}"]
    a = report.get("attention")
    if a and "error" in a and "backends" not in a:
        lines.append(f"a. attention error: {a['error']}")
    elif a:
        lines.append(f"a. attention, packed row of {a['seq']} tokens / {a['documents']} documents; auto = {a['auto']}")
        lines.append(f"   {'backend':14} {'max |packed - alone|':>22} {'fwd+bwd ms':>11} {'fwd ms':>8}")
        for name, r in a["backends"].items():
            if "error" in r:
                lines.append(f"   {name:14} error: {r['error']}")
                continue
            fb, f = (f"{r[k]:.2f}" if k in r else "-" for k in ("fwd_bwd_ms", "fwd_ms"))
            lines.append(f"   {name:14} {r['max_abs_diff']:22.3e} {fb:>11} {f:>8}")
        for way, r in a.get("varlen_gqa", {}).items():
            if isinstance(r, dict):
                got = r.get("unsupported") or f"{r['fwd_bwd_ms']:.2f} ms fwd+bwd, {r['max_abs_diff_vs_repeat']:.1e} vs repeat"
                lines.append(f"   doc_varlen GQA, {way}: {got}")
    b = report.get("training")
    if b and "runs" not in b:
        lines.append(f"b. training error: {b.get('error', '?')}")
    elif b:
        lines.append(f"b. training, {b['steps']} steps; measured matmul peak {b['peak_flops_measured'] / 1e12:.3g} "
                     "TFLOP/s")
        lines.append(f"   {'ZeRO':5} {'attention':14} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>7} {'peak GiB':>9} "
                     f"{'loss':>15}")
        for r in b["runs"]:
            name = r.get("built_with", r["attention"])
            if "error" in r:
                lines.append(f"   {r['zero']:<5} {name:14} error: {r['error'][-300:]}")
                continue
            lines.append(f"   {r['zero']:<5} {name:14} {r['tokens_per_s']:10.0f} {r['tflops_per_device']:8.2f} "
                         f"{r['mfu']:7.1%} {r['peak_memory_gib']:9.2f} {r['loss_first']:7.3f}>{r['loss_last']:.3f}")
        if "error" in b:
            lines.append(f"   error: {b['error']}")
    c = report.get("synthesis")
    if c:
        if "error" in c:
            lines.append(f"c. synthesis error: {c['error']}")
        else:
            lines.append(f"c. synthesis (HF engine), {c['texts']} abstracts x M={c['rounds']}, weights {c['weights']}: "
                         f"{c['generated_tokens']} tokens, {c['generated_tokens_per_s']:.0f} generated tokens/s, "
                         f"{c['pairs']} pairs")
    lines.append(f"total {report['wall_s']:.0f} s")
    return "\n".join(lines)


def failures(report: dict[str, Any]) -> list[str]:
    """What failed, one name each: a part, a backend of part a, a training run of part b."""
    failed = [PARTS[p] for p in PARTS if "error" in report.get(PARTS[p], {})]
    failed += [f"attention:{n}" for n, r in report.get("attention", {}).get("backends", {}).items() if "error" in r]
    failed += [f"training:zero{r['zero']}:{r['attention']}" for r in report.get("training", {}).get("runs", [])
               if "error" in r]
    return failed


def run_part(part: str, args: argparse.Namespace, sizes: dict, dtype_name: str, out: Path) -> None:
    """One part in this process; its JSON at ``out`` (rewritten after every training run of part b)."""
    from megatron_ipt.io import atomic_write_json

    if part == "a":
        result = check_attention(args.device, dtype_name, sizes, args.tiny)
    elif part == "b":
        peak = matmul_peak(args.device, dtype_name)
        result = check_training(args.material, args.work, args.device, dtype_name, sizes, args.tiny, peak,
                                save=lambda partial: atomic_write_json(out, partial))
    else:
        result = check_synthesis(args.material, args.device, dtype_name, sizes, args.tiny)
    atomic_write_json(out, result)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "deepspeed", "triton", "flash-attn"):
        try:
            out[name.replace("-", "_")] = version(name)
        except PackageNotFoundError:
            out[name.replace("-", "_")] = "absent"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: seconds on CPU (the tested form)")
    parser.add_argument("--material", type=Path, help="folder from --prepare (default: prepared under --work)")
    parser.add_argument("--prepare", type=Path, metavar="DIR", help="only gather the material into DIR")
    parser.add_argument("--with-weights", action="store_true", help="--prepare: include SmolLM2's weights")
    parser.add_argument("--work", type=Path, default=Path("gpu_check_work"), help="run directories")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report")
    parser.add_argument("--parts", default="abc", help="which of a (attention), b (training), c (synthesis)")
    parser.add_argument("--run-part", choices=tuple(PARTS), help=argparse.SUPPRESS)  # a part's own process
    parser.add_argument("--part-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key in ("material", "prepare", "work", "out", "part_out"):  # the caller's directory, not ROOT
        if getattr(args, key) is not None:
            setattr(args, key, getattr(args, key).resolve())
    sizes = TINY if args.tiny else FULL
    if args.prepare:
        prepare(args.prepare, sizes["train_texts"], sizes["synth_texts"], args.with_weights)
        print(f"material in {args.prepare}")
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    dtype_name = "bf16" if args.device == "cuda" else "fp32"
    if args.run_part:
        run_part(args.run_part, args, sizes, dtype_name, args.part_out)
        return 0
    from megatron_ipt.io import atomic_write_json

    material = args.material or prepare(args.work / "material", sizes["train_texts"], sizes["synth_texts"], False)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"device": args.device, "dtype": dtype_name, "tiny": args.tiny, **_versions(),
                              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                              "wall_s": 0.0}
    for part in (p for p in PARTS if p in args.parts):
        part_out = args.work / f"part_{part}.json"
        part_out.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-part", part, "--part-out", str(part_out),
               "--device", args.device, "--material", str(material), "--work", str(args.work),
               *(["--tiny"] if args.tiny else [])]
        limit = sizes["limits_s"][part]
        t_part = time.perf_counter()
        code = _run_limited(cmd, dict(os.environ), None, limit)
        result: dict[str, Any] = json.loads(part_out.read_text()) if part_out.is_file() else {}
        if code != 0:
            result["error"] = f"time limit {limit} s" if code is None else f"exit {code} (its log is above)"
        result["part_wall_s"] = time.perf_counter() - t_part
        report[PARTS[part]] = result
        report["wall_s"] = time.perf_counter() - t0
        atomic_write_json(args.out, report)  # after every part: a later failure loses nothing here
    print(table(report))
    print(f"report: {args.out}")
    return 1 if failures(report) else 0


if __name__ == "__main__":
    sys.exit(main())
