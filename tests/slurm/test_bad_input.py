"""Bad input fails the job fast: a clear message in its log, exit 2, and no step ever launched."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
ONE_NODE = ["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1"]


def cases(root: Path, prefix: str) -> dict[str, tuple[str, dict[str, str], list[str], str]]:
    """name -> (script, environment, script arguments, the message the log must hold)."""
    missing = root / "nowhere"
    tiny = {"CONFIG": "configs/tiny.yaml", "RUNS_DIR": str(root / "runs"), "RUN_NAME": "bad"}
    return {
        "missing_data_prefix": (
            "pretrain_500M.sh", {**tiny, "DATA": f"0.5 {prefix} 0.5 {missing}/corpus_text_document"}, [],
            f"data.train: data prefix '{missing}/corpus_text_document': missing {missing}/corpus_text_document.bin",
        ),
        "missing_checkpoint_dirs": (  # every problem is reported, not just the first
            "continual_pretrain_8B.sh", {**tiny, "DOMAIN": "finance", "DATA": prefix, "INIT_FROM": f"{missing}/llama3-8b",
                                         "RESUME": f"{missing}/step_00000100"}, [],
            f"model.init_from: checkpoint directory '{missing}/llama3-8b' does not exist\n"
            f"  - checkpoint.resume: checkpoint '{missing}/step_00000100' does not exist",
        ),
        "unknown_domain": (
            "continual_pretrain_8B.sh", {**tiny, "DOMAIN": "law", "DATA": prefix}, [],
            "DOMAIN must be biomedicine or finance (got 'law')",
        ),
        "unknown_config_key": (
            "pretrain_1.3B.sh", {**tiny, "DATA": prefix}, ["--optim.learning_rate=1e-5"], "optim.learning_rate",
        ),
        "missing_config": (
            "tune_synthesizer.sh", {**tiny, "CONFIG": "configs/no_such.yaml", "DATA": prefix}, [],
            "training config 'configs/no_such.yaml' not found",
        ),
        "instruction_tune_missing_model": (
            "instruction_tune.sh", {**tiny, "CONFIG": "configs/instruction_tune_tiny.yaml", "DATA": prefix,
                                    "INIT_FROM": f"{missing}/cpt_hf"}, [],
            f"model.init_from: checkpoint directory '{missing}/cpt_hf' does not exist",
        ),
        "unparsable_node_list": (
            # Slurm sets no SLURM_STEP_NODELIST in the batch shell; one passed in wins over the job's.
            "preprocess.sh", {"INPUT": prefix + ".bin", "OUTPUT_PREFIX": str(root / "x"),
                              "RUNS_DIR": str(root / "runs"), "SLURM_STEP_NODELIST": "node[1-"}, [],
            "cannot parse Slurm node list 'node[1-': unbalanced '['",
        ),
        "missing_synthesizer": (
            "synthesize.sh", {"INPUTS": f"{missing}/shard.jsonl", "OUTPUT_DIR": str(root / "out"),
                              "MODEL": f"{missing}/synth", "RUNS_DIR": str(root / "runs")}, [],
            f"required directory '{missing}/synth' does not exist",
        ),
        "missing_preprocess_input": (
            "preprocess.sh", {"INPUT": f"{missing}/corpus.jsonl", "OUTPUT_PREFIX": str(root / "tok" / "x"),
                              "RUNS_DIR": str(root / "runs")}, [],
            f"required input '{missing}/corpus.jsonl' does not exist",
        ),
        "no_checkout": (
            "pretrain_500M.sh", {**tiny, "IPT_ROOT": str(missing)}, [],
            f"cannot find the megatron-ipt checkout (IPT_ROOT={missing})",
        ),
    }


@pytest.fixture(scope="module")
def failed_jobs(slurm_cluster, pubmed_prefix) -> dict[str, tuple[dict[str, str], str, str]]:
    """Submit every case at once (they run side by side on the two nodes); name -> (info, log, expected)."""
    root = slurm_cluster.root / "bad"
    root.mkdir()
    submitted = {}
    for name, (script, env, args, expected) in cases(root, pubmed_prefix["prefix"]).items():
        options = [*ONE_NODE, f"--job-name=bad_{name}"] + (["--array=0"] if script == "synthesize.sh" else [])
        jid = slurm_cluster.sbatch(REPO / "slurm" / script, options, args, env=env)
        submitted[name] = (jid, expected, script == "synthesize.sh")
    out = {}
    for name, (jid, expected, is_array) in submitted.items():
        info = slurm_cluster.wait(jid, timeout=120)
        log = slurm_cluster.job_log(f"bad_{name}", f"{jid}_0" if is_array else jid)
        out[name] = (info, log, expected)
    return out


@pytest.mark.parametrize("name", list(cases(Path("/x"), "p")))
def test_bad_input_fails_fast(failed_jobs, name: str) -> None:
    info, log, expected = failed_jobs[name]
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0"), log
    assert expected in log, log
    assert "[ipt] error:" in log
    assert "launch: srun" not in log  # nothing was started on the allocation
