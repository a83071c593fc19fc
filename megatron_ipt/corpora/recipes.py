"""The paper's two corpus recipes: documents per component → indexed datasets → a blend config.

- ``general`` (pre-training from scratch): the converted fraction (synthesized chains), the rest
  of the raw corpus kept raw (converted ids left out), and the synthesizer's tuning data, weighted
  ``tuning_repeat`` times its token count (4x in the paper).
- ``domain`` (continual pre-training): the whole domain corpus converted, mixed with general
  instructions rendered ``{question} {response}`` at ``instruction_ratio`` tokens per domain token.

Every document is wrapped in BOS/EOS at tokenization (the data core's ``preprocess``). Writes
``OUT/documents/*.jsonl``, ``OUT/data/<component>.bin/.idx``, ``OUT/blend.yaml`` (include it in a
training config or pass ``--data.train``) and ``OUT/mixture_report.json`` / ``.md``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from megatron_ipt.config import ConfigError
from megatron_ipt.corpora.chains import (
    instruction_documents,
    raw_documents,
    synthesis_files,
    synthesized_documents,
    tuning_documents,
)
from megatron_ipt.corpora.decontaminate import ContaminationConfig, ContaminationGate
from megatron_ipt.corpora.quality import QualityConfig, QualityGate
from megatron_ipt.data.blend import Blend
from megatron_ipt.data.inputs import DataError, input_stem
from megatron_ipt.data.readers import iter_records
from megatron_ipt.io import OutputLocked, atomic_path, atomic_write_json, atomic_write_text, output_lock
from megatron_ipt.log import get_logger
from megatron_ipt.synth.units import synthesis_outputs

if TYPE_CHECKING:
    from megatron_ipt.tokenizer import Tokenizer

log = get_logger(__name__)

RECIPES = ("general", "domain")


@dataclass
class CorporaConfig:
    recipe: str = "domain"  # general | domain
    synthesized: list[str] | str = field(default_factory=list)  # data_tools.synthesize outputs
    raw: list[str] | str = field(default_factory=list)  # general: the raw corpus ({id, text})
    tuning: list[str] | str = field(default_factory=list)  # general: tuning examples {context, pairs}
    tuning_repeat: float = 4.0  # general: weight of the tuning data in the blend (the paper's 4x)
    instructions: list[str] | str = field(default_factory=list)  # domain: {question, response} records
    instruction_ratio: float = 1.0  # domain: instruction tokens per domain token
    output_dir: str = ""  # documents/, data/, blend.yaml and mixture_report.json go here
    tokenizer: str = "mistral"  # mistral, a SentencePiece .model, an HF directory or a .gguf
    seed: int = 0  # seed of template choice and shuffling
    workers: int = 1  # tokenizing processes (0: in this process)
    skip_bad_records: bool = False  # count and skip invalid records instead of failing
    progress: bool = True  # show progress bars
    quality: QualityConfig = field(default_factory=QualityConfig)  # the quality gate on synthesized pairs
    contamination: ContaminationConfig = field(default_factory=ContaminationConfig)  # the n-gram gate against evaluation sets

    def validate(self) -> None:
        for name in ("synthesized", "raw", "tuning", "instructions"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if not self.output_dir:
            raise ConfigError("output_dir: required")
        if not self.synthesized:
            raise ConfigError("synthesized: give the synthesis outputs (files or folders)")
        unused = ("instructions",) if self.recipe == "general" else ("raw", "tuning")
        for name in unused:
            if getattr(self, name):
                raise ConfigError(f"{name} is not part of the {self.recipe} recipe")
        if self.recipe == "domain" and not self.instructions:
            raise ConfigError("the domain recipe needs instructions: general {question, response} records")
        if self.tuning_repeat <= 0 or self.instruction_ratio <= 0:
            raise ConfigError("tuning_repeat and instruction_ratio must be positive")
        self.contamination.validate()
        self.quality.validate()
        if self.workers < 0:
            raise ConfigError(f"workers must be 0 (tokenize in this process) or more, got {self.workers}")


def _write_documents(path: Path, docs: Iterator[dict]) -> dict:
    """Write documents as JSONL (atomically); count documents and characters."""
    n = chars = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps({"id": doc["id"], "text": doc["text"]}, ensure_ascii=False) + "\n")
            n += 1
            chars += len(doc["text"])
    return {"documents": n, "characters": chars}


def _converted_ids(inputs: list[str]) -> set[str]:
    ids: set[str] = set()
    for path in synthesis_files(inputs):
        for rec, where in iter_records(path):
            if "id" not in rec:
                raise DataError("a synthesized record needs it", where=where, field="id")
            ids.add(str(rec["id"]))
    return ids


def _dotted(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _dotted(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def provenance_differences(synthesizers: list[dict]) -> list[dict[str, object]]:
    """Per synthesizer entry, the provenance keys (dotted) whose values differ between the entries."""
    flats = [_dotted({k: v for k, v in s.items() if k != "shards"}) for s in synthesizers]
    keys = sorted(set().union(*flats)) if flats else []
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
    return [{k: f.get(k) for k in differing} for f in flats]


def synthesis_totals(inputs: list[str]) -> dict:
    """Key figures summed over the ``*.stats.json`` that ``data_tools.synthesize`` wrote per shard, and
    ``synthesizers``: each distinct provenance (model fingerprint, tokenizer, settings) with its shard count
    and what differs from the others. A shard without stats is counted from its own records (texts,
    pairs), under ``shards_without_stats``, as an unknown synthesizer."""
    totals: Counter = Counter()
    synthesizers: dict[str, dict] = {}
    shards = 0
    without_stats: list[str] = []
    found = synthesis_outputs(inputs)
    for out_file in (o for o in found.files if not o.name.endswith(".stats.json")):
        shards += 1
        stats_file = out_file.with_name(input_stem(out_file) + ".stats.json")
        try:
            st = json.loads(stats_file.read_text()) if stats_file.is_file() else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            st = None
        if not isinstance(st, dict):
            without_stats.append(out_file.name)
            for rec, _where in iter_records(out_file):
                totals["texts"] += 1
                totals["pairs"] += len(rec["pairs"]) if isinstance(rec.get("pairs"), list) else 0
            synthesizers.setdefault("", {"synthesizer": None, "shards": 0})["shards"] += 1
            continue
        for key in ("texts", "pairs", "texts_without_pairs", "degenerate_outputs", "texts_truncated",
                    "prompt_tokens", "output_tokens", "linked"):
            totals[key] += st.get(key, 0)
        totals["malformed_pieces"] += st.get("parse", {}).get("malformed_pieces", 0)
        totals["unfinished_outputs"] += st.get("parse", {}).get("unfinished_outputs", 0)
        for key, value in st.get("input", {}).items():
            totals[f"input_{key}"] += value
        prov = st.get("provenance")
        if isinstance(prov, dict):
            key = json.dumps(prov, sort_keys=True)
            synthesizers.setdefault(key, {**prov, "shards": 0})["shards"] += 1
        else:
            synthesizers.setdefault("", {"synthesizer": None, "shards": 0})["shards"] += 1
    if not shards:
        return {}
    for key in ("texts", "pairs", "texts_without_pairs", "degenerate_outputs", "texts_truncated"):
        totals.setdefault(key, 0)
    out = {"shards": shards, "units_unfinished": len(found.unfinished), "units_unlisted": len(found.unlisted),
           "shards_without_stats": len(without_stats), **totals}
    if without_stats:
        log.warning("%d synthesized shards have no stats file (%s%s): their texts and pairs are counted from their "
                    "records, their synthesizer is unknown", len(without_stats), ", ".join(without_stats[:3]),
                    " ..." if len(without_stats) > 3 else "")
    # Which model (and settings) wrote the shards: more than one entry means a mixed synthesis.
    out["synthesizers"] = list(synthesizers.values())
    if len(synthesizers) > 1:
        for who, differs in zip(out["synthesizers"], provenance_differences(out["synthesizers"]), strict=True):
            who["differs"] = differs
        keys = list(out["synthesizers"][0]["differs"])
        log.warning("the synthesized shards come from %d different synthesizers or settings, differing in %s%s (see "
                    "the mixture report's synthesis.synthesizers)", len(synthesizers), ", ".join(keys[:6]),
                    " ..." if len(keys) > 6 else "")
    out["pairs_per_text"] = round(totals["pairs"] / totals["texts"], 3) if totals["texts"] else 0.0
    return out


def _components(cfg: CorporaConfig, stats: dict[str, Counter], quality: QualityGate,
                contamination: ContaminationGate | None) -> list[tuple[str, Iterator[dict]]]:
    # Contamination first: a benchmark item is counted as such even when it is also a duplicate.
    pair_filters = [contamination.filter_texts] if contamination is not None else []
    comps = [("instruct", synthesized_documents(cfg.synthesized, cfg.seed, stats["instruct"],
                                                pair_filters=[*pair_filters, quality.filter_texts]))]
    if cfg.recipe == "general":
        if cfg.raw:
            exclude = _converted_ids(cfg.synthesized)
            comps.append(("raw", raw_documents(cfg.raw, stats["raw"], exclude,
                                               skip_bad_records=cfg.skip_bad_records)))
        if cfg.tuning:
            comps.append(("tuning", tuning_documents(cfg.tuning, cfg.seed, stats["tuning"])))
    else:
        comps.append(("instructions", instruction_documents(cfg.instructions, stats["instructions"],
                                                            cfg.skip_bad_records)))
    if contamination is not None:
        kinds = {"tuning": "tuning_examples", "instructions": "instruction_records"}
        comps = [(name, contamination.filter_documents(docs, kinds[name]) if name in kinds else docs)
                 for name, docs in comps]
    return comps


def _weights(cfg: CorporaConfig, tokens: dict[str, int]) -> dict[str, float]:
    """Sampling weights: by tokens, times the tuning repeat; domain instructions matched by tokens."""
    raw = dict(tokens)
    if "tuning" in raw:
        raw["tuning"] = tokens["tuning"] * cfg.tuning_repeat
    if "instructions" in raw:
        raw["instructions"] = tokens["instruct"] * cfg.instruction_ratio
    raw = {k: v for k, v in raw.items() if tokens.get(k, 0) > 0}
    total = sum(raw.values())
    return {k: round(v / total, 6) for k, v in raw.items()}


def build_corpora(cfg: CorporaConfig) -> dict:
    """Run a recipe end to end; returns the mixture report."""
    cfg.validate()
    out = Path(cfg.output_dir).resolve()
    try:
        with output_lock(out):  # a second build into the same output_dir is refused, not interleaved
            return _build_corpora(cfg, out)
    except OutputLocked as err:
        raise ConfigError(f"output_dir: {err}") from None
    except OSError as err:  # an output under a file, a read-only or full disk
        raise ConfigError(f"output_dir: cannot write {err.filename or out}: {err.strerror or err}") from None


def _tokenize_components(cfg: CorporaConfig, out: Path, tok: Tokenizer, stats: dict[str, Counter], quality: QualityGate,
                         contamination: ContaminationGate | None) -> tuple[dict[str, dict], dict | None]:
    """Write each component's documents and tokenize them; (counts per component, the tokenizer record)."""
    from megatron_ipt.data.preprocess import preprocess

    tok_record: dict | None = None
    components: dict[str, dict] = {}
    for name, docs in _components(cfg, stats, quality, contamination):
        doc_path = out / "documents" / f"{name}.jsonl"
        counts = _write_documents(doc_path, docs)
        log.info("%s: %d documents -> %s", name, counts["documents"], doc_path)
        if counts["documents"] == 0:
            log.warning("component %s has no documents; it is left out of the blend", name)
            components[name] = counts | {"tokens": 0, "prefix": None}
            continue
        summary = preprocess([doc_path], out / "data" / name, tok, json_key="text", workers=cfg.workers,
                             append_eod=True, prepend_bos=True, progress=cfg.progress, dataset_suffix=False)
        tok_record = summary["tokenizer_fingerprint"]
        components[name] = counts | {"tokens": int(summary["tokens"]), "prefix": summary["prefix"]}
        if summary.get("skipped_total"):  # tokenization's own skips (none expected: counted if any)
            components[name]["tokenize_skipped"] = summary["skipped"]
    return components, tok_record


