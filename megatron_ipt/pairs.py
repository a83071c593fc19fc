"""The vocabulary of instruction-response pairs that tuning, synthesis, corpora and evaluation share:
the reference release's text format (exactly), its output parser, the multiple-choice and
chain-of-thought helpers, the one identity rule for instructions, and the degenerate-text check.

One example::

    <s> <CON> {text} </CON>\\n\\n<QUE> {instruction} <ANS> {response} </END>\\n\\n<QUE> ... </END></s>

BOS and EOS are the tokenizer's special ids, never literal strings, so no engine can double them.
The context segment carries no loss; the pairs and the closing EOS do.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

CON_OPEN, CON_CLOSE = "<CON>", "</CON>"
QUE, ANS, END = "<QUE>", "<ANS>", "</END>"
MARKERS = (CON_OPEN, CON_CLOSE, QUE, ANS, END)
PAIR_SEPARATOR = "\n\n"
OPTIONS_HEADER = "\nOptions:\n"
COT_TRIGGER = "\nLet's think step by step."
COT_ANSWER = "\nTherefore, the answer is "


@dataclass(frozen=True)
class Pair:
    instruction: str
    response: str

    def to_dict(self) -> dict[str, str]:
        return {"instruction": self.instruction, "response": self.response}

    @classmethod
    def from_dict(cls, d: dict) -> Pair:
        return cls(d["instruction"], d["response"])


def context_text(text: str) -> str:
    """The context segment that follows BOS: ``" <CON> {text} </CON>\\n\\n"`` (leading space kept)."""
    return f" {CON_OPEN} {text} {CON_CLOSE}{PAIR_SEPARATOR}"


def pair_text(pair: Pair) -> str:
    return f"{QUE} {pair.instruction} {ANS} {pair.response} {END}"


def pairs_text(pairs: list[Pair]) -> str:
    return PAIR_SEPARATOR.join(pair_text(p) for p in pairs)


def example_segments(text: str, pairs: list[Pair]) -> list[dict]:
    """A tuning example as loss-annotated segments (the data core's ``segments`` record field)."""
    return [
        {"special": "bos", "loss": False},
        {"text": context_text(text), "loss": False},
        {"text": pairs_text(pairs), "loss": True},
        {"special": "eos", "loss": True},
    ]


def example_string(text: str, pairs: list[Pair], bos: str = "<s>", eos: str = "</s>") -> str:
    """The example as one string with literal BOS/EOS (for display and golden tests only)."""
    return f"{bos}{context_text(text)}{pairs_text(pairs)}{eos}"


def multiple_choice(question: str, options: list[str]) -> str:
    """An instruction that carries its options: ``question\\nOptions:\\n- A\\n- B``."""
    return question + OPTIONS_HEADER + "\n".join(f"- {o}" for o in options)


def chain_of_thought(instruction: str, rationale: str, answer: str) -> tuple[str, str]:
    """(instruction, response) in the chain-of-thought style."""
    return instruction + COT_TRIGGER, f"{rationale}{COT_ANSWER}{answer}"


def find_marker(s: str) -> str | None:
    """The first format marker found in user text, or None."""
    for m in MARKERS:
        if m in s:
            return m
    return None


_SPACE = re.compile(r"\s+")


def normalize(s: str) -> str:
    """Comparison form of a question or answer: NFKC, case-folded, punctuation dropped, spacing collapsed.

    The quality gate accepts a multiple-choice answer under this form, so the templates map it to
    its option's label under the same form.
    """
    s = unicodedata.normalize("NFKC", s).upper().casefold()
    s = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in s)
    return _SPACE.sub(" ", s).strip()


def instruction_key(instruction: str) -> str:
    """The identity of an instruction, the one rule everywhere: its :func:`normalize` form (upper then
    casefold, so "ß"/"SS" and "ı"/"I" match; punctuation and spacing ignored)."""
    return normalize(instruction)


_WORD = re.compile(r"\S+")


def is_degenerate(text: str, min_repeats: int = 4, max_unit: int = 12, min_words: int = 8) -> bool:
    """Whether ``text`` ends in a loop: a unit of 1..``max_unit`` words repeated ``min_repeats``+
    times back to back (untuned small models fall into "Q3: Q3: Q3: ...")."""
    words = _WORD.findall(text)
    for unit in range(1, max_unit + 1):
        run = 0
        for i in range(len(words) - 1, unit - 1, -1):
            if words[i] != words[i - unit]:
                break
            run += 1
        if run + unit >= max(min_words, unit * min_repeats):
            return True
    return False


@dataclass
class ParseResult:
    pairs: list[Pair] = field(default_factory=list)
    malformed: int = 0  # pieces that are not a well-formed pair
    duplicates: int = 0  # pairs dropped because the instruction repeated (same instruction_key)
    truncated: bool = False  # the output did not end with </END>: its last piece was dropped


def parse_pairs(output: str) -> ParseResult:
    """Parse generated text into pairs, following the reference's rules.

    Split on ``</END>``; drop the last piece unless the output ended with ``</END>``; a piece must
    start with ``<QUE>``, contain exactly one ``<ANS>`` and a non-empty response; the first pair
    with a given instruction (by :func:`instruction_key`) wins.
    """
    result = ParseResult()
    pieces = output.split(END)
    tail = pieces.pop()  # empty when the output ended with </END>, else an unfinished piece
    result.truncated = bool(tail.strip())
    seen: set[str] = set()
    for piece in pieces:
        piece = piece.strip()
        if not piece.startswith(QUE) or piece.count(ANS) != 1:
            result.malformed += 1
            continue
        question, answer = piece[len(QUE) :].split(ANS)
        question, answer = question.strip(), answer.strip()
        if not question or not answer or QUE in question:
            result.malformed += 1
            continue
        key = instruction_key(question)
        if key in seen:
            result.duplicates += 1
            continue
        seen.add(key)
        result.pairs.append(Pair(question, answer))
    return result


# ---- response scoring: SQuAD's exact match and token F1 -------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the usual SQuAD normalisation)."""
    return " ".join(_ARTICLES.sub(" ", s.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)
