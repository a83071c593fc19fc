"""Converters from context-based task collections into tuning examples.

Every converter yields :class:`Example` ``(dataset, context, pairs)``; the tuning-data builder
renders, groups and tokenizes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_ipt.synth.format import Pair


@dataclass
class Example:
    """One context with its instruction-response pairs, tagged with its source dataset."""

    dataset: str
    context: str
    pairs: list[Pair] = field(default_factory=list)
    source: str = ""  # file:line (or similar) for error messages and summaries