def _check_mixable(cfg: CorporaConfig, tokens: dict[str, int]) -> None:
    if not any(tokens.values()):
        raise ConfigError("every component is empty: nothing to blend")
    if cfg.recipe == "domain" and not tokens.get("instruct"):
        # The instructions are weighted by the converted domain tokens: without any, no mixture exists.
        raise ConfigError(f"synthesized: no documents in {', '.join(cfg.synthesized)}: the domain recipe "
                          "mixes instructions in proportion to the converted domain corpus")


def _annotate_components(components: dict[str, dict], stats: dict[str, Counter], weights: dict[str, float],
                         total_tokens: int) -> None:
    """Add each component's weight, repeat, template use and counts (in place)."""
    for name, comp in components.items():
        comp["weight"] = weights.get(name, 0.0)
        if comp["tokens"]:
            # Times each document is seen when training on total_tokens tokens with these weights.
            comp["repeat"] = round(comp["weight"] * total_tokens / comp["tokens"], 3)
        layouts = {k.split(":", 1)[1]: v for k, v in stats[name].items() if k.startswith("layout:")}
        if layouts:
            comp["templates"] = dict(sorted(layouts.items(), key=lambda kv: -kv[1]))
        extra = {k: v for k, v in stats[name].items() if not k.startswith("layout:")}
        if extra:
            comp["counts"] = dict(extra)


