"""Code in an lm-eval task folder, found without running it: tags, .py files, keys outside the plain format."""

from __future__ import annotations

from pathlib import Path

import pytest

import megatron_ipt
from megatron_ipt.task_code import (
    TaskCode,
    TaskFolderError,
    folder_code,
    packaged_suite,
    plain_format_gap,
    read_task_yaml,
)

PLAIN = """task: ipt_sky
dataset_path: json
dataset_kwargs:
  data_files:
    test: "/data/sky.jsonl"
test_split: test
output_type: multiple_choice
doc_to_text: query
doc_to_choice: choices
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "sky.yaml").write_text(PLAIN)
    (tmp_path / "sky.jsonl").write_text("{}\n")
    return tmp_path


def test_a_plain_folder_holds_no_code(folder: Path) -> None:
    assert folder_code(folder) == []
    config, tags = read_task_yaml(folder / "sky.yaml")
    assert tags == [] and plain_format_gap(config) is None


def test_a_function_tag_is_recorded_with_its_line_never_imported(folder: Path) -> None:
    (folder / "sky.yaml").write_text(PLAIN + "process_docs: !function no_such_module.docs\n")
    config, tags = read_task_yaml(folder / "sky.yaml")
    assert tags == [(16, "!function no_such_module.docs")] and config["process_docs"] == "!function"
    first = folder_code(folder)[0]
    assert first == TaskCode(folder / "sky.yaml", 16,
                             "'!function no_such_module.docs' runs Python named by the task folder")
    assert str(first).startswith(f"{folder / 'sky.yaml'}:16: ")


@pytest.mark.parametrize(("edit", "says"), [
    (lambda t: t.replace("doc_to_text: query", "doc_to_text: '{{query}}'"), "doc_to_text: .*a template is code"),
    (lambda t: t + "include: base.yaml\n", "key 'include'"),
    (lambda t: t.replace("dataset_path: json", "dataset_path: hub/set"), "dataset_path: 'hub/set'"),
    (lambda t: t.replace("metric: acc", "metric: exact_match"), "metric_list"),
])
def test_keys_outside_the_plain_format_are_code(folder: Path, edit, says: str) -> None:
    (folder / "sky.yaml").write_text(edit(PLAIN))
    [found] = folder_code(folder)
    assert found.path == folder / "sky.yaml" and found.line is None
    assert __import__("re").search(f"outside the plain task format: {says}", found.what), found.what


def test_python_files_are_listed_after_the_yamls(folder: Path) -> None:
    (folder / "nested").mkdir()
    (folder / "nested" / "utils.py").write_text("x = 1\n")
    (folder / "sky.yaml").write_text(PLAIN + "include: base.yaml\n")
    found = folder_code(folder)
    assert [(c.path.name, c.line) for c in found] == [("sky.yaml", None), ("utils.py", None)]
    assert str(found[1]) == f"{folder / 'nested' / 'utils.py'}: Python in the task folder, which lm-eval's !function imports"


@pytest.mark.parametrize(("text", "says"), [
    ("task: [unclosed\n", r"sky\.yaml:\d+: malformed YAML"),
    ("- a list\n", r"sky\.yaml: a task YAML must be a mapping, got list"),
])
def test_an_unreadable_yaml_is_an_error_naming_the_file(folder: Path, text: str, says: str) -> None:
    (folder / "sky.yaml").write_text(text)
    with pytest.raises(TaskFolderError, match=says):
        folder_code(folder)


def test_packaged_suites_are_the_packages_own(tmp_path: Path) -> None:
    package = Path(megatron_ipt.__file__).resolve().parent
    assert packaged_suite(package / "eval" / "paper_suite") and not packaged_suite(tmp_path)
    assert not packaged_suite(package / ".." / "elsewhere")
