"""The installable package: a wheel with the console commands and the shipped configs, installed into a
throwaway venv and run from a directory outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel --no-deps .`` of a copy of the checkout (so no build/ lands in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("megatron_ipt", "data_tools", "configs", "ds_configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the suite's setuptools builds it (an isolated build would need the index).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(out), str(src)], check=True, env=_clean_env(), cwd=out)
    (whl,) = out.glob("megatron_ipt-*.whl")
    return whl


def test_wheel_has_commands_configs_and_every_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"ipt-preprocess", "ipt-train", "ipt-synthesize", "ipt-demo", "ipt-launch"} <= set(scripts)
    for command, target in scripts.items():
        assert f"{command} = {target}" in text
    for folder in ("configs", "ds_configs"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file():
                assert f"megatron_ipt/{path.relative_to(REPO).as_posix()}" in names, path
    # The paper's lm-eval task definitions are package data next to their code.
    for path in (REPO / "megatron_ipt" / "eval" / "paper_tasks").iterdir():
        if path.is_file() and (path.suffix in (".yaml", ".py") or path.name.endswith("_yaml")):
            assert path.relative_to(REPO).as_posix() in names, f"{path.name}: add it to pyproject package-data"
    for init in list(REPO.glob("megatron_ipt/**/__init__.py")) + [REPO / "data_tools" / "__init__.py"]:
        assert init.relative_to(REPO).as_posix() in names, f"{init.parent.name}: add it to pyproject packages"


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The suite's site-packages (torch, transformers, ...) visible after the venv's own.
    Path(site, "suite.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = _clean_env()
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed",
                    "--no-warn-script-location", str(wheel)], check=True, env=env, cwd=tmp_path)
    bin_dir = env_dir / "bin"
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, cwd=work,
                              timeout=600)

    proc = run(bin_dir / "ipt-preprocess", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--output_prefix=" in proc.stdout and "--tokenizer-model" in proc.stdout
    where = run(python, "-c", "import megatron_ipt, json; from megatron_ipt import resources; "
                "from megatron_ipt.train.config import TrainConfig; from megatron_ipt.train.ds_config import "
                "load_ds_json; load_ds_json(TrainConfig().ds_config); "
                "print(json.dumps([megatron_ipt.__file__, str(resources.resolve('configs/tiny.yaml'))]))")
    assert where.returncode == 0, where.stderr
    package, tiny = json.loads(where.stdout.strip().splitlines()[-1])
    assert Path(package).is_relative_to(env_dir) and Path(tiny).is_relative_to(env_dir)

    from megatron_ipt.tuning.pubmed import iter_pubmed_records

    records = [f"{r.title}\n{r.abstract}" for r in iter_pubmed_records(limit=24)]
    (work / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in records))
    proc = run(bin_dir / "ipt-preprocess", "--input", "corpus.jsonl", "--output-prefix", "out/data",
               "--tokenizer", "mistral", "--workers", "0", "--append-eod", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["written"] == len(records)
    assert (work / "out" / "data_text_document.bin").stat().st_size > 0
    # A tiny train run on it: the shipped configs/tiny.yaml and its default ds_configs/zero2.json
    # come from the installed package, the data and outputs from this directory.
    proc = run(bin_dir / "ipt-train", "--config", "configs/tiny.yaml", "--data.train=out/data_text_document",
               "--steps=2", "--run_dir=run", "--checkpoint.dir=run/ckpt", "--logging.interval=1",
               "--logging.tensorboard=false", "--logging.eval_interval=0")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    steps = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps if m["kind"] == "train"] == [1, 2]
    proc = run(bin_dir / "ipt-merge", "--input", "nothing", "--output-prefix", "m")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
