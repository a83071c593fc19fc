"""The launcher against the real Slurm: node lists as scontrol expands them, NodeAddr lookup."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_ipt.dist_env import expand_hostlist, resolve_host

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

_prefix = st.from_regex(r"[a-z][a-z0-9-]{0,5}", fullmatch=True)


@st.composite
def hostlists(draw) -> str:
    """Compressed node lists of the kind Slurm writes: prefixes, zero-padded ranges, several groups."""
    entries = []
    for _ in range(draw(st.integers(1, 3))):
        prefix = draw(_prefix)
        if draw(st.booleans()):
            entries.append(prefix + str(draw(st.integers(0, 999))))
            continue
        width = draw(st.integers(1, 3))
        ranges = []
        for _ in range(draw(st.integers(1, 3))):
            lo = draw(st.integers(0, 10 ** width - 1))
            hi = draw(st.integers(lo, min(lo + 4, 10 ** width - 1)))
            ranges.append(f"{lo:0{width}d}" if lo == hi else f"{lo:0{width}d}-{hi:0{width}d}")
        entries.append(f"{prefix}[{','.join(ranges)}]")
    return ",".join(entries)


def test_expand_hostlist_matches_scontrol(slurm_cluster) -> None:
    @settings(max_examples=60, deadline=None, database=None)
    @given(hostlists())
    def check(nodelist: str) -> None:
        res = subprocess.run(["scontrol", "show", "hostnames", nodelist], env=slurm_cluster.env,
                             capture_output=True, text=True, check=True)
        assert expand_hostlist(nodelist) == res.stdout.split()

    check()


def test_master_address_from_node_addr(slurm_cluster, monkeypatch) -> None:
    # node1/node2 have no DNS entry here; their NodeAddr comes from `scontrol show node`.
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    assert [resolve_host(n) for n in expand_hostlist("node[1-2]")] == ["127.0.0.2", "127.0.0.3"]


def test_cluster_has_its_own_munge(slurm_cluster) -> None:
    info = slurm_cluster.run(["scontrol", "show", "config"]).stdout
    assert f"socket={slurm_cluster.munge_socket}" in info
    nodes = slurm_cluster.run(["sinfo", "-h", "-N", "-o", "%N %c"]).stdout.split("\n")
    assert [line.split() for line in nodes if line] == [["node1", "2"], ["node2", "2"]]
