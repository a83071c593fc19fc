"""The tuning data's record types: one :class:`Example` (a context with its pairs), the converters'
:class:`ConvertError` and their :class:`ConvertStats` (nothing is dropped without a count)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from megatron_ipt.data.inputs import DataError
from megatron_ipt.pairs import Pair


@dataclass
class Example:
    """One context with its instruction-response pairs, tagged with its source dataset."""

    dataset: str
    context: str
    pairs: list[Pair] = field(default_factory=list)
    source: str = ""  # file:line (or similar) for error messages and summaries

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "context": self.context,
            "pairs": [p.to_dict() for p in self.pairs],
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Example:
        return cls(d["dataset"], d["context"], [Pair.from_dict(p) for p in d["pairs"]], d.get("source", ""))


class ConvertError(DataError):
    """The readers' :class:`DataError`, spelled positionally: ``file:line: field 'x': message``."""

    def __init__(self, where: str, field_name: str | None, message: str, reason: str = "bad_record") -> None:
        super().__init__(message, where=where, field=field_name, reason=reason)


@dataclass
class ConvertStats:
    """What the converters read and skipped (by reason); nothing is dropped without a count here."""

    records: int = 0
    examples: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def skip(self, err: ConvertError) -> None:
        self.skipped[err.reason] += 1
        if len(self.first_errors) < 20:
            self.first_errors.append(str(err))

    def to_dict(self) -> dict:
        return {
            "records": self.records,
            "examples": self.examples,
            "skipped": dict(sorted(self.skipped.items())),
            "first_errors": self.first_errors,
        }
