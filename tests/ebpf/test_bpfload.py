"""bpfload: a program compiled and loaded by a child process, its fds here; bpfsys.Map on them."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dataplane.bpfload import LoadError, load
from dataplane.bpfsys import Map, possible_cpus

pytestmark = pytest.mark.ebpf
ROOT = Path(__file__).resolve().parents[2]
SCHED_CLS = 3

SRC = """
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
BPF_HASH(h, u32, u64, 16);
BPF_PERCPU_ARRAY(pc, u64, 2);
int prog(struct __sk_buff *skb)
{
    u32 k = 0;
    u64 *v = pc.lookup(&k);
    if (v)
        *v += 1;
    return TC_ACT_OK;
}
"""


def _bcc_or_skip():
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("python3-bpfcc is not installed")


def test_the_child_hands_over_programs_and_maps(tmp_path):
    _bcc_or_skip()
    src = tmp_path / "t.bpf.c"
    src.write_text(SRC)
    loaded = load(str(src), [], {"prog": SCHED_CLS}, ["h", "pc"])
    try:
        assert set(loaded.progs) == {"prog"} and loaded.progs["prog"] >= 0
        assert os.readlink(f"/proc/self/fd/{loaded.progs['prog']}") == "anon_inode:bpf-prog"
        assert loaded.child_peak_kib > 0
        h, pc = loaded.maps["h"], loaded.maps["pc"]
        assert (h.info.key_size, h.info.value_size, h.info.max_entries) == (4, 8, 16)
        k = struct.pack("=I", 7)
        assert h.lookup(k) is None
        h.update(k, struct.pack("=Q", 42))
        assert struct.unpack("=Q", h.lookup(k))[0] == 42
        assert h.delete(k) and not h.delete(k)
        with pytest.raises(ValueError, match="key of 2 bytes"):
            h.update(b"\0\0", struct.pack("=Q", 1))
        # per-CPU: one 8-byte slot per possible CPU, summed
        assert pc.percpu and pc.ncpu == possible_cpus()
        pc.update(struct.pack("=I", 1), b"".join(struct.pack("=Q", i + 1) for i in range(pc.ncpu)))
        assert pc.percpu_u64_sum(struct.pack("=I", 1)) == sum(range(1, pc.ncpu + 1))
    finally:
        loaded.close()
    assert loaded.progs == {} and loaded.maps == {}


def test_a_compile_error_says_so_and_leaves_no_fd(tmp_path):
    _bcc_or_skip()
    src = tmp_path / "bad.bpf.c"
    src.write_text("int prog(struct __sk_buff *skb) { return undeclared_thing; }\n")
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(LoadError) as e:
        load(str(src), [], {"prog": SCHED_CLS}, [])
    assert e.value.stage == "compile" and "bad.bpf.c" in str(e.value)  # clang's own lines: on stderr
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_verifier_refusal_is_the_load_stage(tmp_path):
    _bcc_or_skip()
    src = tmp_path / "unsafe.bpf.c"
    # reads a packet byte without a bounds check: the verifier refuses it
    src.write_text("#include <uapi/linux/bpf.h>\nint prog(struct __sk_buff *skb)\n"
                   "{ return *(unsigned char *)(long)skb->data; }\n")
    with pytest.raises(LoadError) as e:
        load(str(src), [], {"prog": SCHED_CLS}, [])
    assert e.value.stage == "load"


def test_moord_s_process_never_loads_bcc_for_host_routing():
    """The point of the child: after HostRouting.start() this process has no bcc, no LLVM, and its
    peak RSS stays far below the ~150 MB they cost (VmHWM, this process alone)."""
    _bcc_or_skip()
    code = textwrap.dedent("""
        import json, sys
        from dataplane.hostrouting import HostRouting
        h = HostRouting()
        h.start()
        try:
            maps = open("/proc/self/maps").read()
            hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
            print(json.dumps({"bcc": "bcc" in sys.modules, "llvm": "libLLVM" in maps or "libbcc" in maps,
                              "hwm_kib": hwm, "counters": h.counters()}))
        finally:
            h.close(detach=True)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["bcc"] is False and got["llvm"] is False
    assert got["hwm_kib"] < 60 * 1024, got
    assert set(got["counters"]) >= {"to_pod", "pass_fib"}
