"""Compiling with bcc on a node whose installed kernel headers may be another kernel's.

bcc compiles in /lib/modules/$(uname -r)/source when build and source both exist, else in build,
and needs include/linux/kconfig.h there. Debian splits the headers into linux-headers-X-amd64
(config, generated headers) and linux-headers-X-common (the tree); scripts/setup.sh links source to
the -common half, and where a node has both links on the -amd64 half, the -common tree named in its
Makefile is given to bcc instead. Only helper and UAPI types come from these headers: every
kernel-struct offset the probes read comes from BTF, so any installed version serves."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ProbeUnavailable


def bcc_build() -> tuple[dict[str, str], list[str]]:
    """(environment, cflags) for bcc; ProbeUnavailable naming what is missing."""
    if os.environ.get("BCC_KERNEL_SOURCE") or Path("/sys/kernel/kheaders.tar.xz").exists():
        return {}, []
    kdir = Path("/lib/modules") / os.uname().release
    build, source = kdir / "build", kdir / "source"
    root = source if (build.is_dir() and source.is_dir()) else build
    if (root / "include/linux/kconfig.h").is_file():
        return {}, []
    problem = ProbeUnavailable(f"bcc needs kernel headers: {root}/include/linux/kconfig.h is missing "
                               "(on Debian, build -> linux-headers-*-amd64 and source -> linux-headers-*-common; "
                               "scripts/setup.sh makes these links)")
    try:
        first = (build / "Makefile").read_text().splitlines()[0]
    except (OSError, IndexError):
        raise problem from None
    common = Path(first[len("include "):-len("/Makefile")]) if first.startswith("include ") else Path("/nonexistent")
    if not first.endswith("/Makefile") or not (common / "include/linux/kconfig.h").is_file():
        raise problem
    arch = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    b = build.resolve()
    return ({"BCC_KERNEL_SOURCE": str(common)},
            [f"-I{b}/arch/{arch}/include/generated/uapi", f"-I{b}/arch/{arch}/include/generated",
             f"-I{b}/include", f"-I{b}/include/generated/uapi"])


def compile_bpf(cflags: list[str], text: str = "", src_file: str = ""):
    """bcc.BPF for a program text or file, with the header set-up above; bcc's own errors (bare
    Exceptions) become ProbeUnavailable."""
    from bcc import BPF  # imported late: bcc is heavy and absent on nodes without the probe
    env, extra = bcc_build()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        if src_file:
            return BPF(src_file=src_file.encode(), cflags=cflags + extra)
        return BPF(text=text.encode(), cflags=cflags + extra)
    except Exception as e:
        raise ProbeUnavailable(f"BPF program did not compile or load: {e}") from e
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_stats(prog_fd: int) -> tuple[int, int]:
    """(runs, total ns) of a loaded BPF program from its fdinfo; the kernel counts these only while
    sysctl kernel.bpf_stats_enabled=1 (zero otherwise)."""
    info: dict[str, int] = {}
    try:
        with open(f"/proc/self/fdinfo/{prog_fd}") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("run_cnt", "run_time_ns"):
                    info[key] = int(value)
    except OSError:
        pass
    return info.get("run_cnt", 0), info.get("run_time_ns", 0)
