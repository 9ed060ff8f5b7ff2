"""Compile and load an eBPF program in a child process, and keep only its fds here.

bcc links LLVM and clang: importing it and compiling one program leaves a process ~150 MB larger
for good (measured for hostrouting.bpf.c: VmHWM 8 -> 157 MB, 0.75 s CPU), which moord would carry
for its whole life. A child does the compile and the load, passes the program and map fds back over
a unix socket (SCM_RIGHTS) and exits; the kernel keeps the objects for as long as this process holds
the fds (or a tc filter holds the program). Maps are then read and written through bpfsys.Map.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field

from .bpfsys import Map

# the child: the parent's import path (moord may run from an installed copy), then _child()
_BOOT = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
         "from dataplane.bpfload import _child; _child(int(sys.argv[2]))")
MAX_MSG = 1 << 16


class LoadError(RuntimeError):
    """The child could not compile or load: `stage` is "import", "compile", "load" or "child"."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


@dataclass
class Loaded:
    progs: dict[str, int] = field(default_factory=dict)  # function name -> program fd (owned)
    maps: dict[str, Map] = field(default_factory=dict)
    child_peak_kib: int = 0  # the compiling child's VmHWM: the node paid it once, for a moment
    child_cpu_s: float = 0.0

    def close(self) -> None:
        for fd in self.progs.values():
            os.close(fd)
        for m in self.maps.values():
            m.close()
        self.progs, self.maps = {}, {}


def load(src_file: str, cflags: list[str], progs: dict[str, int], maps: list[str],
         timeout: float = 300.0) -> Loaded:
    """Compile `src_file` with bcc in a child, load `progs` (name -> bcc program type), and return
    their fds and the named maps'. LoadError says which stage failed and why."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "-c", _BOOT, json.dumps(sys.path), str(theirs.fileno())],
                                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        mine.settimeout(timeout)
        mine.sendall(json.dumps({"src_file": src_file, "cflags": cflags, "progs": progs, "maps": maps}).encode())
        try:
            msg, fds, _flags, _addr = socket.recv_fds(mine, MAX_MSG, len(progs) + len(maps) + 1)
        except socket.timeout:
            raise LoadError("child", f"the compile did not finish in {timeout:.0f} s") from None
        proc.wait(timeout)
        if not msg:
            for fd in fds:
                os.close(fd)
            raise LoadError("child", f"the compile process ended with code {proc.returncode} and no answer")
        reply = json.loads(msg)
        if "error" in reply:
            for fd in fds:
                os.close(fd)
            raise LoadError(reply["stage"], reply["error"])
        out = Loaded(child_peak_kib=reply["peak_kib"], child_cpu_s=reply["cpu_s"])
        names = list(reply["progs"]) + list(reply["maps"])
        if len(fds) != len(names):
            for fd in fds:
                os.close(fd)
            raise LoadError("child", f"the compile process sent {len(fds)} fds for {len(names)} objects")
        for name, fd in zip(names, fds):
            if name in reply["progs"]:
                out.progs[name] = fd
            else:
                try:
                    out.maps[name] = Map(fd)
                except OSError:
                    os.close(fd)
                    out.close()
                    raise
        return out
    finally:
        mine.close()
        if proc is not None and proc.poll() is None:  # only on a timeout or an error above
            proc.kill()
            proc.wait()


def _child(fd: int) -> None:
    """In the child: one request, one reply with the fds, then exit without bcc's atexit clean-up
    (the parent's copies of the fds are what keeps the objects)."""
    sock = socket.socket(fileno=fd)
    req = json.loads(sock.recv(MAX_MSG))

    def fail(stage: str, e: BaseException) -> None:
        sock.sendall(json.dumps({"stage": stage, "error": " ".join(str(e).split())[:2000]}).encode())
        sock.close()
        os._exit(0)

    try:
        from bcc import BPF
    except ImportError as e:  # python3-bpfcc not installed
        fail("import", e)
    from .probe.kheaders import compile_bpf
    try:
        bpf = compile_bpf(req["cflags"], src_file=req["src_file"])
    except Exception as e:  # ProbeUnavailable, or bcc's own
        fail("compile", e)
    try:
        # the verifier rejects a helper this kernel lacks: the load says why
        fns = {name: bpf.load_func(name.encode(), ptype) for name, ptype in req["progs"].items()}
    except Exception as e:
        fail("load", e)
    maps = {name: bpf[name.encode()].map_fd for name in req["maps"]}
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    reply = {"progs": list(fns), "maps": list(maps), "peak_kib": ru.ru_maxrss, "cpu_s": ru.ru_utime + ru.ru_stime}
    socket.send_fds(sock, [json.dumps(reply).encode()], [f.fd for f in fns.values()] + list(maps.values()))
    sock.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

