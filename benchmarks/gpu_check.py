"""One prepared device check of the GPU path: attention, training throughput and MFU, synthesis speed.

Parts (each writes its figures into one JSON and a table on stdout):
  a. each document-masked attention backend vs ``doc_sdpa`` on the device (bf16 on CUDA): max abs
     difference of packed vs per-document logits (500M model, one packed row of 4,096 tokens), and
     attention forward+backward time at seq 4,096;
  b. ``configs/pretrain_500M.yaml`` shortened by overrides, 30 steps on one device under ZeRO-2 and
     ZeRO-3 in bf16: tokens/s, MFU against the device's measured bf16 matmul peak, peak memory;
  c. HF-engine synthesis of 64 PubMed abstracts, M=2 rounds, with SmolLM2-135M: generated tokens/s.

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
        "seq_len": 2048, "synth_texts": 64, "new_tokens": 400, "train_texts": 600, "timed": 10}
TINY = {"attn_seq": 256, "docs": [60, 3, 100, 93], "steps": 4, "micro": 2, "log_every": 2, "seq_len": 128,
        "synth_texts": 4, "new_tokens": 8, "train_texts": 60, "timed": 2}
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
    cfg.attention = "doc_sdpa"
    torch.manual_seed(0)
    model = build_model(cfg).to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(1)
    pieces = [torch.randint(3, model.config.vocab_size, (n,), generator=gen) for n in docs]
    ids = torch.cat(pieces)[None].to(device)
    pos = torch.cat([torch.arange(n) for n in docs])[None]
    cu = torch.tensor([0, *docs]).cumsum(0).to(torch.int32)
    backends = ["doc_sdpa", "doc_flex"]
    if device == "cuda" and dtype in attention.HALF and attention.torch_varlen_available():
        backends.append("doc_varlen")
    if device == "cuda" and dtype in attention.HALF and attention.flash_attn_available():
        backends.append("doc_flash")
    out: dict[str, Any] = {"auto": attention.resolve_backend("auto", device, dtype), "seq": seq,
                           "documents": len(docs), "dtype": dtype_name, "backends": {}}
    with torch.no_grad():
        alone = [model(input_ids=p[None].to(device), use_cache=False).logits[0].float() for p in pieces]
        reference = torch.cat(alone)
        for name in backends:
            row: dict[str, Any] = {}
            try:
                model.config._attn_implementation = name
                packed = attention.packed_documents(name, pos, cu, max(docs), device)
                logits = model(input_ids=ids, position_ids=pos.to(device), attention_mask=None, use_cache=False,
                               packed_documents=packed).logits[0].float()
                row["max_abs_diff"] = float((logits - reference).abs().max())
                row.update(_time_attention(name, device, dtype, model.config, pos, cu, max(docs), sizes["timed"]))
            except Exception as err:  # noqa: BLE001 - one backend failing must not hide the others
                row["error"] = f"{type(err).__name__}: {err}"[:300]
            out["backends"][name] = row
    model.config._attn_implementation = "doc_sdpa"
    return out


def _time_attention(name: str, device: str, dtype, hf, pos, cu, max_len: int, timed: int) -> dict[str, float]:
    """Forward(+backward where the device has one) time of the attention op alone, in ms."""
    import torch

    from megatron_ipt.model import attention

    fn = {"doc_sdpa": attention.doc_sdpa_forward, "doc_flex": attention.doc_flex_forward,
          "doc_varlen": attention.doc_varlen_forward, "doc_flash": attention.doc_flash_forward}[name]
    s, d = pos.shape[1], hf.head_dim
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, hf.num_attention_heads, s, d, generator=gen).to(device, dtype)
    k = torch.randn(1, hf.num_key_value_heads, s, d, generator=gen).to(device, dtype)
    v = torch.randn(1, hf.num_key_value_heads, s, d, generator=gen).to(device, dtype)
    docs = attention.packed_documents(name, pos, cu, max_len, device)
    backward = not (name == "doc_flex" and device == "cpu")  # torch has no FlexAttention backward on CPU
    q, k, v = (t.requires_grad_(backward) for t in (q, k, v))

    def once() -> None:
        with torch.enable_grad() if backward else torch.no_grad():
            o, _ = fn(None, q, k, v, None, scaling=d**-0.5, packed_documents=docs, position_ids=pos.to(device))
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


def check_training(material: Path, work: Path, device: str, dtype_name: str, sizes: dict, tiny: bool,
                   peak: float) -> dict[str, Any]:
    results: dict[str, Any] = {"peak_flops_measured": peak, "steps": sizes["steps"]}
    for stage in (2, 3):
        run = work / f"zero{stage}"
        shutil.rmtree(run, ignore_errors=True)
        args = [
            "--config", str(ROOT / "configs" / "pretrain_500M.yaml"),
            f"--data.train={material / 'train'}", f"--data.tokenizer={material / 'tokenizer.model'}",
            f"--data.seq_len={sizes['seq_len']}", f"--steps={sizes['steps']}",
            f"--micro_batch_size={sizes['micro']}", f"--global_batch_size={sizes['micro']}",
            f"--ds_config={ROOT / 'ds_configs' / f'zero{stage}.json'}", f"--precision={dtype_name}",
            f"--run_dir={run}", f"--checkpoint.dir={run / 'ckpt'}", "--checkpoint.interval=0",
            "--checkpoint.save_at_end=false", "--checkpoint.resume=none", "--optim.warmup_steps=5",
            f"--logging.interval={sizes['log_every']}", "--logging.eval_interval=0", "--logging.tensorboard=false",
            f"--logging.peak_flops_per_device={peak}",
        ]
        if tiny:
            args += [f"--model.{k}={v}" for k, v in TINY_MODEL.items()] + ["--model.expected_parameters=null"]
        env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(_free_port()), PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
                       "PYTHONPATH", "")]).rstrip(os.pathsep))
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        run.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(run / "train.log", "w") as fh:
            code = subprocess.run([sys.executable, "-m", "megatron_ipt.train", *args], env=env, stdout=fh,
                                  stderr=subprocess.STDOUT, cwd=ROOT).returncode
        row: dict[str, Any] = {"exit": code, "wall_s": time.perf_counter() - t0}
        metrics = run / "metrics.jsonl"
        lines = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
        train = [m for m in lines if m.get("kind") == "train"]
        if code != 0 or not train:
            row["error"] = "training failed: " + (run / "train.log").read_text()[-1500:]
        else:
            last = train[-1]  # the last window: start-up and the first steps are outside it
            row.update(step=last["step"], tokens_per_s=last["tokens_per_s"], mfu=last["mfu"],
                       tflops_per_device=last["tflops_per_device"], peak_memory_gib=last["peak_memory_gib"],
                       loss_first=train[0]["loss"], loss_last=last["loss"])
        results[f"zero{stage}"] = row
    return results


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
    from megatron_ipt.synth.rounds import RoundsConfig, run_rounds

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
    cfg = RoundsConfig(rounds=2, max_new_tokens=sizes["new_tokens"])
    t0 = time.perf_counter()
    entries = run_rounds(engine, texts, cfg, batch_texts=len(texts))
    wall = time.perf_counter() - t0
    shape = "tiny 2-layer body" if tiny else "SmolLM2-135M shape"
    return {"texts": len(texts), "rounds": 2, "weights": "SmolLM2-135M-Instruct" if real else f"random ({shape})", "generated_tokens": engine.generated, "wall_s": wall,
            "generated_tokens_per_s": engine.generated / max(engine.seconds, 1e-9),
            "pairs": sum(len(e.pairs) for e in entries), "failures": sum(1 for e in entries if e.failure)}


# -- report -----------------------------------------------------------------------------------------
def table(report: dict[str, Any]) -> str:
    lines = [f"device: {report['device_name']} ({report['device']}, {report['dtype']})"]
    a = report.get("attention")
    if a:
        lines.append(f"a. attention, packed row of {a['seq']} tokens / {a['documents']} documents; auto = {a['auto']}")
        lines.append(f"   {'backend':12} {'max |packed - alone|':>22} {'fwd+bwd ms':>11} {'fwd ms':>8}")
        for name, r in a["backends"].items():
            if "error" in r:
                lines.append(f"   {name:12} error: {r['error']}")
                continue
            fb, f = (f"{r[k]:.2f}" if k in r else "-" for k in ("fwd_bwd_ms", "fwd_ms"))
            lines.append(f"   {name:12} {r['max_abs_diff']:22.3e} {fb:>11} {f:>8}")
    b = report.get("training")
    if b:
        lines.append(f"b. training, {b['steps']} steps; measured matmul peak {b['peak_flops_measured'] / 1e12:.3g} "
                     "TFLOP/s")
        lines.append(f"   {'ZeRO':6} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>7} {'peak GiB':>9} {'loss':>15}")
        for stage in ("zero2", "zero3"):
            r = b[stage]
            if "error" in r:
                lines.append(f"   {stage:6} error (exit {r['exit']}): {r['error'][-300:]}")
                continue
            lines.append(f"   {stage:6} {r['tokens_per_s']:10.0f} {r['tflops_per_device']:8.2f} {r['mfu']:7.1%} "
                         f"{r['peak_memory_gib']:9.2f} {r['loss_first']:7.3f}>{r['loss_last']:.3f}")
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
    args = parser.parse_args(argv)
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
    material = args.material or prepare(args.work / "material", sizes["train_texts"], sizes["synth_texts"], False)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"device": args.device, "dtype": dtype_name, "tiny": args.tiny,
                              "torch": torch.__version__,
                              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    if "a" in args.parts:
        report["attention"] = check_attention(args.device, dtype_name, sizes, args.tiny)
    if "b" in args.parts:
        peak = matmul_peak(args.device, dtype_name)
        report["training"] = check_training(material, args.work, args.device, dtype_name, sizes, args.tiny, peak)
    if "c" in args.parts:
        try:
            report["synthesis"] = check_synthesis(material, args.device, dtype_name, sizes, args.tiny)
        except Exception as err:  # noqa: BLE001 - report it beside the other parts
            report["synthesis"] = {"error": f"{type(err).__name__}: {err}"[:500]}
    report["wall_s"] = time.perf_counter() - t0
    from megatron_ipt.io import atomic_write_json

    atomic_write_json(args.out, report)
    print(table(report))
    print(f"report: {args.out}")
    failed = [k for k in ("attention", "synthesis") if "error" in report.get(k, {})]
    failed += [s for s in ("zero2", "zero3") if "error" in report.get("training", {}).get(s, {})]
    failed += [f"attention:{n}" for n, r in report.get("attention", {}).get("backends", {}).items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
