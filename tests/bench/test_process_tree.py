"""bench.common's helpers for servers of several processes: the CPU of a process tree read from /proc, the
CPU lists of ``--cpus``, the worker counts of ``--workers``, and how the workers' CPU is split."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bench.common import (CpuSplit, ProcStat, cpu_delta, cpu_list, descendants, listening_in, parse_cpu_list,
                          parse_stat, parse_workers, pinned, process_tree, role_cpu_per_call, role_of, rss_bytes,
                          tree_cpu_s, tree_rss_bytes, worker_shares)

TICKS = os.sysconf("SC_CLK_TCK")


def test_a_stat_line_gives_parent_and_cpu_even_with_spaces_in_the_name() -> None:
    line = f"4243 (python -m x) S 4242 4242 1 0 -1 4194304 1 0 0 0 {3 * TICKS} {TICKS} {2 * TICKS} 0 20 0 1 0"
    assert parse_stat(line) == ProcStat(4243, 4242, 4.0, 2.0)


def test_descendants_walk_the_whole_tree_and_nothing_beside_it() -> None:
    parent_of = {10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20}
    assert descendants(10, parent_of) == [10, 11, 13, 12]
    assert descendants(21, parent_of) == [21]


def test_tree_cpu_counts_reaped_children_too() -> None:
    assert tree_cpu_s([ProcStat(1, 0, 1.5, 0.5), ProcStat(2, 1, 2.0, 0.0)]) == pytest.approx(4.0)


@contextlib.contextmanager
def parent_and_child(child_code: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A real process whose one child runs ``child_code`` (which prints a line once it is set up); yields the
    parent and the child's pid once that line came, and kills both after."""
    code = (f"import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', {child_code!r}], "
            "stdout=subprocess.PIPE); c.stdout.readline(); print(c.pid, flush=True); c.wait()")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        yield parent, child
    finally:
        parent.kill()
        parent.wait(5)
        if child:
            os.kill(child, 9)


def test_the_tree_of_a_real_process_holds_its_child_and_its_cpu() -> None:
    burn = ("import time\nprint(1, flush=True)\nt = time.process_time()\n"
            "while time.process_time() - t < 0.6: pass\ntime.sleep(60)")
    with parent_and_child(burn) as (parent, child):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tree = process_tree(parent.pid)
            if [s.pid for s in tree] == [parent.pid, child] and tree[1].cpu_s >= 0.5:
                break
            time.sleep(0.1)
        assert [s.pid for s in tree] == [parent.pid, child]
        assert tree[1].ppid == parent.pid and tree[1].cpu_s >= 0.5
        assert tree_cpu_s(tree) >= tree[1].cpu_s


def test_the_rss_of_a_tree_counts_a_childs_memory() -> None:
    hold = "import time\nb = bytearray(64 << 20)\nprint(1, flush=True)\ntime.sleep(60)"
    with parent_and_child(hold) as (parent, child):
        total = tree_rss_bytes(parent.pid)
        assert total >= rss_bytes(parent.pid) + (64 << 20)
        assert tree_rss_bytes(child) < total


@pytest.mark.parametrize("text, cpus", [("0", {0}), ("0,2", {0, 2}), ("0-3,6", {0, 1, 2, 3, 6}), (" 1 ", {1})])
def test_cpu_lists_parse_as_taskset_writes_them(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus
    assert parse_cpu_list(cpu_list(cpus)) == cpus


@pytest.mark.parametrize("text", ["", "a", "3-1", "-1", "1,,2"])
def test_bad_cpu_lists_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="CPU list"):
        parse_cpu_list(text)


def test_cpus_split_servers_from_the_load_generator() -> None:
    split = CpuSplit.parse("1:0")
    assert (split.server, split.loadgen) == ({1}, {0})
    assert str(split) == "servers on CPU 1, load generator on CPU 0"
    assert str(CpuSplit.parse(None)) == "not pinned" and not CpuSplit.parse("").server
    assert cpu_list({0, 1, 2, 5}) == "0-2,5"
    for bad in ("1", "1:", ":0"):
        with pytest.raises(ValueError, match="--cpus"):
            CpuSplit.parse(bad)


def test_pinned_runs_under_taskset_only_when_cpus_are_given() -> None:
    assert pinned(["x", "-y"], ()) == ["x", "-y"]
    assert pinned(["x"], {0, 1}) == ["taskset", "-c", "0-1", "x"]


def test_worker_counts() -> None:
    assert parse_workers("1,2") == (1, 2) and parse_workers("4") == (4,)
    for bad in ("0", "1,1", "x", ""):
        with pytest.raises(ValueError, match="--workers"):
            parse_workers(bad)


def test_roles_are_read_from_the_argv() -> None:
    py = sys.executable
    assert role_of([py, "-m", "server.ops.worker", "--index", "1", "--port", "5"]) == "worker 1"
    assert role_of([py, "-m", "server.ops.learner_process", "--port", "5"]) == "learner"
    assert role_of([py, "-m", "server", "serve", "--workers", "2"]) == "server"


def test_the_workers_cpu_split_is_over_all_runs_and_leaves_other_roles_out() -> None:
    runs = [{"server_cpu_by_role_s": cpu_delta({"worker 0": 1.0, "learner": 0.0},
                                               {"worker 0": 2.0, "worker 1": 1.0, "learner": 5.0, "server": 0.1})},
            {"server_cpu_by_role_s": {"worker 0": 1.0, "worker 1": 1.0}}]
    assert runs[0]["server_cpu_by_role_s"] == {"worker 0": 1.0, "worker 1": 1.0, "learner": 5.0, "server": 0.1}
    assert worker_shares(runs) == {"worker 0": 0.5, "worker 1": 0.5}
    assert worker_shares([{"server_cpu_by_role_s": {"server": 1.0}}]) == {}


def test_listening_sockets_are_counted_per_port_and_bound_ones_left_out() -> None:
    table = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
             "   0: 0100007F:C350 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1\n"
             "   1: 0100007F:C350 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 2\n"
             "   2: 0100007F:C350 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000 0 3\n"
             "   3: 0100007F:C351 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 4\n"
             "   4: 0100007F:C350 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000 0 5\n")
    assert listening_in(table, 50000) == 2 and listening_in(table, 50001) == 1 and listening_in(table, 1) == 0


def test_cpu_per_call_by_kind_of_process_adds_the_workers_up() -> None:
    runs = [{"server_calls": 1000, "server_cpu_by_role_s": {"worker 0": 0.3, "worker 1": 0.2, "learner": 0.05,
                                                            "server": 0.001}},
            {"server_calls": 1000, "server_cpu_by_role_s": {"worker 0": 0.25, "worker 1": 0.25, "learner": 0.05}}]
    got = role_cpu_per_call(runs)
    assert got == pytest.approx({"workers": 500.0, "learner": 50.0, "server": 0.5})
    assert role_cpu_per_call([]) == {}
