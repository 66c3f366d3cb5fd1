"""Busy neighbours (``engine/local/cpuwatch.py``): what other programs keep busy, from /proc samples the test
writes, and the CPUs that leaves the replicas."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.local.cpuwatch import CpuWatch, Sample, free_cpus, others_cores, process_ticks, system_busy_ticks

STAT = "cpu  1000 20 300 9000 50 5 10 2 0 0\ncpu0 500 10 150 4500 25 2 5 1 0 0\nintr 1 2 3\n"


def test_proc_lines_are_read_as_the_kernel_writes_them() -> None:
    assert system_busy_ticks(STAT) == 1000 + 20 + 300 + 5 + 10 + 2  # user nice system irq softirq steal
    with pytest.raises(ValueError):
        system_busy_ticks("intr 1 2 3\n")
    line = "4242 (python -m (engbot)) S 1 4242 4242 0 -1 4194304 500 0 0 0 730 120 0 0 20 0 5 0 100 0 0"
    assert process_ticks(line) == 730 + 120  # utime + stime, after a name with spaces and parentheses


def test_what_others_keep_busy_and_what_is_left() -> None:
    before, after = Sample(10.0, 1000, 400), Sample(12.0, 1000 + 360, 400 + 160)  # 2 s at 100 ticks a second
    assert others_cores(before, after, ticks_per_s=100) == pytest.approx(1.0)  # (360 - 160) / 100 / 2
    assert others_cores(after, before, ticks_per_s=100) == 0.0
    assert free_cpus(2, 0.0) == 2 and free_cpus(2, 0.5) == 2 and free_cpus(2, 0.7) == 1
    assert free_cpus(2, 3.0) == 1 and free_cpus(8, 2.1) == 6  # at least one; a core counts from 0.6 of one


def test_a_watch_leaves_a_busy_neighbours_cpu_to_it_and_takes_it_back(tmp_path: Path) -> None:
    now = [0.0]
    system, ours = [0], [0]

    def write() -> None:
        (tmp_path / "stat").write_text(f"cpu  {system[0]} 0 0 1000000 0 0 0 0 0 0\n")
        (tmp_path / "77").mkdir(exist_ok=True)
        (tmp_path / "77" / "stat").write_text(f"77 (replica) R 1 1 1 0 -1 0 0 0 0 0 {ours[0]} 0 0 0 20 0 1 0 1 0 0")

    watch = CpuWatch(2, lambda: [77], proc=tmp_path, clock=lambda: now[0])
    write()
    assert watch.update() == 2
    frees = []
    for _ in range(6):  # someone else keeps a core busy: 100 ticks a second beside ours
        now[0] += 1.0
        system[0] += 100 + 50
        ours[0] += 50
        write()
        frees.append(watch.update())
    assert frees[-1] == 1 and watch.others == pytest.approx(1.0, abs=0.05)
    for _ in range(6):  # they stopped
        now[0] += 1.0
        system[0] += 50
        ours[0] += 50
        write()
        frees.append(watch.update())
    assert frees[-1] == 2
