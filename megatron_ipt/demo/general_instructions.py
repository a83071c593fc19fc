"""The demo's general-instruction mix (family set (b)): mined offline from Python's standard library.

The paper mixes its domain corpus 1:1 by tokens with general instructions (OpenOrca). No general
instruction set ships inside a package installable here (checked: ``alpaca-eval``,
``databricks-dolly`` and ``easyinstruct`` ship code and leaderboards, not instructions), so this
module mines a general, non-biomedical one from a source every Python installation carries: the
docstrings of a fixed list of standard-library modules, plus arithmetic and word tasks written
over those docstrings' words. Each record is ``{id, family, question, response}``; every family
here is free-form prose or a short literal answer, and none asks about a scientific text, a
sentence's role or a continuation (the evaluation's families, see ``demo/evalsets.py``).

Deterministic: modules are read in a fixed order and every random choice is seeded by record id.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
import warnings
from collections.abc import Iterator

# Side-effect-free modules whose public callables carry useful docstrings (fixed order: the output
# does not depend on what else is installed).
STDLIB_MODULES = (
    "abc", "argparse", "array", "ast", "base64", "binascii", "bisect", "calendar", "cmath", "codecs",
    "collections", "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email.utils", "enum", "fnmatch", "fractions", "functools", "getopt", "gettext",
    "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.cookies", "imaplib", "inspect", "io",
    "ipaddress", "itertools", "json", "keyword", "linecache", "locale", "logging", "lzma", "math",
    "mimetypes", "netrc", "numbers", "operator", "os", "os.path", "pathlib", "pickle", "platform",
    "plistlib", "posixpath", "pprint", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets",
    "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "sqlite3", "statistics",
    "string", "struct", "subprocess", "sysconfig", "tarfile", "tempfile", "textwrap", "threading", "time",
    "timeit", "tokenize", "traceback", "types", "typing", "unicodedata", "urllib.parse", "uuid", "warnings",
    "wave", "weakref", "xml.etree.ElementTree", "zipfile", "zlib",
)

# family -> question phrasings ({name} is a qualified name such as ``os.path.join``).
DESCRIBE = ("Explain what `{name}` does in Python.", "What is the purpose of the Python callable `{name}`?",
            "Describe the behaviour of `{name}` from the Python standard library.",
            "In plain words, what does `{name}` do?")
MODULE_OF = ("Which Python standard-library module provides `{short}`?",
             "Name the module of the Python standard library that defines `{short}`.")
SIGNATURE = ("Write the call signature of the Python callable `{name}`.",
             "What parameters does `{name}` take? Give its signature.")
ARITHMETIC = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate: {a} {op} {b}")
SORT_WORDS = ("Sort these words alphabetically: {words}.", "Put the following words in alphabetical order: {words}.")
COUNT_WORDS = ("How many words does this sentence have? \"{sentence}\"",
               "Count the words in the following sentence: {sentence}")
REVERSE_WORDS = ("Reverse the order of the words in: {sentence}", "Write this sentence with its words in reverse order: {sentence}")
FAMILIES = ("stdlib_describe", "stdlib_module", "stdlib_signature", "arithmetic", "sort_words", "count_words",
            "reverse_words")


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _first_paragraph(doc: str) -> str:
    para = doc.strip().split("\n\n", 1)[0]
    return " ".join(para.split())


def stdlib_callables() -> list[tuple[str, str, str, str]]:
    """``(module, qualified name, signature, docstring paragraph)`` for public documented callables,
    read in a fresh interpreter: libraries imported here may patch the standard library (with torch
    loaded, ``inspect.getfile`` is another module's function), which would change the records."""
    import json
    import subprocess
    import sys

    code = ("import json, sys; from megatron_ipt.demo.general_instructions import scan_stdlib; "
            "json.dump(list(scan_stdlib()), sys.stdout)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [tuple(row) for row in json.loads(out)]


def scan_stdlib() -> Iterator[tuple[str, str, str, str]]:
    """What :func:`stdlib_callables` returns, read in this interpreter as it is."""
    seen: set[int] = set()
    for mod_name in STDLIB_MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                mod = importlib.import_module(mod_name)
            except ImportError:  # a module this build of Python lacks (e.g. without sqlite3)
                continue
        for attr in sorted(vars(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr)
            if not callable(obj) or id(obj) in seen or getattr(obj, "__module__", None) not in (mod_name, None, mod.__name__):
                continue
            doc = inspect.getdoc(obj) or ""
            para = _first_paragraph(doc)
            if len(para.split()) < 6 or para.startswith(("Create and return", "Initialize self")):
                continue
            seen.add(id(obj))
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = ""
            if _ADDRESS.search(sig):  # a default's repr with a memory address differs between processes
                sig = ""
            yield mod_name, f"{mod_name}.{attr}", sig, para


_WORD = re.compile(r"^[A-Za-z]{3,12}$")


def general_instructions(limit: int | None = None) -> Iterator[dict]:
    """General-instruction records ``{id, family, question, response}``, round-robin over families."""
    per_family: dict[str, list[dict]] = {f: [] for f in FAMILIES}
    for i, (module, name, sig, para) in enumerate(stdlib_callables()):
        rng = random.Random(f"general:{name}")
        short = name.rsplit(".", 1)[1]
        per_family["stdlib_describe"].append({"question": rng.choice(DESCRIBE).format(name=name), "response": para})
        per_family["stdlib_module"].append({"question": rng.choice(MODULE_OF).format(short=short),
                                            "response": f"`{short}` is defined in the `{module}` module."})
        if sig:
            per_family["stdlib_signature"].append({"question": rng.choice(SIGNATURE).format(name=name),
                                                   "response": f"{name}{sig}"})
        a, b = rng.randint(2, 999), rng.randint(2, 99)
        op, value = rng.choice((("+", a + b), ("-", a - b), ("*", a * b)))
        per_family["arithmetic"].append({"question": rng.choice(ARITHMETIC).format(a=a, op=op, b=b),
                                         "response": f"{a} {op} {b} = {value}"})
        words = [w.strip(".,;:()`'\"") for w in para.split()]
        plain = sorted({w.lower() for w in words if _WORD.match(w)})
        if len(plain) >= 4:
            picked = rng.sample(plain, min(len(plain), rng.randint(4, 7)))
            per_family["sort_words"].append({"question": rng.choice(SORT_WORDS).format(words=", ".join(picked)),
                                             "response": ", ".join(sorted(picked))})
        sentence = para.split(". ")[0].rstrip(".")
        n_words = len(sentence.split())
        if 4 <= n_words <= 25:
            per_family["count_words" if i % 2 else "reverse_words"].append(
                {"question": rng.choice(COUNT_WORDS if i % 2 else REVERSE_WORDS).format(sentence=sentence),
                 "response": (f"The sentence has {n_words} words." if i % 2
                              else " ".join(reversed(sentence.split())))})
    queues = [[{"id": f"{f}:{k}", "family": f, **rec} for k, rec in enumerate(per_family[f])] for f in FAMILIES]
    n = 0
    while any(queues):
        for q in queues:
            if q:
                yield q.pop(0)
                n += 1
                if limit is not None and n >= limit:
                    return


def general_family_manifest() -> dict[str, dict]:
    """Family name -> wordings and answer format (the demo's manifest, set (b))."""
    wordings = {"stdlib_describe": DESCRIBE, "stdlib_module": MODULE_OF, "stdlib_signature": SIGNATURE,
                "arithmetic": ARITHMETIC, "sort_words": SORT_WORDS, "count_words": COUNT_WORDS,
                "reverse_words": REVERSE_WORDS}
    answers = {"stdlib_describe": "free-form prose (the docstring's first paragraph)",
               "stdlib_module": "one sentence naming the module", "stdlib_signature": "a Python signature",
               "arithmetic": "an equation with its result", "sort_words": "comma-separated words",
               "count_words": "one sentence with a number", "reverse_words": "the words reversed"}
    return {f: {"wordings": list(wordings[f]), "answer_format": answers[f],
                "source": "docstrings of Python's standard library (general, not biomedical)"} for f in FAMILIES}
