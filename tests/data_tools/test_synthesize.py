"""``python -m data_tools.synthesize`` for real: SmolLM2-135M on PubMed abstracts, end to end into an
indexed dataset through ``data_tools.build_corpora``."""

from __future__ import annotations

import json

import torch

from data_tools import build_corpora, synthesize
from megatron_ipt.data.indexed import IndexedDataset
from megatron_ipt.tokenizer import load_tokenizer
from megatron_ipt.tuning.pubmed import iter_pubmed_records


def test_help_and_bad_settings(capsys):
    assert synthesize.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--engine.kind" in out and "--rounds=2" in out and "SLURM_ARRAY_TASK_ID" in out
    assert synthesize.main(["--inputs=x", "--output-dir=o", "--engine.model=m", "--no_such_key=1"]) == 2
    assert "unknown config key no_such_key" in capsys.readouterr().err
    assert synthesize.main(["--inputs=/nonexistent/*.jsonl", "--output-dir=o", "--engine.model=m"]) == 2
    assert "matches no file" in capsys.readouterr().err


def test_smollm2_pubmed_end_to_end(tmp_path, smollm2_dir, capsys):
    records = list(iter_pubmed_records(limit=2))
    corpus = tmp_path / "pubmed" / "abstracts.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("".join(json.dumps({"id": r.pmid, "text": f"{r.title}\n{r.abstract}"}) + "\n" for r in records))
    argv = [f"--inputs={corpus.parent}", f"--output-dir={tmp_path / 'synth'}", f"--engine.model={smollm2_dir}",
            "--engine.kind=hf", "--engine.batch_size=2", "--rounds=2", "--max-new-tokens=16", "--batch-texts=2",
            "--progress=false"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # decoding 135M params one token at a time: 2 threads only contend on a busy box
    try:
        assert synthesize.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["texts"] == 2
    out = [json.loads(x) for x in (tmp_path / "synth" / "abstracts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [r.pmid for r in records]
    assert [(r["round"], r["slot"]) for r in out] == [(0, 0), (1, 0)]
    stats = json.loads((tmp_path / "synth" / "abstracts.stats.json").read_text())
    assert stats["texts"] == 2 and 2 * 16 >= stats["output_tokens"] > 0
    assert stats["prompt_tokens"] > 2 * 100  # real abstracts, measured with SmolLM2's tokenizer
    # (Untuned, SmolLM2 rarely writes the <QUE>/<ANS> format: texts without pairs stay raw and are counted.)
    assert stats["pairs"] == sum(len(r["pairs"]) for r in out)
    assert sum(stats["pairs_per_text_histogram"].values()) == 2 and sum(stats["finish_reasons"].values()) == 2

    instructions = tmp_path / "general.jsonl"
    instructions.write_text(json.dumps({"question": "What is 2 + 2?", "response": "4."}) + "\n")
    argv = ["--recipe=domain", f"--synthesized={tmp_path / 'synth'}", f"--instructions={instructions}",
            f"--tokenizer={smollm2_dir}", f"--output-dir={tmp_path / 'corpora'}", "--workers=0", "--progress=false"]
    assert build_corpora.main(argv) == 0
    report = json.loads((tmp_path / "corpora" / "mixture_report.json").read_text())
    assert report["synthesis"]["texts"] == 2 and report["synthesis"]["pairs"] == stats["pairs"]
    tok = load_tokenizer(smollm2_dir)
    ds = IndexedDataset(report["components"]["instruct"]["prefix"])
    assert len(ds) == report["components"]["instruct"]["documents"] >= 1
    doc = ds.get(0).tolist()
    assert doc[0] == tok.bos_id and doc[-1] == tok.eos_id
    assert records[0].title in tok.decode(doc[1:-1])
