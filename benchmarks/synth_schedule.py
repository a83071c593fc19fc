"""M-shot synthesis, chain-major with prefix reuse vs round-major without it (transformers engine).

    python benchmarks/synth_schedule.py --tiny                      # seconds: a tiny model, few texts
    python benchmarks/synth_schedule.py --base smollm2 --texts 96   # SmolLM2-135M taught to write pairs

Chains only form when the synthesizer writes pairs, so the model is first taught the pair format
for a few steps (``--train-steps``): a fresh tiny Llama with Mistral's vocabulary (``--tiny``), a
base model (``--base``: an HF directory, or ``smollm2``), or none when ``--model`` is already a
tuned synthesizer. Both schedules then run the same texts on the same weights, alternating,
``--repeat`` times each; it prints wall time, output tokens/s, prompt tokens actually prefilled
(and served from the prefix cache), whether the greedy outputs are identical, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from megatron_ipt.pairs import Pair, context_text, pairs_text
from megatron_ipt.synth.engine_hf import HFEngine
from megatron_ipt.synth.engines import EngineConfig
from megatron_ipt.synth.rounds import RoundsConfig, run_rounds, synthesis_sampling
from megatron_ipt.tokenizer import Tokenizer, load_tokenizer

WORDS = ("protein cell gene receptor binds signal tissue patients study results dose treatment levels "
         "blood liver kidney mice trial cohort expression pathway inhibitor response increased reduced "
         "significant analysis samples clinical therapy infection immune tumor growth factor").split()


def make_texts(n: int, words: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` abstract-like texts of about ``words`` words (seeded)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(words // 2, words * 3 // 2)
        body = " ".join(rng.choice(WORDS) for _ in range(k))
        out.append((f"t{i}", f"{body.capitalize()}."))
    return out


def _pairs_for(text: str, n_pairs: int) -> list[Pair]:
    first = text.split()[0].lower()
    pairs = [Pair("What does the text study?", f"It studies the {first}."),
             Pair("Which result is reported?", "The levels increased in the treated group."),
             Pair("Is the effect significant?", "Yes, the effect is significant.")]
    return pairs[:n_pairs]


def train_pair_writer(out: Path, tokenizer: Tokenizer, base: str | None = None, steps: int = 60,
                      batch: int = 8, n_pairs: int = 2, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Teach a causal LM the synthesizer's format (context, then pairs, then EOS), single and
    chained examples, loss on the pairs only; saves it as an HF directory at ``out``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    if base is None:
        torch.set_num_threads(1)  # a tiny model's matrices gain nothing from threads, and a loaded machine spins
        cfg = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=2048, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                          pad_token_id=tokenizer.eos_id)
        model, lr = LlamaForCausalLM(cfg), 3e-3
    else:
        model, lr = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), 2e-4
    texts = make_texts(64, 40, seed=seed + 1)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        examples = []
        for _ in range(batch):
            ids: list[int] = []
            labels: list[int] = []
            for _, text in rng.sample(texts, rng.randint(1, 3)):  # single and chained examples
                ctx = [tokenizer.bos_id, *tokenizer.encode(context_text(text))]
                ans = [*tokenizer.encode(pairs_text(_pairs_for(text, n_pairs))), tokenizer.eos_id]
                ids += ctx + ans
                labels += [-100] * len(ctx) + ans
            examples.append((ids, labels))
        width = max(len(i) for i, _ in examples)
        ids_t = torch.full((len(examples), width), tokenizer.eos_id)
        lab_t = torch.full((len(examples), width), -100)
        for j, (i, lab) in enumerate(examples):
            ids_t[j, : len(i)], lab_t[j, : len(lab)] = torch.tensor(i), torch.tensor(lab)
        # Logits only where there is a label (the pairs): the vocabulary projection dominates the cost.
        hidden = model.model(input_ids=ids_t).last_hidden_state[:, :-1]
        target = lab_t[:, 1:]
        keep = target != -100
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[keep]), target[keep])
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(out)
    return out


def run_schedule(engine: HFEngine, texts, cfg: RoundsConfig, batch_texts: int, schedule: str) -> dict:
    engine.prefilled_tokens = engine.reused_tokens = 0
    if engine.prefix_store is not None:
        engine.prefix_store = type(engine.prefix_store)(engine.prefix_store.max_tokens)  # start cold
    t0 = time.perf_counter()
    entries = run_rounds(engine, texts, cfg, batch_texts=batch_texts, schedule=schedule)
    wall = time.perf_counter() - t0
    out_tokens = sum(e.stats.get("output_tokens", 0) for e in entries)
    return {"wall_s": wall, "output_tokens": out_tokens, "output_tokens_per_s": out_tokens / wall,
            "prefilled": engine.prefilled_tokens, "cached": engine.reused_tokens,
            "linked": sum(e.linked for e in entries), "records": [e.record() for e in entries]}


def synthesizer_dir(model: str | None, base: str | None, tokenizer: str, work: Path,
                    steps: int) -> tuple[str, str | None]:
    """(the synthesizer's HF directory, the base it was taught from): ``model`` as given, or ``base``
    (a directory, 'smollm2' or None for a fresh tiny Llama) taught the pair format for ``steps`` steps."""
    if model is not None:
        return model, base
    if base == "smollm2":
        from megatron_ipt.model.hf_import import smollm2_hf_dir

        base = str(smollm2_hf_dir())
    tok = load_tokenizer(tokenizer or (base if base else "mistral"))
    t0 = time.perf_counter()
    out = str(train_pair_writer(work / "pair_writer", tok, base=base, steps=steps))
    print(f"taught the pair format in {steps} steps ({time.perf_counter() - t0:.1f}s)")
    return out, base


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny fresh model and few texts (a quick check)")
    ap.add_argument("--model", help="an already tuned synthesizer (HF directory): no teaching step")
    ap.add_argument("--base", help="teach this HF model directory the format first ('smollm2': SmolLM2-135M)")
    ap.add_argument("--tokenizer", default="", help="default: mistral for a fresh model, else the model's")
    ap.add_argument("--train-steps", type=int, default=None, help="teaching steps [tiny 60, else 40]")
    ap.add_argument("--texts", type=int, default=None, help="texts synthesized [tiny 12, else 96]")
    ap.add_argument("--words", type=int, default=None, help="words per text, about [tiny 30, else 150]")
    ap.add_argument("--rounds", type=int, default=3, help="M")
    ap.add_argument("--batch-texts", type=int, default=None, help="slots per runner batch [tiny 4, else 16]")
    ap.add_argument("--batch-size", type=int, default=None, help="sequences decoded together [tiny 4, else 16]")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="[tiny 32, else 96]")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=None, help="alternating runs per schedule [tiny 1, else 3]")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    tiny = a.tiny
    def pick(small: int, big: int, given: int | None) -> int:
        return given if given is not None else (small if tiny else big)

    steps, n_texts, words = pick(60, 40, a.train_steps), pick(12, 96, a.texts), pick(30, 150, a.words)
    batch_texts, batch_size = pick(4, 16, a.batch_texts), pick(4, 16, a.batch_size)
    max_new, repeat = pick(32, 96, a.max_new_tokens), pick(1, 3, a.repeat)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, base = synthesizer_dir(a.model, a.base, a.tokenizer, Path(tmp), steps)
        # The taught model is saved without tokenizer files: name its tokenizer.
        tokenizer = a.tokenizer or ("" if a.model else base or "mistral")
        cache_tokens = 4 * batch_texts * (2048 if tiny else 4096)
        common = dict(model=model_dir, tokenizer=tokenizer, batch_size=batch_size, device=a.device, max_model_len=2048)
        reuse = EngineConfig(kind="hf", prefix_cache_tokens=cache_tokens, **common).build()
        plain = HFEngine(EngineConfig(kind="hf", prefix_cache_tokens=0, **common), tokenizer=reuse.tokenizer,
                         model=reuse.model)
        texts = make_texts(n_texts, words, seed=7)
        cfg = RoundsConfig(rounds=a.rounds, sampling=synthesis_sampling(max_new_tokens=max_new))
        runs: dict[str, list[dict]] = {"round-major, no reuse": [], "chain-major, reuse": []}
        for _ in range(repeat):
            runs["round-major, no reuse"].append(run_schedule(plain, texts, cfg, batch_texts, "round"))
            runs["chain-major, reuse"].append(run_schedule(reuse, texts, cfg, batch_texts, "chain"))
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
    identical = best["round-major, no reuse"]["records"] == best["chain-major, reuse"]["records"]
    for name, r in best.items():
        print(f"{name:>22}: wall {r['wall_s']:.2f}s | {r['output_tokens_per_s']:.1f} output tokens/s "
              f"({r['output_tokens']} tokens) | prompt tokens prefilled {r['prefilled']:,} "
              f"(from cache {r['cached']:,}) | linked entries {r['linked']}")
    rm, cm = best["round-major, no reuse"], best["chain-major, reuse"]
    ratios = {"speedup_wall": rm["wall_s"] / cm["wall_s"],
              "prefill_ratio": cm["prefilled"] / rm["prefilled"] if rm["prefilled"] else None}
    print(f"chain-major+reuse vs round-major: {ratios['speedup_wall']:.2f}x wall, "
          f"{ratios['prefill_ratio']:.2f} of the prompt tokens prefilled; greedy outputs identical: {identical}")
    result = {"identical": identical, **ratios,
              "runs": {k: {kk: vv for kk, vv in r.items() if kk != "records"} for k, r in best.items()},
              "settings": {"texts": n_texts, "words": words, "rounds": a.rounds, "batch_texts": batch_texts,
                           "batch_size": batch_size, "max_new_tokens": max_new, "repeat": repeat,
                           "model": a.model or a.base or "tiny fresh Llama"}}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
