"""Code in an lm-eval task folder, found without running any of it.

An lm-eval task folder can be code: a ``!function`` tag imports Python from the folder (or any
module), and Jinja templates, includes and hooks run in lm-eval's process. A folder is data only
when every task YAML is in the plain format that :func:`megatron_ipt.eval.suite.write_suite` writes
(bare field names, local JSON items, ``acc``/``acc_norm`` by mean), no YAML has a ``!`` tag, and no
``.py`` file sits in it. :func:`folder_code` lists everything else, each with its file and reason;
the offline scorer (``eval.suite``) and the trainer's in-loop evaluation (``train.downstream``) both
refuse such a folder unless told to trust it. Suites shipped inside the package are trusted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import megatron_ipt


class TaskFolderError(ValueError):
    """A task YAML that cannot be read as a mapping; the message names the file (and line)."""


@dataclass(frozen=True)
class TaskCode:
    """One piece of code in a task folder: its file, line (None: the whole file or config) and what it is."""

    path: Path
    line: int | None
    what: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.what}"


class _TaskYaml(yaml.SafeLoader):
    """lm-eval task YAML read as data: each ``!tag`` (``!function utils.f``) is recorded, never imported."""

    tags: list[tuple[int, str]]


def _record_tag(loader: _TaskYaml, suffix: str, node: yaml.Node) -> str:
    loader.tags.append((node.start_mark.line + 1, f"!{suffix} {getattr(node, 'value', '')}".strip()))
    return f"!{suffix}"


_TaskYaml.add_multi_constructor("!", _record_tag)

# write_suite's task format: plain data that lm-eval reads without running anything of the folder's.
_PLAIN_FIXED = {"dataset_path": "json", "test_split": "test", "output_type": "multiple_choice"}
_PLAIN_KEYS = {"task", "dataset_kwargs", "doc_to_text", "doc_to_choice", "doc_to_target", "target_delimiter",
               "metric_list", *_PLAIN_FIXED}
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def packaged_suite(suite_dir: str | Path) -> bool:
    """Whether ``suite_dir`` lies inside the installed package (its suites and their code are ours)."""
    package = Path(megatron_ipt.__file__).resolve().parent
    return package in Path(suite_dir).resolve().parents


def read_task_yaml(path: Path) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """A task YAML as a mapping, and its ``!`` tags with their lines (:class:`TaskFolderError` if unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TaskFolderError(f"{path}: cannot read the task YAML ({err})") from None
    loader = _TaskYaml(text)
    loader.tags = []
    try:
        config = loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise TaskFolderError(f"{where}: malformed YAML ({getattr(err, 'problem', None) or err})") from None
    finally:
        loader.dispose()
    if not isinstance(config, dict):
        raise TaskFolderError(f"{path}: a task YAML must be a mapping, got {type(config).__name__}")
    return config, loader.tags


def plain_format_gap(config: dict[str, Any]) -> str | None:
    """Why a task config is outside write_suite's plain format (None: it is plain)."""
    extra = sorted(set(config) - _PLAIN_KEYS)
    if extra:
        return f"key {extra[0]!r} (hooks, includes and templates can run code)"
    for key, value in _PLAIN_FIXED.items():
        if config.get(key) != value:
            return f"{key}: {config.get(key)!r} (the plain format has {value!r})"
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target"):
        if not isinstance(config.get(key), str) or not _FIELD_NAME.fullmatch(config[key]):
            return f"{key}: {config.get(key)!r} (the plain format names a field; a template is code)"
    files = (config.get("dataset_kwargs") or {}) if isinstance(config.get("dataset_kwargs"), dict) else None
    if files is None or set(files) != {"data_files"} or not isinstance(files["data_files"], dict) \
            or set(files["data_files"]) != {"test"} or not isinstance(files["data_files"]["test"], str):
        return "dataset_kwargs (the plain format has only data_files: {test: FILE})"
    if not isinstance(config.get("target_delimiter", ""), str):
        return "target_delimiter (a string)"
    metrics = config.get("metric_list", [])
    if not isinstance(metrics, list) or any(
            not isinstance(m, dict) or m.get("metric") not in ("acc", "acc_norm")
            or m.get("aggregation", "mean") != "mean" or set(m) - {"metric", "aggregation", "higher_is_better"}
            for m in metrics):
        return "metric_list (the plain format scores acc and acc_norm, aggregated by mean)"
    return None


def yaml_code(path: Path, config: dict[str, Any], tags: list[tuple[int, str]]) -> list[TaskCode]:
    """The code of one task YAML read by :func:`read_task_yaml`: its ``!`` tags, then any departure
    from the plain format."""
    found = [TaskCode(path, line, f"'{tag}' runs Python named by the task folder") for line, tag in tags]
    gap = plain_format_gap(config)
    if gap is not None:
        found.append(TaskCode(path, None, f"outside the plain task format: {gap}"))
    return found


def folder_code(folder: str | Path) -> list[TaskCode]:
    """Every piece of code in a task folder (its YAMLs found as lm-eval finds them, ``**/*.yaml``, then
    its ``.py`` files); empty for a data-only folder. A YAML that cannot be read is a :class:`TaskFolderError`."""
    root = Path(folder)
    found: list[TaskCode] = []
    for path in sorted(root.rglob("*.yaml")):
        found += yaml_code(path, *read_task_yaml(path))
    found += [TaskCode(py, None, "Python in the task folder, which lm-eval's !function imports")
              for py in sorted(root.rglob("*.py"))]
    return found