def _write_blend(out: Path, cfg: CorporaConfig, tok: Tokenizer, blend: Blend) -> None:
    # The blend carries its tokenizer: a training config that includes it trains with the same one
    # (and the trainer refuses another one, from the datasets' summaries).
    tok_spec = cfg.tokenizer if not Path(cfg.tokenizer).exists() else str(Path(cfg.tokenizer).resolve())
    atomic_write_text(out / "blend.yaml", "# written by data_tools.build_corpora: include it in a training config\n"
                      f"# tokenized with {tok.name} (vocab {tok.vocab_size}, hash {tok.vocab_hash})\n"
                      + yaml.safe_dump({"data": {"train": blend.to_yaml(), "tokenizer": tok_spec}}, sort_keys=False))


def _build_corpora(cfg: CorporaConfig, out: Path) -> dict:
    from megatron_ipt.tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer)  # once for every component (preprocess reuses it)
    stats: dict[str, Counter] = {k: Counter() for k in ("instruct", "raw", "tuning", "instructions")}
    quality = QualityGate(cfg.quality)
    contamination = ContaminationGate(cfg.contamination) if cfg.contamination.eval_sets else None
    components, tok_record = _tokenize_components(cfg, out, tok, stats, quality, contamination)
    tokens = {k: c["tokens"] for k, c in components.items()}
    _check_mixable(cfg, tokens)
    weights = _weights(cfg, tokens)
    total_tokens = sum(tokens.values())
    _annotate_components(components, stats, weights, total_tokens)
    if cfg.quality.enabled:
        components["instruct"]["quality"] = quality.report()
    blend = Blend.parse([[weights[k], components[k]["prefix"]] for k in components if k in weights], "mixture")
    _write_blend(out, cfg, tok, blend)
    report = {"recipe": cfg.recipe, "tokenizer": cfg.tokenizer, "tokenizer_fingerprint": tok_record,
              "total_tokens": total_tokens,
              "components": components, "blend": [list(e) for e in blend], "synthesis": synthesis_totals(cfg.synthesized),
              "train_override": "--data.train=" + json.dumps(blend.to_megatron())}
    if contamination is not None:  # named sets always get their section, even when they removed nothing
        report["contamination"] = contamination.report()
    atomic_write_json(out / "mixture_report.json", report)
    atomic_write_text(out / "mixture_report.md", report_markdown(report))
    return report


