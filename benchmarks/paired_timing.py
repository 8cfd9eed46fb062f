"""Timing two implementations against each other on a shared, noisy machine: paired ratios.

Both sides run alternately, in ABBA order (on, off, off, on, on, off, ...), so each timed call of
one side has a call of the other right next to it: load from other jobs changes over seconds,
slower than one pair, and so hits both members of a pair alike. Each pair gives a ratio; the
median of the ratios ignores the pairs hit by a burst, and its distribution-free 95 % confidence
interval (order statistics of the binomial) says whether the run can tell a 5 % difference at all.
Both wall time and process CPU time are kept: CPU time does not count the time the process waits
for a core, so it moves less under load; on an idle machine the two agree.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Ratio:
    """Median of paired ratios a/b with its 95 % confidence interval."""

    median: float
    low: float
    high: float
    pairs: int

    def __str__(self) -> str:
        return f"{self.median:.3f} (95% CI {self.low:.3f}–{self.high:.3f}, {self.pairs} pairs)"


def median_confidence_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median: the order statistics ``(k, n - k + 1)`` with
    the largest ``k`` such that ``P(Binomial(n, ½) < k) <= (1 - confidence) / 2``."""
    ordered = sorted(values)
    n = len(ordered)
    tail = (1 - confidence) / 2
    k, cumulative = 0, 0.0
    while k < n:
        cumulative += math.comb(n, k) / 2**n
        if cumulative > tail:
            break
        k += 1
    if k == 0:  # too few values for this confidence: the full range
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


def paired_ratio(a: list[float], b: list[float]) -> Ratio:
    """Median and confidence interval of ``a[i] / b[i]``."""
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    low, high = median_confidence_interval(ratios)
    return Ratio(statistics.median(ratios), low, high, len(ratios))


def settle_allocator() -> bool:
    """Fix glibc's allocation thresholds (mmap threshold at its maximum, 32 MB; no trimming);
    returns whether it could (False off glibc).

    glibc serves a large block either from freed heap memory or from newly mapped pages (one page
    fault per 4 KB, counted in CPU time), by thresholds it adapts to the history of frees, so
    which of two alternating calls with equal outputs pays the faults is an accident of order.
    Measured in ABBA order at ``[5120, 1, 16, 64]`` (21 MB outputs): counted call by call, every
    ``tar_attention`` output took 5,120 faults and no SDPA output did; over 22 calls of a second
    round in fresh processes, ~51,000 faults and TAR/SDPA 1.1–2.5 in 11 of 12 processes by
    default, none and 0.94–1.10 in 4 of 4 settled.
    glibc's choices still depend on the heap's layout, so this makes faults rarer, not impossible.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def alternate(
    first: Callable[[], None],
    second: Callable[[], None],
    *,
    pairs: int,
    warmup: int = 1,
    repeat: int = 1,
    synchronize: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Time ``pairs`` samples of each, in ABBA order after ``warmup`` untimed calls of each; a
    sample is ``repeat`` calls in a row.

    Repeating short calls keeps what lies outside them (OpenMP workers spinning after a parallel
    region, which counts as CPU time, and the timer calls) a small part of each sample.

    Returns wall and process-CPU seconds per sample: keys ``first_wall``, ``first_cpu``,
    ``second_wall``, ``second_cpu``, each a list in pair order.
    """

    def timed(fn: Callable[[], None]) -> tuple[float, float]:
        synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            fn()
        synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu

    for _ in range(warmup):
        first()
        second()
    times: dict[str, list[float]] = {"first_wall": [], "first_cpu": [], "second_wall": [], "second_cpu": []}
    for pair in range(pairs):
        order = (("first", first), ("second", second))
        for name, fn in order if pair % 2 == 0 else order[::-1]:
            wall, cpu = timed(fn)
            times[f"{name}_wall"].append(wall)
            times[f"{name}_cpu"].append(cpu)
    return times
