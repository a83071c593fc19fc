"""build_synthesizer_data CLI: mixed inputs, train/held-out prefixes with mask twins, bad input, --help."""

from __future__ import annotations

import json
from pathlib import Path

from data_tools.build_synthesizer_data import main
from megatron_ipt.data.indexed import IndexedDataset


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    squad = tmp_path / "squad.json"
    squad.write_text(
        json.dumps(
            {
                "data": [
                    {
                        "paragraphs": [
                            {
                                "context": f"Paragraph {i} says the answer is {i}.",
                                "qas": [
                                    {
                                        "question": f"What is the answer in paragraph {i}?",
                                        "answers": [{"text": str(i)}],
                                    }
                                ],
                            }
                            for i in range(30)
                        ]
                    }
                ]
            }
        )
    )
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "".join(
            json.dumps(
                {
                    "context": f"Note {i}.",
                    "pairs": [{"instruction": f"Repeat note {i}.", "response": f"Note {i}."}],
                    "dataset": "notes",
                }
            )
            + "\n"
            for i in range(30)
        )
    )
    return squad, tasks


def test_cli_builds_train_and_heldout(tmp_path: Path, capsys) -> None:
    squad, tasks = _inputs(tmp_path)
    out = tmp_path / "out" / "synth"
    rc = main(
        [
            "--input",
            str(squad),
            "--input",
            str(tasks),
            "--output-prefix",
            str(out),
            "--tokenizer",
            "mistral",
            "--max-length",
            "256",
            "--held-out",
            "0.2",
        ]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert printed["splits"] == summary["splits"]
    assert summary["stats"]["per_dataset"].keys() == {"squad", "notes"}
    assert summary["convert"]["records"] == 60 and summary["convert"]["examples"] == 60
    n = 0
    for split in ("train", "heldout"):
        info = summary["splits"][split]
        docs = IndexedDataset(f"{out}_{split}")
        mask = IndexedDataset(f"{out}_{split}_lossmask")
        assert len(docs) == len(mask) == info["documents"] > 0
        assert (docs.sizes == mask.sizes).all()
        n += info["examples"]
    assert n == 60
    assert (
        len(Path(f"{out}_heldout.examples.jsonl").read_text().splitlines())
        == summary["splits"]["heldout"]["examples"]
    )


def test_cli_bad_input(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"context": "c", "pairs": [{"instruction": "i", "response": "r"}]}\n{"context": 5, "pairs": []}\n'
    )
    out = str(tmp_path / "o")
    assert main(["--input", str(bad), "--output-prefix", out, "--tokenizer", "mistral"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "field 'context'" in err
    assert (
        main(
            [
                "--input",
                str(bad),
                "--output-prefix",
                out,
                "--tokenizer",
                "mistral",
                "--skip-bad",
                "--held-out",
                "0",
            ]
        )
        == 0
    )
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["convert"]["skipped"] == {"bad_field": 1} and summary["splits"]["train"]["examples"] == 1
    assert main(["--format", "squad", "--output-prefix", out, "--tokenizer", "mistral"]) == 2


def test_cli_help(capsys) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "--output-prefix" in text and "--held-out" in text and "pubmed" in text


def test_cli_output_prefix_under_a_file_or_on_a_folder_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"context": "c", "pairs": [{"instruction": "i", "response": "r"}]}\n')
    (tmp_path / "blocker").write_text("x")
    (tmp_path / "folder").mkdir()
    for prefix, says in ((tmp_path / "blocker" / "o", "blocker: a file stands where a folder must be"),
                         (tmp_path / "folder", "folder: a folder stands where the output must be")):
        assert main(["--input", str(good), "--output-prefix", str(prefix), "--tokenizer", "mistral"]) == 2
        err = capsys.readouterr().err
        assert [ln.startswith("error: ") for ln in err.splitlines()].count(True) == 1 and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "folder", "good.jsonl"]
    assert list((tmp_path / "folder").iterdir()) == []
