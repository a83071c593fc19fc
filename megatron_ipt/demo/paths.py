"""Where every artefact of a demo run lives under ``--out`` (one place, read by stages and report)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ARMS = ("vanilla", "instruct")


@dataclass(frozen=True)
class DemoPaths:
    out: Path

    # stage 2: corpus
    @property
    def corpus(self) -> Path:
        return self.out / "corpus"

    @property
    def raw(self) -> Path:
        """Unstructured training-side abstracts: the domain corpus (synthesized, and vanilla's data)."""
        return self.corpus / "raw.jsonl"

    @property
    def heldout_texts(self) -> Path:
        return self.corpus / "heldout_abstracts.jsonl"

    @property
    def mined(self) -> Path:
        """Tasks mined from structured training-side records: the synthesizer's tuning data (families (a))."""
        return self.corpus / "mined_tasks.jsonl"

    @property
    def general_instructions(self) -> Path:
        """``{id, family, question, response}`` general (non-biomedical) instructions of the domain recipe."""
        return self.corpus / "general_instructions.jsonl"

    @property
    def instruction_records(self) -> Path:
        """Chat ``messages`` records of instruction tuning (stage 7): mined training-side examples not
        used for the synthesizer's tuning."""
        return self.corpus / "instruction_tuning.jsonl"

    @property
    def eval_items(self) -> Path:
        """Every evaluation item ``{family, id, query, choices, gold, text}`` (held-out PMIDs only)."""
        return self.corpus / "eval_items.jsonl"

    @property
    def eval_suite(self) -> Path:
        """The lm-evaluation-harness suite: one task YAML and JSONL per evaluation family."""
        return self.corpus / "eval_suite"

    # stage 3: synthesizer
    @property
    def start_model(self) -> Path:
        """The starting model: SmolLM2-135M-Instruct (cached elsewhere) or, for tiny, a random model here."""
        return self.out / "models" / "start"

    @property
    def tuning_data(self) -> Path:
        return self.out / "synthesizer" / "data"

    @property
    def tuning_run(self) -> Path:
        return self.out / "synthesizer" / "run"

    @property
    def synthesizer(self) -> Path:
        return self.out / "models" / "synthesizer"

    # stage 4: synthesis and corpora
    @property
    def synthesis(self) -> Path:
        return self.out / "synthesis"

    @property
    def corpora(self) -> Path:
        return self.out / "corpora"

    # stage 5: continual pre-training
    def run_dir(self, arm: str) -> Path:
        return self.out / "runs" / arm

    def model(self, arm: str) -> Path:
        return self.out / "models" / arm

    # stage 6: evaluation
    @property
    def eval(self) -> Path:
        return self.out / "eval"

    # stage 7: instruction tuning
    @property
    def instruction_data(self) -> Path:
        """build_instruction_data's output prefix."""
        return self.out / "instruction_tuning" / "data" / "chats"

    def tuning_run_dir(self, name: str) -> Path:
        """The instruction-tuning run of continual pre-training run ``name``."""
        return self.out / "instruction_tuning" / "runs" / name

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def plots(self) -> Path:
        return self.out / "plots"

    @property
    def report(self) -> Path:
        return self.out / "REPORT.md"
