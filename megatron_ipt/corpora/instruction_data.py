"""Instruction-tuning data with response-only loss: instruction records → loss-masked indexed dataset.

Every record format the domain recipe reads (OpenOrca, Alpaca, Dolly, ShareGPT ``conversations``,
chat ``messages``; :func:`megatron_ipt.corpora.chains.instruction_conversation`) is rendered with a
template into ``segments`` records (prompt parts loss-free; each response and what closes it with
loss), written to ``PREFIX_text_document.segments.jsonl`` and tokenized by the data core's
:func:`~megatron_ipt.data.preprocess.preprocess` into ``PREFIX_text_document`` and its ``_lossmask``
twin. Templates:

- ``plain`` (default): the paper's ``{question} {response}`` with BOS first and EOS after every
  response, for base models; the parts are format strings (``template.user``, ``template.assistant``,
  ``template.system``) a config may replace;
- ``chat``: the tokenizer's chat template (or ``template.chat_template``, Jinja text or a file);
  its control tokens become real control ids, never the records' text.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_ipt.config import ConfigError
from megatron_ipt.corpora.chains import Conversation, InstructionError, instruction_conversation
from megatron_ipt.data.inputs import DataError, expand_inputs
from megatron_ipt.data.preprocess import dataset_prefix, preprocess, summary_path
from megatron_ipt.data.readers import iter_records
from megatron_ipt.io import atomic_path, atomic_write_json
from megatron_ipt.log import get_logger
from megatron_ipt.progress import progress
from megatron_ipt.tokenizer import HFTokenizer, Tokenizer, load_tokenizer

log = get_logger(__name__)
CONTENT = "{content}"


@dataclass
class TemplateConfig:
    kind: Literal["plain", "chat"] = "plain"  # plain: the format strings below; chat: a Jinja chat template
    system: str = "{content}\n\n"  # plain: a kept system prompt (loss-free), before the first question
    user: str = "{content}"  # plain: each question (loss-free)
    assistant: str = " {content}"  # plain: each response (with loss)
    bos: bool = True  # plain: BOS first (loss-free)
    eos: bool = True  # plain: EOS after every response (with loss)
    chat_template: str | None = None  # chat: Jinja text or a file (null: the tokenizer's own)

    def validate(self) -> None:
        for name in ("system", "user", "assistant"):
            if getattr(self, name).count(CONTENT) != 1:
                raise ConfigError(f"template.{name} must hold {CONTENT} exactly once, got {getattr(self, name)!r}")

    def resolved(self) -> dict[str, Any]:
        """What decides the rendering (a chat template file read): recorded with its hash."""
        d = asdict(self)
        if self.kind == "chat":
            d = {"kind": "chat", "chat_template": self.chat_template}
            if self.chat_template and Path(self.chat_template).is_file():
                d["chat_template"] = Path(self.chat_template).read_text(encoding="utf-8")
        else:
            d.pop("chat_template")
        return d


@dataclass
class InstructionDataConfig:
    input: list[str] = field(default_factory=list)  # instruction JSONL/JSON/Parquet files or folders
    tokenizer: str = ""  # 'mistral', a SentencePiece .model, an HF tokenizer directory, or a .gguf
    output_prefix: str = ""  # writes PREFIX_text_document.{bin,idx} and its _lossmask twin
    template: TemplateConfig = field(default_factory=TemplateConfig)  # how a record becomes text
    keep_system: bool = False  # keep system prompts (rendered loss-free); false: drop and count them
    # Skip and count examples longer than this many tokens (e.g. data.seq_len of the tuning run, where a
    # longer one would be cut across samples, its response apart from its prompt); null: keep every one.
    max_tokens: int | None = None
    skip_bad_records: bool = False  # skip and count records without a usable question and response
    workers: int = 1  # tokenizing processes (0: in this process)
    progress: bool = True  # progress bar while tokenizing

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("--input is required: instruction files or folders")
        for name in ("tokenizer", "output_prefix"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required")
        self.template.validate()
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ConfigError(f"--max-tokens must be at least 2 (or null), got {self.max_tokens}")


# -- rendering ---------------------------------------------------------------------------------------
def _absorbs_leading_space(tok: Tokenizer) -> bool:
    """True for tokenizers that prefix every encoded text with a space (SentencePiece's dummy prefix):
    a segment's own leading space would then be a second one, so it is left to the tokenizer."""
    return tok.encode("Question") + tok.encode("Answer") == tok.encode("Question Answer")


def _finish(parts: list[dict], absorbs_space: bool) -> list[dict]:
    """Adjacent text parts of equal loss merged (tokenized together, as one text would be); with a
    dummy-prefix tokenizer one leading space of every later text part dropped."""
    out: list[dict] = []
    for p in parts:
        if "text" in p and not p["text"]:
            continue
        if out and "text" in p and "text" in out[-1] and out[-1]["loss"] == p["loss"]:
            out[-1] = {"text": out[-1]["text"] + p["text"], "loss": p["loss"]}
        else:
            out.append(dict(p))
    if absorbs_space:
        for i, p in enumerate(out):
            if i and "text" in p and p["text"].startswith(" "):
                p["text"] = p["text"][1:]
    return out


def plain_segments(conv: Conversation, t: TemplateConfig) -> list[dict]:
    """BOS, [system], then per turn the question (loss-free), the response and EOS (with loss)."""
    parts: list[dict] = [{"special": "bos", "loss": False}] if t.bos else []
    if conv.system:
        parts.append({"text": t.system.replace(CONTENT, conv.system.strip()), "loss": False})
    for q, a in conv.pairs:
        parts.append({"text": t.user.replace(CONTENT, q.strip()), "loss": False})
        parts.append({"text": t.assistant.replace(CONTENT, a.strip()), "loss": True})
        if t.eos:
            parts.append({"special": "eos", "loss": True})
    return parts


class ChatRenderer:
    """A Jinja chat template rendered around sentinels, so only the template's own text can become
    control tokens; the loss covers each assistant turn as the template closes it."""

    SENTINEL = "\x00{}\x00"

    def __init__(self, tok: Tokenizer, chat_template: str | None) -> None:
        if not isinstance(tok, HFTokenizer):
            raise ConfigError(f"template.kind=chat needs a Hugging Face tokenizer with a chat template; "
                              f"{tok.name} has none (use template.kind=plain)")
        if chat_template and Path(chat_template).is_file():
            chat_template = Path(chat_template).read_text(encoding="utf-8")
        self.hf, self.template = tok.hf, chat_template
        if not (chat_template or getattr(tok.hf, "chat_template", None)):
            raise ConfigError(f"tokenizer {tok.name} has no chat template: give template.chat_template")
        pieces = sorted(tok.special_pieces, key=len, reverse=True)
        self.cut = re.compile("|".join([r"\x00(\d+)\x00", *(re.escape(p) for p in pieces)]))

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                           chat_template=self.template)

    def segments(self, conv: Conversation) -> list[dict]:
        contents: list[str] = []
        messages: list[dict] = []

        def add(role: str, text: str) -> None:
            messages.append({"role": role, "content": self.SENTINEL.format(len(contents))})
            contents.append(text.strip())

        if conv.system:
            add("system", conv.system)
        for q, a in conv.pairs:
            add("user", q)
            add("assistant", a)
        full = self._render(messages, False)
        regions = []
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                start, end = self._render(messages[:i], True), self._render(messages[: i + 1], False)
                if not (full.startswith(start) and full.startswith(end)):
                    raise InstructionError("the chat template renders a conversation's beginning differently "
                                           "from the whole conversation: its turns cannot be masked", "messages")
                regions.append((len(start), len(end)))

        def loss_at(pos: int) -> bool:
            return any(s <= pos < e for s, e in regions)

        cuts = sorted({0, len(full), *(b for r in regions for b in r)})
        parts: list[dict] = []
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            loss, pos = loss_at(lo), lo
            for m in self.cut.finditer(full, lo, hi):
                parts.append({"text": full[pos:m.start()], "loss": loss})
                if m.group(1) is not None:
                    parts.append({"text": contents[int(m.group(1))], "loss": loss})
                else:
                    parts.append({"special": m.group(0), "loss": loss})
                pos = m.end()
            parts.append({"text": full[pos:hi], "loss": loss})
        return parts


