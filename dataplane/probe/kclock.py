"""Kernel time for the probes: the kernel's HZ, and jiffies (what the probes stamp events with) as
unix seconds.

Why jiffies: the verifier inlines bpf_jiffies64() into one load, where bpf_ktime_get_ns() and
bpf_ktime_get_boot_ns() are helper calls; on the machine bench/probe_overhead.py ran on, one such
call added ~45 ns to a drop probe run of ~230 ns (bpf_stats), while jiffies added nothing
measurable. The price is resolution (one tick: 4 ms at HZ=250), which is plenty for "the last drop
was 40 s ago".

Jiffies advance in lockstep with CLOCK_MONOTONIC: the kernel adds one per TICK_NSEC of monotonic
time (tick_do_update_jiffies64), so one reference pair (monotonic ns, jiffies) read at start and HZ
turn any later jiffies value into monotonic time, and the offset between CLOCK_MONOTONIC and
time.time() read at conversion turns that into unix seconds. Like CLOCK_MONOTONIC, jiffies stand
still while the machine is suspended: an age that spans a suspend is short by its length.
"""
from __future__ import annotations

import gzip
import os
import time
from pathlib import Path
from typing import Callable, Optional

KNOWN_HZ = (100, 250, 300, 1000)


def _timer_list_sample() -> tuple[int, int]:
    """(monotonic ns, jiffies) from /proc/timer_list (root only): its "now at" line, then the first
    "jiffies:" line after it (read microseconds later, in the same pass)."""
    now = None
    with open("/proc/timer_list") as f:
        for line in f:
            if now is None and line.startswith("now at "):
                now = int(line.split()[2])
            elif line.startswith("jiffies: ") and now is not None:
                return now, int(line.split()[1])
    raise ValueError("no jiffies in /proc/timer_list")


def _config_hz() -> Optional[int]:
    """CONFIG_HZ of the running kernel from /proc/config.gz or /boot/config-<release>, if there."""
    release = os.uname().release
    for path, opener in ((Path("/proc/config.gz"), gzip.open), (Path(f"/boot/config-{release}"), open)):
        try:
            with opener(path, "rt") as f:
                for line in f:
                    if line.startswith("CONFIG_HZ="):
                        hz = int(line.split("=", 1)[1])
                        return hz if hz > 0 else None
        except (OSError, ValueError, EOFError):
            continue
    return None


def measure_hz(pause: float = 0.2) -> Optional[int]:
    """HZ from two readings of /proc/timer_list `pause` seconds apart, rounded to a known value;
    None when it cannot be read or makes no sense."""
    try:
        n0, j0 = _timer_list_sample()
        time.sleep(pause)
        n1, j1 = _timer_list_sample()
    except (OSError, ValueError, IndexError):
        return None
    if n1 <= n0:
        return None
    hz = (j1 - j0) / ((n1 - n0) / 1e9)
    for known in KNOWN_HZ:
        if abs(hz - known) <= 0.1 * known:
            return known
    return None


def kernel_hz(pause: float = 0.2) -> Optional[int]:
    """The kernel's HZ (jiffies per second): CONFIG_HZ when the kernel's config is readable, else
    measured (measure_hz); None when neither works."""
    return _config_hz() or measure_hz(pause)


class JiffiesClock:
    """Jiffies -> unix seconds, from HZ and one (monotonic ns, jiffies) reference pair."""

    def __init__(self, hz: int, ref_mono_ns: int, ref_jiffies: int):
        self.hz = hz
        self.tick_ns = (1_000_000_000 + hz // 2) // hz     # the kernel's TICK_NSEC
        self.ref_mono_ns = ref_mono_ns
        self.ref_jiffies = ref_jiffies

    @classmethod
    def calibrate(cls) -> Optional["JiffiesClock"]:
        """Read HZ and a reference pair now; None when /proc/timer_list or HZ cannot be had."""
        hz = kernel_hz()
        if not hz:
            return None
        try:
            mono, jif = _timer_list_sample()
        except (OSError, ValueError, IndexError):
            return None
        return cls(hz, mono, jif)

    @property
    def error_s(self) -> float:
        """How far a converted stamp may be from the event's true time: the tick it fell in, and
        the reference pair's own tick."""
        return 2 * self.tick_ns / 1e9

    def mono_ns(self, jiffies: int) -> int:
        return self.ref_mono_ns + (jiffies - self.ref_jiffies) * self.tick_ns

    def converter(self) -> Callable[[int], float]:
        """A function from jiffies to unix seconds, with the monotonic/wall offset read now."""
        m0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        wall = time.time()
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        mono_now = (m0 + m1) // 2

        def to_unix(jiffies: int) -> float:
            return wall - (mono_now - self.mono_ns(jiffies)) / 1e9 if jiffies else 0.0
        return to_unix
