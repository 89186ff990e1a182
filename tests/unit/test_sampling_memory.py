"""Memory and swap from one /proc/meminfo read, with psutil's formulas."""

from __future__ import annotations

import sys

import psutil
import pytest

from tests.support.fake_psutil import GIB
from vigil.agent.sampling.memory import linux_memory, linux_swap, read_meminfo

MEMINFO = {
    b"MemTotal:": 16 * GIB,
    b"MemFree:": 2 * GIB,
    b"MemAvailable:": 4 * GIB,
    b"SwapTotal:": 8 * GIB,
    b"SwapFree:": 6 * GIB,
}


@pytest.mark.parametrize(
    ("mems", "memory", "swap"),
    [
        (MEMINFO, (16 * GIB, 4 * GIB, 75.0), (8 * GIB, 25.0)),
        ({**MEMINFO, b"SwapTotal:": 0, b"SwapFree:": 0}, (16 * GIB, 4 * GIB, 75.0), (0, 0.0)),
        ({**MEMINFO, b"MemAvailable:": 20 * GIB}, (16 * GIB, 2 * GIB, 87.5), (8 * GIB, 25.0)),
        ({b"MemTotal:": GIB, b"MemFree:": GIB}, None, None),
        ({}, None, None),
    ],
    ids=["typical", "no-swap", "bogus-available", "old-kernel", "unreadable"],
)
def test_memory_and_swap_from_one_meminfo_read_match_psutils_formulas(
    mems: dict[bytes, int], memory: tuple[int, int, float] | None, swap: tuple[int, float] | None
) -> None:
    """psutil reads /proc/meminfo twice and /proc/vmstat once for the same figures; where a
    figure is missing the caller falls back to psutil (``None``)."""
    assert (linux_memory(mems), linux_swap(mems)) == (memory, swap)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/meminfo")
def test_real_meminfo_gives_psutils_totals() -> None:
    mems = read_meminfo()
    memory, swap = linux_memory(mems), linux_swap(mems)

    assert memory is not None and swap is not None
    assert memory[0] == psutil.virtual_memory().total
    assert swap[0] == psutil.swap_memory().total
    assert abs(memory[2] - psutil.virtual_memory().percent) < 5