# -- the build ---------------------------------------------------------------------------------------
def template_hash(resolved: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def segment_records(cfg: InstructionDataConfig, tok: Tokenizer, chat: ChatRenderer | None, stats: Counter,
                    skipped: Counter) -> Iterator[dict]:
    """One ``{"id", "segments"}`` record per instruction record; a bad record raises, or is counted in
    ``skipped`` by reason (unreadable lines under their reader's reason, unusable records as bad_records)."""
    absorbs = _absorbs_leading_space(tok)
    for f in expand_inputs(list(cfg.input)):
        for rec, where in iter_records(f, skip_bad=cfg.skip_bad_records, stats=skipped):
            stats["records"] += 1
            try:
                conv = instruction_conversation(rec, stats, cfg.keep_system)
                parts = chat.segments(conv) if chat is not None else plain_segments(conv, cfg.template)
            except InstructionError as err:
                if not cfg.skip_bad_records:
                    raise DataError(f"{err} (--skip-bad-records counts and skips it)", where=where,
                                    field=err.field) from None
                skipped["bad_records"] += 1
                continue
            segments = _finish(parts, absorbs)
            if cfg.max_tokens is not None and _n_tokens(segments, tok) > cfg.max_tokens:
                skipped["too_long"] += 1
                continue
            stats["turns"] += len(conv.pairs)
            yield {"id": str(rec.get("id", where)), "segments": segments}


def _n_tokens(segments: list[dict], tok: Tokenizer) -> int:
    """Tokens of the example as preprocess will write it (text segments are tokenized one by one)."""
    texts = [s["text"] for s in segments if "text" in s]
    return sum(len(ids) for ids in tok.encode_batch(texts)) + sum(1 for s in segments if "special" in s)


def _write_if_changed(path: Path, lines: Iterator[dict]) -> None:
    """Write the JSONL unless the file already holds exactly it (its mtime then stays, and a finished
    tokenization of it is found complete)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in lines:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if path.is_file() and Path(tmp).read_bytes() == path.read_bytes():
            raise _Unchanged


def _counted(records: Iterator[dict], bar: Any) -> Iterator[dict]:
    for rec in records:
        bar.update()
        yield rec


class _Unchanged(Exception):
    """The rendered records equal the file on disk."""


def build_instruction_data(cfg: InstructionDataConfig) -> dict[str, Any]:
    """Render, write and tokenize; returns the summary (also in ``PREFIX_text_document.summary.json``)."""
    cfg.validate()
    tok = load_tokenizer(cfg.tokenizer)
    if cfg.template.kind == "plain" and ((cfg.template.bos and tok.bos_id is None)
                                         or (cfg.template.eos and tok.eos_id is None)):
        raise ConfigError(f"tokenizer {tok.name} lacks BOS or EOS: set template.bos/template.eos false")
    chat = ChatRenderer(tok, cfg.template.chat_template) if cfg.template.kind == "chat" else None
    prefix = dataset_prefix(cfg.output_prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    seg_file = Path(f"{prefix}.segments.jsonl")
    stats: Counter = Counter()
    skipped: Counter = Counter()
    with progress(desc="rendering", unit="rec", enabled=cfg.progress) as bar:
        records = segment_records(cfg, tok, chat, stats, skipped)
        try:
            _write_if_changed(seg_file, _counted(records, bar))
        except _Unchanged:
            pass
    kept = stats["records"] - skipped["bad_records"] - skipped["too_long"]
    if kept == 0:
        raise DataError(f"{', '.join(cfg.input)}: no usable instruction record (read {stats['records']}, "
                        f"skipped {dict(skipped)})")
    summary = preprocess([seg_file], cfg.output_prefix, tok, workers=cfg.workers, progress=cfg.progress)
    resolved = cfg.template.resolved()
    summary["instructions"] = {
        "inputs": list(cfg.input),
        "records": stats["records"],
        "written": kept,
        "skipped": dict(skipped),
        "skipped_total": sum(skipped.values()),
        "counts": dict(sorted(stats.items())),
        "keep_system": cfg.keep_system,
        "template": resolved,
        "template_hash": template_hash(resolved),
        "loss_tokens": _loss_tokens(summary),
    }
    atomic_write_json(summary_path(summary["prefix"]), summary)
    return summary


def _loss_tokens(summary: dict[str, Any]) -> int:
    import numpy as np

    from megatron_ipt.data.indexed import bin_path

    return int(np.fromfile(bin_path(summary["lossmask_prefix"]), dtype=np.uint8).sum(dtype=np.int64))
