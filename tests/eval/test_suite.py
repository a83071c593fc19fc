"""lm-evaluation-harness suites over local JSONL: written, loaded and scored by lm-eval's own
``simple_evaluate`` on an exported tiny model (no hub at run time)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_ipt.eval.suite import SuiteError, main, suite_tasks, write_suite

ITEMS = [
    {"id": f"q{i}", "query": f"Item {i}: the colour of the sky is", "choices": [" blue", " green", " loud"],
     "gold": i % 3}
    for i in range(6)
]


def test_write_suite_validates_items(tmp_path):
    with pytest.raises(SuiteError, match="item 1"):
        write_suite({"bad": [ITEMS[0], {"query": "x", "choices": ["a"], "gold": 3}]}, tmp_path)
    with pytest.raises(SuiteError, match="no items"):
        write_suite({"empty": []}, tmp_path)
    with pytest.raises(SuiteError, match="no such suite folder"):
        suite_tasks(tmp_path / "nothing")
    (tmp_path / "bare").mkdir()
    with pytest.raises(SuiteError, match="no task YAML"):
        suite_tasks(tmp_path / "bare")


def test_tiny_exported_model_scores_through_simple_evaluate(tmp_path, smollm2_dir, monkeypatch):
    from megatron_ipt.demo.start_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model", tokenizer_dir=smollm2_dir)
    names = write_suite({"sky": ITEMS, "sky_again": ITEMS[:4]}, tmp_path / "suite")
    assert names == ["ipt_sky", "ipt_sky_again"] == sorted(t.name for t in suite_tasks(tmp_path / "suite"))
    # The data path is absolute in the YAML: the suite runs from any working directory.
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "scores.json"
    assert main(["--model", str(model), "--suite", str(tmp_path / "suite"), "--out", str(out), "--device", "cpu"]) == 0
    scores = json.loads(out.read_text())
    sky = scores["tasks"]["ipt_sky"]
    assert sky["n"] == 6 and scores["tasks"]["ipt_sky_again"]["n"] == 4
    assert sky["items"]["id"] == [f"q{i}" for i in range(6)]
    assert set(sky["items"]["acc"]) <= {0.0, 1.0}
    assert sky["acc"] == pytest.approx(sum(sky["items"]["acc"]) / 6)
    assert sky["acc_norm"] == pytest.approx(sum(sky["items"]["acc_norm"]) / 6)


# -- trust: no path or file named on the command line runs code (issue 23 items 5, 6) ----------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, smollm2_dir):
    from megatron_ipt.demo.start_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("suite") / "model", tokenizer_dir=smollm2_dir)


def _run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])  # in process: an escaped exception fails the test itself
    return code, capsys.readouterr().err


def _one_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "error: " in ln]
    assert len(lines) == 1, err
    return lines[0]


SENTINEL_CODE = "import pathlib\npathlib.Path({path!r}).write_text('ran')\n"


def _code_suite(tmp_path, kind: str):
    """A plain suite made into code one way; its Python writes tmp_path/ran when it runs."""
    suite = tmp_path / "suite"
    write_suite({"sky": ITEMS}, suite)
    sentinel = str(tmp_path / "ran")
    task = suite / "sky.yaml"
    if kind == "!function":
        (suite / "utils.py").write_text(SENTINEL_CODE.format(path=sentinel) + "def docs(ds):\n    return ds\n")
        task.write_text(task.read_text() + "process_docs: !function utils.docs\n")
    elif kind == "utils.py":
        (suite / "utils.py").write_text(SENTINEL_CODE.format(path=sentinel))
    elif kind == "!function of the standard library":
        task.write_text(task.read_text() + "process_docs: !function os.system\n")
    elif kind == "template":
        task.write_text(task.read_text().replace("doc_to_text: query",
                                                 "doc_to_text: \"{{ cycler.__init__.__globals__.os.getcwd() }}\""))
    elif kind == "include":
        (suite / "base.txt").write_text("process_docs: !function utils.docs\n")
        task.write_text(task.read_text() + "include: base.txt\n")
    return suite


@pytest.mark.parametrize(("kind", "says"), [
    ("!function", r"sky\.yaml:\d+: '!function utils\.docs' runs Python named by the task folder"),
    ("utils.py", r"utils\.py: Python in the task folder"),
    ("!function of the standard library", r"sky\.yaml:\d+: '!function os\.system' runs Python"),
    ("template", r"sky\.yaml: outside the plain task format: doc_to_text: .*a template is code"),
    ("include", r"sky\.yaml: outside the plain task format: key 'include'"),
])
def test_a_task_folder_with_code_is_refused_without_trust(tmp_path, tiny_model, capsys, kind, says) -> None:
    suite = _code_suite(tmp_path, kind)
    code, err = _run(capsys, "--model", tiny_model, "--suite", suite, "--device", "cpu", "--out", tmp_path / "s.json")
    assert code == 2 and __import__("re").search(says, _one_error(err)), err
    assert "--trust-task-code" in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "s.json").exists()


def test_trusted_task_code_runs_and_packaged_suites_are_trusted(tmp_path, tiny_model, capsys) -> None:
    import megatron_ipt
    from megatron_ipt.eval.suite import packaged_suite

    suite = _code_suite(tmp_path, "!function")
    out = tmp_path / "s.json"
    code, err = _run(capsys, "--model", tiny_model, "--suite", suite, "--device", "cpu", "--out", out,
                     "--trust-task-code")
    assert code == 0, err
    assert (tmp_path / "ran").read_text() == "ran" and json.loads(out.read_text())["tasks"]["ipt_sky"]["n"] == 6
    package = Path(megatron_ipt.__file__).resolve().parent
    assert packaged_suite(package / "eval" / "paper_suite") and not packaged_suite(suite)
    assert not packaged_suite(package / ".." / "elsewhere")


def test_the_model_path_is_a_path_never_model_args(tmp_path, tiny_model, capsys) -> None:
    import shutil

    suite = tmp_path / "suite"
    write_suite({"sky": ITEMS[:3]}, suite)
    comma = tmp_path / "a,b=c"  # model_args would split this
    shutil.copytree(tiny_model, comma)
    out = tmp_path / "s.json"
    code, err = _run(capsys, "--model", comma, "--suite", suite, "--device", "cpu", "--out", out)
    assert code == 0 and json.loads(out.read_text())["tasks"]["ipt_sky"]["n"] == 3, err
    code, err = _run(capsys, "--model", f"{tiny_model},trust_remote_code=True", "--suite", suite, "--device", "cpu")
    assert code == 2 and "trust_remote_code=True: no such model directory" in _one_error(err)
    # A model folder with its own code (auto_map): a known architecture loads as the library's own
    # class; an unknown one is refused in one line. The folder's Python never runs.
    custom = tmp_path / "custom"
    shutil.copytree(tiny_model, custom)
    (custom / "modeling_evil.py").write_text(SENTINEL_CODE.format(path=str(tmp_path / "ran")))
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (custom / "config.json").write_text(json.dumps(config))
    code, err = _run(capsys, "--model", custom, "--suite", suite, "--device", "cpu")
    assert code == 0, err
    (custom / "config.json").write_text(json.dumps({**config, "model_type": "evil"}))
    code, err = _run(capsys, "--model", custom, "--suite", suite, "--device", "cpu")
    assert code == 2 and "custom: cannot load the model" in _one_error(err), err
    assert not (tmp_path / "ran").exists()


# -- bad suites and outputs: one line naming the file, before any scoring (issue 23 items 18, 22, 24) ---


def _bad_suite(tmp_path, case: str) -> Path:
    suite = tmp_path / "suite"
    write_suite({"sky": ITEMS, "sea": ITEMS[:2]}, suite)
    items = suite / "sky.jsonl"
    task = suite / "sky.yaml"
    if case == "duplicate task name":
        task.write_text(task.read_text().replace("task: ipt_sky", "task: ipt_sea"))
    elif case == "quoted task name":
        task.write_text(task.read_text().replace("task: ipt_sky", 'task: "ipt_sky"'))
    elif case == "missing item file":
        items.unlink()
    elif case == "empty item file":
        items.write_text("")
    elif case == "gold out of range":
        items.write_text(json.dumps({**ITEMS[0], "gold": 3}) + "\n")
    elif case == "item without choices":
        items.write_text(json.dumps({"id": "x", "query": "q", "gold": 0}) + "\n")
    elif case == "malformed JSON":
        items.write_text(json.dumps(ITEMS[0]) + "\n{\"query\": \n")
    elif case == "malformed YAML":
        task.write_text("task: [unclosed\n")
    elif case == "no task key":
        task.write_text(task.read_text().replace("task: ipt_sky\n", ""))
    return suite


@pytest.mark.parametrize(("case", "says"), [
    ("duplicate task name", r"sky\.yaml: task 'ipt_sea' is also defined in .*sea\.yaml"),
    ("missing item file", r"sky\.yaml: item file .*sky\.jsonl does not exist"),
    ("empty item file", r"sky\.jsonl: no items"),
    ("gold out of range", r"sky\.jsonl:1: field 'gold': 3 is not an index into its 3 choices"),
    ("item without choices", r"sky\.jsonl:1: field 'choices': missing"),
    ("malformed JSON", r"sky\.jsonl:2: malformed JSON"),
    ("malformed YAML", r"sky\.yaml:\d+: malformed YAML"),
    ("no task key", r"sky\.yaml: field 'task' is missing"),
])
def test_a_bad_suite_is_one_line_naming_the_file(tmp_path, tiny_model, capsys, case, says) -> None:
    suite = _bad_suite(tmp_path, case)
    code, err = _run(capsys, "--model", tiny_model, "--suite", suite, "--device", "cpu")
    assert code == 2 and __import__("re").search(says, _one_error(err)), err


def test_a_quoted_task_name_is_read_as_yaml(tmp_path) -> None:
    suite = _bad_suite(tmp_path, "quoted task name")
    assert sorted(t.name for t in suite_tasks(suite)) == ["ipt_sea", "ipt_sky"]


@pytest.mark.parametrize(("case", "says"), [
    ("missing model", r"nothing: no such model directory"),
    ("no config.json", r"model: not a Hugging Face model directory \(no config\.json\)"),
    ("no model.safetensors", r"model: no weights"),
    ("no tokenizer.json", r"model: no tokenizer files"),
    ("output is a folder", r"s\.json: a folder stands where the output must be"),
    ("output under a file", r"cannot write under .*blocker: a file stands where a folder must be"),
    ("--limit 0", r"--limit must be at least 1"),
])
def test_bad_models_and_outputs_are_one_line_before_scoring(tmp_path, tiny_model, capsys, case, says) -> None:
    import shutil

    suite = tmp_path / "suite"
    write_suite({"sky": ITEMS}, suite)
    model, out, extra = tiny_model, tmp_path / "ok.json", []
    if case == "missing model":
        model = tmp_path / "nothing"
    elif case.startswith("no "):
        model = tmp_path / "model"
        shutil.copytree(tiny_model, model)
        (model / case[3:]).unlink()
    elif case == "output is a folder":
        out = tmp_path / "s.json"
        out.mkdir()
    elif case == "output under a file":
        (tmp_path / "blocker").write_text("x")
        out = tmp_path / "blocker" / "s.json"
    else:
        extra = ["--limit", "0"]
    code, err = _run(capsys, "--model", model, "--suite", suite, "--device", "cpu", "--out", out, *extra)
    assert code == 2 and __import__("re").search(says, _one_error(err)), err
    assert "ipt_sky: acc" not in err  # refused before scoring
