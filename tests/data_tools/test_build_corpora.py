"""``python -m data_tools.build_corpora``: help, errors and a general-recipe run."""

from __future__ import annotations

import json

import yaml

from data_tools import build_corpora
from megatron_ipt.data.blend import Blend
from megatron_ipt.data.indexed import IndexedDataset


def test_help_and_errors(capsys, tmp_path):
    assert build_corpora.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--recipe=" in out and "--instruction_ratio=1.0" in out and "blend.yaml" in out
    assert build_corpora.main(["--recipe=domain", "--synthesized=x", f"--output-dir={tmp_path}"]) == 2
    assert "needs instructions" in capsys.readouterr().err
    assert build_corpora.main(["--recipe=general", f"--synthesized={tmp_path}/none*.jsonl",
                               f"--output-dir={tmp_path}"]) == 2
    assert "matches no file" in capsys.readouterr().err


def test_general_recipe_cli(tmp_path, capsys):
    synth = tmp_path / "synth.jsonl"
    synth.write_text("".join(json.dumps({"id": f"c{i}", "text": f"Converted text {i}.", "round": 0, "slot": i,
                                         "linked": False,
                                         "pairs": [{"instruction": f"What is {i}?", "response": f"It is {i}."}]})
                             + "\n" for i in range(3)))
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"id": f"c{i}" if i < 3 else f"r{i}", "text": f"Raw text {i}."}) + "\n"
                           for i in range(8)))
    argv = ["--recipe=general", f"--synthesized={synth}", f"--raw={raw}", "--tokenizer=mistral",
            f"--output-dir={tmp_path / 'out'}", "--workers=0", "--progress=false"]
    assert build_corpora.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| raw | 5 |" in printed and "train with: --data.train=" in printed
    blend = list(Blend.parse(yaml.safe_load((tmp_path / "out" / "blend.yaml").read_text())["data"]["train"]))
    assert [p.rsplit("/", 1)[-1] for _, p in blend] == ["instruct", "raw"]
    assert abs(sum(w for w, _ in blend) - 1) < 1e-5
    assert [len(IndexedDataset(p)) for _, p in blend] == [3, 5]
