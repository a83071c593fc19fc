"""lm-eval task definitions of the paper's domain suites (AdaptLLM biomedicine and finance data).

The YAMLs here are package data that lm-eval's ``TaskManager(include_path=...)`` reads;
:mod:`megatron_ipt.eval.paper` runs them. ``utils.py`` holds their loaders, per-row results and metrics.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
