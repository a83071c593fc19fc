"""Render chains of (text, pairs) entries into pre-training documents with diverse templates.

One seed per chain drives every choice (layout, wording, option order and markers), so output is
reproducible; rendering only reads its input. Layout shares follow the reference: classic ~81%,
dialogue / numbered / inline few-shot / next-turn ~5% each (the last three need >= 2 pairs per
entry), and ~5% of chains put the pairs before the text. All wording here is this project's own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from megatron_ipt.synth.format import COT_ANSWER, COT_TRIGGER, OPTIONS_HEADER, Pair

# ---- wording pools -------------------------------------------------------------------------------

READ_PREFIXES = (
    "Read the passage below.\n\n", "Here is a text:\n\n", "Consider the following.\n\n", "Passage:\n",
    "Background:\n", "Study this text, then answer the questions after it.\n\n", "Source:\n",
    "Go through this excerpt first.\n\n", "Article:\n", "Look at the following material.\n\n",
    "Reading:\n", "Context for the questions below:\n\n",
) + ("",) * 12  # half the chains start with the bare text

LEAD_INS = (
    "Answer the question. ", "Based on the passage, answer: ", "Using the text, respond: ", "Please answer: ",
    "From what you read: ", "Reply briefly. ", "Keep the passage in mind. ", "Question about the text: ",
    "Think about the reading. ", "Refer to the passage. "
) + ("",) * 10  # half the chains use no lead-in

QA_TEMPLATES = (
    "Q: {q}\nA: {a}", "Question: {q}\nAnswer: {a}", "{q}\n{a}", "{q} {a}", "Query: {q}\nResponse: {a}",
    "Problem: {q}\nSolution: {a}", "{q}\nThe answer is: {a}", "Input: {q}\nOutput: {a}",
    "Here is a question: {q}\nAnd its answer: {a}", "{q}\n\n{a}", "Task: {q}\nResult: {a}",
    "Ask: {q}\nReply: {a}", "{q}\nAnswer: {a}", "Prompt: {q}\nCompletion: {a}", "{q} -- {a}",
    "Inquiry: {q}\nExplanation: {a}",
)

MC_TEMPLATES = (
    "{q}\n{o}\nAnswer: {a}", "Question: {q}\nChoices:\n{o}\nCorrect answer: {a}", "{q}\nPick one:\n{o}\n{a}",
    "{q} Select the right option.\n{o}\nThe right option is {a}.", "Multiple choice: {q}\n{o}\nAnswer: {a}",
    "{q}\nWhich of these is correct?\n{o}\nIt is {a}.", "{q}\nCandidates:\n{o}\nSolution: {a}",
    "Choose the best answer. {q}\n{o}\n{a}",
)
MC_NO_OPTIONS_TEMPLATES = (  # options dropped: the answer is the option's text
    "{q}\nAnswer: {a}", "Q: {q}\nA: {a}", "{q} {a}", "Question: {q}\nResponse: {a}",
)

COT_TEMPLATES = (
    "{q}\nLet's work through it. {r}\nSo the answer is {a}.", "Question: {q}\nReasoning: {r}\nAnswer: {a}",
    "{q}\nStep by step: {r} Hence: {a}", "{q}\nThink first, then answer.\n{r}\nFinal answer: {a}",
    "Q: {q}\nA: {r} Therefore, {a}.", "{q}\nExplanation: {r}\nConclusion: {a}", "Solve: {q}\n{r}\nThe answer: {a}",
    "{q}\nWorking: {r}\nResult: {a}", "{q}\nLet us reason carefully. {r} The answer is {a}.",
    "Question: {q}\nRationale: {r}\nSo: {a}",
)

MC_COT_TEMPLATES = (
    "{q}\n{o}\nLet's reason it out. {r}\nThe answer is {a}.", "Question: {q}\nOptions:\n{o}\nReasoning: {r}\nAnswer: {a}",
    "{q}\nChoose from:\n{o}\nThinking: {r} So the choice is {a}.", "{q}\n{o}\nExplain, then answer.\n{r}\nAnswer: {a}",
    "Multiple choice with reasoning: {q}\n{o}\n{r}\nFinal choice: {a}", "{q}\nPossible answers:\n{o}\n{r} Therefore: {a}",
)

# (label kind, option line format, answer format): lettered/numbered options answer with their label.
OPTION_MARKERS = (
    ("upper", "{L}. {o}", "{L}"), ("upper", "({L}) {o}", "({L})"), ("upper", "{L}) {o}", "{L}"),
    ("lower", "{L}) {o}", "{L}"), ("lower", "({L}) {o}", "({L})"), ("upper", "[{L}] {o}", "{L}"),
    ("digit", "{L}. {o}", "{L}"), ("digit", "({L}) {o}", "{L}"), ("upper", "Option {L}: {o}", "option {L}"),
    ("none", "- {o}", "{o}"), ("none", "* {o}", "{o}"), ("none", "+ {o}", "{o}"),
)

SPEAKERS = (
    ("User", "Assistant"), ("Student", "Teacher"), ("Inquirer", "Responder"), ("Reader", "Expert"), ("Questioner", "Respondent"),
    ("Interviewer", "Specialist"), ("Human", "AI"), ("Learner", "Tutor"), ("Asker", "Answerer"),
    ("Curious reader", "Guide"), ("Friend", "Scholar"), ("Visitor", "Host"),
)
DIALOGUE_INTROS = ("", "", "A conversation about the text:\n", "Discussion:\n", "Two people talk about it.\n")

NUMBERED_STYLES = (
    "Question {i}: {q}\nAnswer {i}: {a}", "{i}. {q}\n{a}", "Q{i}. {q}\nA{i}. {a}", "({i}) {q}\nAnswer: {a}",
    "#{i} {q}\n=> {a}", "Item {i}: {q}\nResponse: {a}",
)

FEWSHOT_STYLES = (  # (intro, example line, final question line)
    ("Worked examples:\n", "{q} -> {a}", "Now you: {q}\n{a}"),
    ("Some questions with answers:\n", "Q: {q} A: {a}", "Your turn. Q: {q} A: {a}"),
    ("Examples first.\n", "Input: {q}\nOutput: {a}", "Input: {q}\nOutput: {a}"),
    ("Learn from these:\n", "{q}\n{a}", "Then answer this: {q}\n{a}"),
)

NEXT_TURN_PHRASES = ("Next question: ", "Follow-up: ", "And another: ", "One more: ", "Then: ", "Also, ",
                     "Building on that: ", "A further question: ")

INVERTED_TEXT_PREFIXES = ("", "Text:\n", "The questions above refer to this passage:\n", "Source text:\n",
                          "Answers come from the following.\n")

LAYOUTS = ("classic", "dialogue", "numbered", "fewshot", "next_turn")
MULTI_PAIR_LAYOUTS = ("numbered", "fewshot", "next_turn")


# ---- pair anatomy --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """A pair taken apart: its kind (qa, mc, cot, mc_cot), question, options, rationale, answer."""

    kind: str
    question: str
    options: tuple[str, ...]
    rationale: str
    answer: str


def anatomy(pair: Pair) -> Anatomy:
    q, a = pair.instruction, pair.response
    cot = q.endswith(COT_TRIGGER) and COT_ANSWER in a
    rationale = ""
    if cot:
        q = q[: -len(COT_TRIGGER)]
        rationale, a = a.rsplit(COT_ANSWER, 1)
    options: tuple[str, ...] = ()
    if OPTIONS_HEADER in q:
        head, block = q.rsplit(OPTIONS_HEADER, 1)
        lines = block.split("\n")
        if lines and all(line.startswith("- ") and line[2:].strip() for line in lines):
            q, options = head, tuple(line[2:].strip() for line in lines)
    kind = ("mc_cot" if cot else "mc") if options else ("cot" if cot else "qa")
    return Anatomy(kind, q.strip(), options, rationale.strip(), a.strip())


def _label(kind: str, i: int) -> str:
    return {"upper": chr(65 + i % 26), "lower": chr(97 + i % 26), "digit": str(i + 1)}.get(kind, "")


def _norm(s: str) -> str:
    return s.strip().rstrip(".").strip().lower()


@dataclass(frozen=True)
class Style:
    """Every choice made once per chain."""

    layout: str
    inverted: bool
    read_prefix: str
    lead_in: str
    qa: str
    mc: str
    mc_keep_options: bool
    mc_plain: str
    cot: str
    mc_cot: str
    marker: tuple[str, str, str]
    speakers: tuple[str, str]
    dialogue_intro: str
    numbered: str
    fewshot: tuple[str, str, str]
    next_turn: str
    inverted_prefix: str
    text_gap: str
    entry_gap: str


def choose_style(rng: random.Random, min_pairs: int) -> Style:
    r = rng.random()
    layout = "classic" if r < 0.81 else LAYOUTS[1 + min(3, int((r - 0.81) / 0.0475))]
    if layout in MULTI_PAIR_LAYOUTS and min_pairs < 2:
        layout = "classic"
    return Style(
        layout=layout, inverted=rng.random() < 0.05, read_prefix=rng.choice(READ_PREFIXES),
        lead_in=rng.choice(LEAD_INS), qa=rng.choice(QA_TEMPLATES), mc=rng.choice(MC_TEMPLATES),
        mc_keep_options=rng.random() < 0.5, mc_plain=rng.choice(MC_NO_OPTIONS_TEMPLATES), cot=rng.choice(COT_TEMPLATES),
        mc_cot=rng.choice(MC_COT_TEMPLATES), marker=rng.choice(OPTION_MARKERS), speakers=rng.choice(SPEAKERS),
        dialogue_intro=rng.choice(DIALOGUE_INTROS), numbered=rng.choice(NUMBERED_STYLES),
        fewshot=rng.choice(FEWSHOT_STYLES), next_turn=rng.choice(NEXT_TURN_PHRASES),
        inverted_prefix=rng.choice(INVERTED_TEXT_PREFIXES), text_gap=rng.choice(("\n\n", "\n")),
        entry_gap=rng.choice(("\n\n", "\n\n\n")),
    )


def _options_and_answer(a: Anatomy, style: Style, rng: random.Random) -> tuple[str, str]:
    """Options shuffled and marked; a lettered answer when the answer is one of the options."""
    order = list(a.options)
    rng.shuffle(order)
    kind, line, answer_fmt = style.marker
    block = "\n".join(line.format(L=_label(kind, i), o=o) for i, o in enumerate(order))
    hit = [i for i, o in enumerate(order) if _norm(o) == _norm(a.answer)]
    if hit and kind != "none":
        return block, answer_fmt.format(L=_label(kind, hit[0]), o=order[hit[0]])
    return block, a.answer


def flat_pair(pair: Pair, style: Style, rng: random.Random) -> tuple[str, str]:
    """(question, answer) strings for the layouts that show any pair the same way."""
    a = anatomy(pair)
    q, ans = a.question, a.answer
    if a.options:
        block, ans = _options_and_answer(a, style, rng)
        q = f"{q}\n{block}"
    if a.rationale:
        ans = f"{a.rationale} So the answer is {ans}."
    return q, ans


def classic_pair(pair: Pair, style: Style, rng: random.Random) -> str:
    a = anatomy(pair)
    q = style.lead_in + a.question
    if a.kind == "qa":
        return style.qa.format(q=q, a=a.answer)
    if a.kind == "cot":
        return style.cot.format(q=q, r=a.rationale, a=a.answer)
    block, ans = _options_and_answer(a, style, rng)
    if a.kind == "mc_cot":
        return style.mc_cot.format(q=q, o=block, r=a.rationale, a=ans)
    if not style.mc_keep_options:
        return style.mc_plain.format(q=q, a=a.answer)
    return style.mc.format(q=q, o=block, a=ans)


def render_pairs(pairs: Sequence[Pair], style: Style, rng: random.Random) -> str:
    if style.layout == "classic":
        return "\n\n".join(classic_pair(p, style, rng) for p in pairs)
    flat = [flat_pair(p, style, rng) for p in pairs]
    if style.layout == "dialogue":
        user, bot = style.speakers
        return style.dialogue_intro + "\n".join(f"{user}: {q}\n{bot}: {a}" for q, a in flat)
    if style.layout == "numbered":
        return "\n".join(style.numbered.format(i=i, q=q, a=a) for i, (q, a) in enumerate(flat, 1))
    if style.layout == "fewshot":
        intro, example, final = style.fewshot
        shots = "\n".join(example.format(q=q, a=a) for q, a in flat[:-1])
        return f"{intro}{shots}\n{final.format(q=flat[-1][0], a=flat[-1][1])}"
    first, *rest = flat
    turns = [f"{first[0]}\n{first[1]}"] + [f"{style.next_turn}{q}\n{a}" for q, a in rest]
    return "\n".join(turns)


# ---- chains --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    text: str
    layout: str  # classic | dialogue | numbered | fewshot | next_turn | raw (no pairs anywhere)
    inverted: bool


def _text_and_pairs(entry) -> tuple[str, Sequence[Pair]]:
    if isinstance(entry, tuple):
        return entry
    if isinstance(entry, dict):
        return entry["text"], [p if isinstance(p, Pair) else Pair.from_dict(p) for p in entry["pairs"]]
    return entry.text, entry.pairs


def render_chain(entries: Sequence, seed: int) -> Rendered:
    """One document from a chain of entries (``(text, pairs)`` tuples, records or ``Entry``).

    Entries share one style; an entry without pairs stays raw text. Never mutates ``entries``.
    """
    parts = [_text_and_pairs(e) for e in entries]
    with_pairs = [len(p) for _, p in parts if p]
    if not with_pairs:
        return Rendered("\n\n".join(t for t, _ in parts), "raw", False)
    rng = random.Random(seed)
    style = choose_style(rng, min(with_pairs))
    docs = []
    for i, (text, pairs) in enumerate(parts):
        if not pairs:
            docs.append(text)
            continue
        block = render_pairs(pairs, style, rng)
        if style.inverted:
            docs.append(f"{block}\n\n{style.inverted_prefix}{text}")
        else:
            docs.append(f"{style.read_prefix if i == 0 else ''}{text}{style.text_gap}{block}")
    return Rendered(style.entry_gap.join(docs), style.layout, style.inverted)


def render_instruction(question: str, response: str) -> str:
    """A general instruction for domain recipes: ``{question} {response}``, no chat template."""
    return f"{question.strip()} {response.strip()}"
