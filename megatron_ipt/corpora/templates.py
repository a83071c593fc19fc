"""Render chains of (text, pairs) entries into pre-training documents with diverse templates.

One seed per chain drives every choice (layout, wording, option order and markers), so output is
reproducible; rendering only reads its input. Layout shares follow the reference: classic ~81%,
dialogue / numbered / inline few-shot / next-turn ~5% each (the last three need >= 2 pairs per
entry), and ~5% of chains (classic ones only) put the pairs before the text. The numbered layout
lists every question and then every answer; the lead-in is one sentence after the text; inline
few-shot gives the answer and then its rationale. All wording here is this project's own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from megatron_ipt.pairs import COT_ANSWER, COT_TRIGGER, OPTIONS_HEADER, Pair, normalize

# ---- wording pools -------------------------------------------------------------------------------
# Pools are composed from parts where the parts combine into natural English; each entry is distinct
# (tests check sizes, uniqueness and that every entry renders all of its placeholders).

_READ_VERBS = ("Read", "Study", "Look over", "Go through", "Take a look at", "Review", "Examine", "Consider")
_READ_OBJECTS = ("the passage below", "the following text", "this excerpt", "the article that follows",
                 "the text below")
_READ_LABELS = ("Passage:\n", "Text:\n", "Article:\n", "Excerpt:\n", "Document:\n", "Context:\n",
                "Background:\n", "Reading:\n")
READ_PREFIXES_WORDED = tuple(f"{v} {o}{end}" for v in _READ_VERBS for o in _READ_OBJECTS
                             for end in (":\n\n",)) + _READ_LABELS
READ_PREFIXES = READ_PREFIXES_WORDED + ("",) * len(READ_PREFIXES_WORDED)  # half the chains start bare

# One sentence between a text and its questions (never repeated before each question).
_LEAD_VERBS = ("Answer", "Respond to", "Work through", "Reply to", "Now answer", "Please answer",
               "Try to answer", "Take on")
_LEAD_OBJECTS = (("the questions below", "the question below"), ("the following questions", "the following question"),
                 ("these questions", "this question"))
_LEAD_BASES = (" based on the passage.", " using what the text says.")
_LEAD_SENTENCES = (("Here are some questions about the text.", "Here is a question about the text."),
                   ("The text above answers the questions that follow.", "The text above answers the question that follows."),
                   ("Test your understanding of the passage.", "Test your understanding of the passage."),
                   ("Find out below what the passage says.", "Find out below what the passage says."),
                   ("A few questions on what you just read.", "A question on what you just read."),
                   ("Check what you learned from the reading.", "Check what you learned from the reading."))
_LEAD_FORMS = tuple((f"{v} {many}{b}", f"{v} {one}{b}") for v in _LEAD_VERBS for many, one in _LEAD_OBJECTS
                    for b in _LEAD_BASES) + _LEAD_SENTENCES
LEAD_INS_WORDED = tuple(many for many, _ in _LEAD_FORMS)
LEAD_IN_SINGULAR = dict(_LEAD_FORMS)  # the form for an entry with one pair
LEAD_INS = LEAD_INS_WORDED + ("",) * len(LEAD_INS_WORDED)  # half the chains use no lead-in

_QA_LABELS = (("Question", "Answer"), ("Q", "A"), ("Query", "Response"), ("Prompt", "Reply"),
              ("Problem", "Solution"), ("Ask", "Answer"), ("Input", "Output"), ("Task", "Result"),
              ("Inquiry", "Reply"), ("Quiz", "Answer"), ("Question", "Response"), ("Q", "Answer"),
              ("Prompt", "Completion"), ("Request", "Response"), ("Exercise", "Answer"),
              ("Question", "Reply"), ("Query", "Answer"), ("Question asked", "Answer given"))
QA_TEMPLATES = tuple(f"{x}: {{q}}\n{y}: {{a}}" for x, y in _QA_LABELS) + tuple(
    f"{x}: {{q}} {y}: {{a}}" for x, y in _QA_LABELS[:8]) + (
    "{q}\n{a}", "{q} {a}", "{q}\n\n{a}", "{q}\nThe answer is {a}", "{q}\nAnswer: {a}",
    "Here is a question: {q}\nAnd its answer: {a}", "{q}\nIn short: {a}", "{q}\nReply: {a}",
    "{q} -- {a}", "Someone asked: {q}\nThe reply was: {a}", "{q}\nA short answer: {a}",
    "Answer this question: {q}\n{a}", "{q}\nResponse: {a}", "What is asked: {q}\nWhat is answered: {a}",
    "{q}\nMy answer: {a}", "Question about the text: {q}\nAnswer from the text: {a}",
)

_MC_STEMS = ("{q}", "Question: {q}", "Q: {q}", "Multiple choice: {q}", "Pick the best option. {q}")
_MC_OPTION_INTROS = ("{o}", "Options:\n{o}", "Choices:\n{o}", "Possible answers:\n{o}")
_MC_ANSWERS = ("Answer: {a}", "The correct option is {a}", "The right choice: {a}")
MC_TEMPLATES = tuple(f"{s}\n{o}\n{a}" for s in _MC_STEMS for o in _MC_OPTION_INTROS for a in _MC_ANSWERS)
MC_NO_OPTIONS_TEMPLATES = (  # options dropped: the answer is the option's text
    "{q}\nAnswer: {a}", "Q: {q}\nA: {a}", "{q} {a}", "Question: {q}\nResponse: {a}", "{q}\n{a}",
    "{q}\nThe answer is {a}",
)

_COT_STEMS = ("{q}", "Question: {q}", "Q: {q}", "Problem: {q}", "{q} Explain your reasoning.",
              "Consider this question: {q}")
_COT_REASONS = ("Let's work through it. {r}", "Reasoning: {r}", "Step by step: {r}", "Here is the reasoning. {r}",
                "Thinking it over: {r}", "Explanation: {r}", "Working: {r}")
_COT_CONCLUSIONS = ("So the answer is {a}", "Answer: {a}", "Therefore: {a}", "Final answer: {a}",
                    "Hence the answer: {a}", "That gives {a}")
COT_TEMPLATES = tuple(f"{s}\n{r}\n{c}" for s in _COT_STEMS for r in _COT_REASONS for c in _COT_CONCLUSIONS)

_MC_COT_REASONS = ("Reasoning: {r}", "Let's think it through. {r}", "Explanation: {r}", "Working it out: {r}")
_MC_COT_CONCLUSIONS = ("So the answer is {a}", "Answer: {a}", "The correct choice is {a}", "Final choice: {a}")
MC_COT_TEMPLATES = tuple(f"{s}\n{o}\n{r}\n{c}" for s in _MC_STEMS for o in _MC_OPTION_INTROS
                         for r in _MC_COT_REASONS for c in _MC_COT_CONCLUSIONS)

# (label kind, option line format, answer format): lettered/numbered options answer with their label.
_MARKER_LINES = (("{L}. {o}", "{L}"), ("({L}) {o}", "({L})"), ("{L}) {o}", "{L}"), ("[{L}] {o}", "{L}"),
                 ("{L}: {o}", "{L}"), ("{L} - {o}", "{L}"), ("Option {L}: {o}", "option {L}"),
                 ("Choice {L}: {o}", "choice {L}"), ("{L}. {o}", "{L}. {o}"), ("({L}) {o}", "({L}) {o}"))
_BULLETS = ("- {o}", "* {o}", "+ {o}", "\u2022 {o}", "\u2013 {o}", "> {o}", "{o}", "-- {o}", "=> {o}", "~ {o}")
OPTION_MARKERS = tuple((kind, line, answer) for kind in ("upper", "lower", "digit")
                       for line, answer in _MARKER_LINES) + tuple(("none", b, "{o}") for b in _BULLETS)

_SPEAKER_PAIRS = (
    ("User", "Assistant"), ("Student", "Teacher"), ("Inquirer", "Responder"), ("Reader", "Expert"),
    ("Questioner", "Respondent"), ("Interviewer", "Specialist"), ("Human", "AI"), ("Learner", "Tutor"),
    ("Asker", "Answerer"), ("Curious reader", "Guide"), ("Friend", "Scholar"), ("Visitor", "Host"),
    ("Pupil", "Instructor"), ("Client", "Consultant"), ("Trainee", "Mentor"), ("Patient", "Doctor"),
    ("Journalist", "Researcher"), ("Customer", "Agent"), ("Child", "Parent"), ("Novice", "Veteran"),
    ("Member", "Moderator"), ("Caller", "Operator"), ("Apprentice", "Master"), ("Participant", "Facilitator"),
    ("Listener", "Speaker"),
)
SPEAKERS = _SPEAKER_PAIRS
DIALOGUE_INTROS = ("", "", "A conversation about the text:\n", "Discussion:\n", "Two people talk about it.\n",
                   "The following exchange is about the passage.\n")

# Numbered layout: every question first, then every answer (header, question line, header, answer line).
_NUMBERED_HEADERS = (("Questions:", "Answers:"), ("Answer these questions:", "Answer key:"),
                     ("Here are some questions about the text.", "And their answers:"), ("Quiz:", "Solutions:"),
                     ("Test your understanding:", "Answers:"), ("Questions on the passage:", "Responses:"))
_NUMBERED_LINES = (("{i}. {q}", "{i}. {a}"), ("Q{i}: {q}", "A{i}: {a}"), ("({i}) {q}", "({i}) {a}"),
                   ("Question {i}: {q}", "Answer {i}: {a}"))
NUMBERED_STYLES = tuple((qh, ql, ah, al) for qh, ah in _NUMBERED_HEADERS for ql, al in _NUMBERED_LINES)

FEWSHOT_STYLES = (  # (intro, example line, final question line)
    ("Worked examples:\n", "{q} -> {a}", "Now you: {q}\n{a}"),
    ("Some questions with answers:\n", "Q: {q} A: {a}", "Your turn. Q: {q} A: {a}"),
    ("Examples first.\n", "Input: {q}\nOutput: {a}", "Input: {q}\nOutput: {a}"),
    ("Learn from these:\n", "{q}\n{a}", "Then answer this: {q}\n{a}"),
    ("A few solved questions:\n", "Question: {q}\nAnswer: {a}", "Next question: {q}\nAnswer: {a}"),
    ("Study the pattern.\n", "{q} => {a}", "{q} => {a}"),
    ("Practice with these:\n", "Q. {q}\nA. {a}", "Now try this one. Q. {q}\nA. {a}"),
    ("", "Example: {q}\nSolution: {a}", "Problem: {q}\nSolution: {a}"),
    ("Here are some answered questions.\n", "- {q} {a}", "One more: {q} {a}"),
    ("Solved examples come first, then a new question.\n", "{q}\nAnswer: {a}", "{q}\nAnswer: {a}"),
)
# Inline few-shot shows the answer first and the rationale after it.
FEWSHOT_RATIONALES = ("{a}\nReason: {r}", "{a}\nExplanation: {r}", "{a} (because: {r})", "{a}\nWhy: {r}",
                      "{a} -- reasoning: {r}")
# Other flat layouts (dialogue, numbered, next turn) reason first, then answer.
FLAT_RATIONALES = ("{r} So the answer is {a}", "{r}\nAnswer: {a}", "{r} Therefore: {a}", "{r}\nSo: {a}")

NEXT_TURN_PHRASES = ("Next question: ", "Follow-up: ", "And another: ", "One more: ", "Then: ", "Also, ",
                     "Building on that: ", "A further question: ", "Next: ", "Another one: ", "Moving on: ",
                     "Here is a follow-up: ", "Continuing: ")

INVERTED_TEXT_PREFIXES = ("", "Text:\n", "The questions above refer to this passage:\n", "Source text:\n",
                          "Answers come from the following.\n")

LAYOUTS = ("classic", "dialogue", "numbered", "fewshot", "next_turn")
MULTI_PAIR_LAYOUTS = ("numbered", "fewshot", "next_turn")
INVERT_SHARE = 0.062  # of classic chains: ~5% of all chains, as in the reference; only classic inverts


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
    numbered: tuple[str, str, str, str]
    fewshot: tuple[str, str, str]
    fewshot_rationale: str
    flat_rationale: str
    next_turn: str
    inverted_prefix: str
    text_gap: str
    entry_gap: str


def choose_style(rng: random.Random, min_pairs: int) -> Style:
    r = rng.random()
    layout = "classic" if r < 0.81 else LAYOUTS[1 + min(3, int((r - 0.81) / 0.0475))]
    if layout in MULTI_PAIR_LAYOUTS and min_pairs < 2:
        layout = "classic"
    invert = rng.random() < INVERT_SHARE
    return Style(
        layout=layout, inverted=invert and layout == "classic", read_prefix=rng.choice(READ_PREFIXES),
        lead_in=rng.choice(LEAD_INS), qa=rng.choice(QA_TEMPLATES), mc=rng.choice(MC_TEMPLATES),
        mc_keep_options=rng.random() < 0.5, mc_plain=rng.choice(MC_NO_OPTIONS_TEMPLATES), cot=rng.choice(COT_TEMPLATES),
        mc_cot=rng.choice(MC_COT_TEMPLATES), marker=rng.choice(OPTION_MARKERS), speakers=rng.choice(SPEAKERS),
        dialogue_intro=rng.choice(DIALOGUE_INTROS), numbered=rng.choice(NUMBERED_STYLES),
        fewshot=rng.choice(FEWSHOT_STYLES), fewshot_rationale=rng.choice(FEWSHOT_RATIONALES),
        flat_rationale=rng.choice(FLAT_RATIONALES), next_turn=rng.choice(NEXT_TURN_PHRASES),
        inverted_prefix=rng.choice(INVERTED_TEXT_PREFIXES), text_gap=rng.choice(("\n\n", "\n")),
        entry_gap=rng.choice(("\n\n", "\n\n\n")),
    )


def _options_and_answer(a: Anatomy, style: Style, rng: random.Random) -> tuple[str, str]:
    """Options shuffled and marked; a lettered answer when the answer is one of the options."""
    order = list(a.options)
    rng.shuffle(order)
    kind, line, answer_fmt = style.marker
    block = "\n".join(line.format(L=_label(kind, i), o=o) for i, o in enumerate(order))
    hit = [i for i, o in enumerate(order) if normalize(o) == normalize(a.answer)]
    if hit and kind != "none":
        return block, answer_fmt.format(L=_label(kind, hit[0]), o=order[hit[0]])
    return block, a.answer


def flat_pair(pair: Pair, style: Style, rng: random.Random) -> tuple[str, str]:
    """(question, answer) strings for the layouts that show any pair the same way.

    A rationale comes after the answer in inline few-shot, before it in the other flat layouts.
    """
    a = anatomy(pair)
    q, ans = a.question, a.answer
    if a.options:
        block, ans = _options_and_answer(a, style, rng)
        q = f"{q}\n{block}"
    if a.rationale:
        form = style.fewshot_rationale if style.layout == "fewshot" else style.flat_rationale
        ans = form.format(r=a.rationale, a=ans)
    return q, ans


def classic_pair(pair: Pair, style: Style, rng: random.Random) -> str:
    a = anatomy(pair)
    q = a.question
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
    if style.layout == "numbered":  # all questions, then all answers
        q_head, q_line, a_head, a_line = style.numbered
        questions = "\n".join(q_line.format(i=i, q=q) for i, (q, _) in enumerate(flat, 1))
        answers = "\n".join(a_line.format(i=i, a=a) for i, (_, a) in enumerate(flat, 1))
        return f"{q_head}\n{questions}\n\n{a_head}\n{answers}"
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
        if style.layout == "classic" and style.lead_in and not style.inverted:
            lead_in = style.lead_in if len(pairs) > 1 else LEAD_IN_SINGULAR[style.lead_in]
            block = f"{lead_in}\n{block}"  # one sentence after the text, not one per question
        if style.inverted:
            docs.append(f"{block}\n\n{style.inverted_prefix}{text}")
        else:
            docs.append(f"{style.read_prefix if i == 0 else ''}{text}{style.text_gap}{block}")
    return Rendered(style.entry_gap.join(docs), style.layout, style.inverted)


def render_instruction(question: str, response: str) -> str:
    """A general instruction for domain recipes: ``{question} {response}``, no chat template."""
    return f"{question.strip()} {response.strip()}"
