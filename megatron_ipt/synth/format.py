"""The synthesizer's text format (the reference release's, exactly) and its output parser.

One example::

    <s> <CON> {text} </CON>\\n\\n<QUE> {instruction} <ANS> {response} </END>\\n\\n<QUE> ... </END></s>

BOS and EOS are the tokenizer's special ids, never literal strings, so no engine can double them.
The context segment carries no loss; the pairs and the closing EOS do.
"""

from __future__ import annotations

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


def instruction_key(instruction: str) -> str:
    """Case-insensitive identity of an instruction: upper then casefold, so "ß"/"SS" and "ı"/"I" match."""
    return instruction.upper().casefold()


@dataclass
class ParseResult:
    pairs: list[Pair] = field(default_factory=list)
    malformed: int = 0  # pieces that are not a well-formed pair
    duplicates: int = 0  # pairs dropped because the instruction repeated (case-insensitive)
    truncated: bool = False  # the output did not end with </END>: its last piece was dropped


def parse_pairs(output: str) -> ParseResult:
    """Parse generated text into pairs, following the reference's rules.

    Split on ``</END>``; drop the last piece unless the output ended with ``</END>``; a piece must
    start with ``<QUE>``, contain exactly one ``<ANS>`` and a non-empty response; the first pair
    with a given instruction (case-insensitive) wins.
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