def report_markdown(report: dict) -> str:
    lines = [f"# Mixture ({report['recipe']} recipe, tokenizer {report['tokenizer']})", "",
             "| component | documents | tokens | weight | repeat |", "|---|---:|---:|---:|---:|"]
    for name, c in report["components"].items():
        lines.append(f"| {name} | {c['documents']:,} | {c['tokens']:,} | {c.get('weight', 0):.3f} | "
                     f"{c.get('repeat', 0)} |")
    syn = report.get("synthesis")
    if syn:
        lines += ["", f"Synthesis ({syn['shards']} shards): {syn['texts']:,} texts, {syn['pairs']:,} pairs "
                  f"({syn['pairs_per_text']} per text), {syn['texts_without_pairs']:,} texts without pairs, "
                  f"{syn['degenerate_outputs']:,} degenerate outputs, {syn['texts_truncated']:,} texts truncated."]
        left_out = {k: syn.get(k, 0) for k in ("units_unfinished", "units_unlisted", "shards_without_stats")}
        if any(left_out.values()):
            lines.append("Left out or unrecorded: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in left_out.items())
                         + ".")
        for who in syn.get("synthesizers", []):
            model = who.get("synthesizer") or {}
            differs = "".join(f", {k.removeprefix('config.')}={json.dumps(v)}" for k, v in who.get("differs", {}).items()
                              if not k.startswith("synthesizer"))  # the model is named by path and hash
            lines.append(f"- synthesizer {model.get('path', 'unrecorded')} (hash {model.get('hash')}){differs}: "
                         f"{who['shards']} shard(s)")
    for name, c in report["components"].items():
        q = c.get("quality")
        if q:
            why = ", ".join(f"{k} {v:,}" for k, v in q["dropped"].items()) or "none"
            lines += ["", f"Quality gate on {name}: {q['pairs_dropped']:,} of {q['pairs_checked']:,} pairs dropped "
                      f"({why})."]
            if q.get("top_questions"):
                lines += ["", f"Most frequent questions ({q['distinct_questions']:,} distinct in {q['pairs_kept']:,} "
                          "kept pairs):", "", "| question | pairs | share |", "|---|---:|---:|"]
                lines += [f"| {' '.join(t['question'].split())[:80].replace('|', '/')} | {t['pairs']:,} | "
                          f"{t['share']:.1%} |" for t in q["top_questions"]]
    con = report.get("contamination")
    if con:
        removed = ", ".join(f"{v:,} of {con['checked'][k]:,} {k.replace('_', ' ')}" for k, v in con["removed"].items())
        lines += ["", f"Contamination gate ({con['ngram']}-grams): removed {removed or 'nothing'}.", "",
                  "| evaluation set | items | shorter than n | n-grams | removed |", "|---|---:|---:|---:|---|"]
        for name, s in con["sets"].items():
            what = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in s["removed"].items()) or "nothing"
            lines.append(f"| {name} | {s['items']:,} | {s['items_shorter_than_ngram']:,} | {s['ngrams']:,} | {what} |")
    for name, c in report["components"].items():
        counted = {**c.get("counts", {}), **{f"tokenize_{k}": v for k, v in c.get("tokenize_skipped", {}).items()}}
        if counted:  # every drop and skip by reason, and what was joined in (nothing is lost unseen)
            lines += ["", f"Counts of {name}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counted.items())) + "."]
    for name, c in report["components"].items():
        if c.get("templates"):
            total = sum(c["templates"].values())
            lines += ["", f"Templates of {name}:", ""]
            lines += [f"- {k}: {v} ({v / total:.1%})" for k, v in c["templates"].items()]
    return "\n".join(lines) + "\n"
