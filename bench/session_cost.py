"""What counting VPC sessions costs a UDP sender: packets/s of a small-datagram flood over a veth pair
with moor's session probe detached and attached, against two references measured in the same run:
a naive per-packet tc program that hashes every packet's 5-tuple into a map (the issue's 7-8 %
reference), and a cgroup sock_addr sendmsg hook that hashes the 5-tuple of every unconnected send.

Topology (dataplane.nslab.Lab, unique names, removed on exit): netns "tx" 192.0.2.1 -- veth --
netns "rx" 192.0.2.2, where one process binds the destination ports and never reads (datagrams
are dropped at the full receive queue, after the socket-level programs ran). The flood is one
process calling sendmmsg(2) with 256 datagrams per call (--size bytes of IP packet, 64 by default),
so the per-packet kernel path, not Python, is what is timed; the whole path (send, veth, receive,
drop) runs on the sender's CPU.

Configurations, alternated in rotating order within each repetition (medians over --reps):
  off        nothing attached
  sessions   dataplane.probe.sessions.SessionProbe (cgroup_skb egress + ingress on the root cgroup;
             both ends here are local sockets, so every packet runs a program twice)
  sessions-tx  the same with ingress=False (sent packets only)
  sessions-base  with --base-src FILE: the same probe (this sessions.py) compiled from another version
             of sessions.bpf.c (e.g. `git show HEAD:dataplane/probe/sessions.bpf.c > /tmp/base.bpf.c`),
             alternated with the others, so a change to the kernel program is measured before and
             after in one run under the same conditions
  skb-nop    cgroup_skb egress + ingress programs that only return 1: the attachment's fixed cost
  naive-tc   tc clsact egress on the sender's veth: parse, hash the 5-tuple, update a per-flow
             entry (last seen, packet count) on every packet
  sendmsg    cgroup/sendmsg4 on the root cgroup: build the 5-tuple key and look it up on every
             unconnected send, write only when new or stale (it never runs for connected sockets,
             so it cannot refresh those)

Scenarios: udp-1peer (unconnected, one destination), udp-connected (connect() then send), and
udp-1024peers (unconnected, destination port cycling over 1024: the per-socket cache misses and
moor's program falls back to one hash lookup per packet).

Then --stats-reps more runs per configuration (alternated in rotating order like the above) with BPF
run-time statistics on (BPF_ENABLE_STATS; its own overhead stays out of the packet rates above) give
ns per program run (median, and min-max over the runs) and runs per packet.

Run as root: .venv/bin/python bench/session_cost.py [--reps 7] [--secs 1.5] [--size 64]
             [--scenarios udp-1peer,udp-connected,udp-1024peers] [--configs off,sessions,...]
             [--base-src FILE] [--stats-reps 1]
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataplane.nslab import Lab, require_root  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
TX_IP, RX_IP, PORT = "192.0.2.1", "192.0.2.2", 9000
SCENARIOS = {"udp-1peer": (1, False), "udp-connected": (1, True), "udp-1024peers": (1024, False)}
CONFIGS = ["off", "sessions", "sessions-tx", "skb-nop", "naive-tc", "sendmsg"]

# the fixed cost of a cgroup_skb attachment: programs that do nothing
SKB_NOP = r"""
int nop_egress(struct __sk_buff *skb) { return 1; }
int nop_ingress(struct __sk_buff *skb) { return 1; }
"""

# the reference: a per-packet program that hashes the 5-tuple into a map on every packet
NAIVE_TC = r"""
#include <linux/pkt_cls.h>
struct k5 { u32 saddr; u32 daddr; u16 sport; u16 dport; u8 proto; u8 pad[3]; };
struct fv { u64 last; u64 pkts; };
BPF_F_TABLE("hash", struct k5, struct fv, flows, 262144, BPF_F_NO_PREALLOC);
struct ip4h { u8 vihl; u8 tos; u16 len; u16 id; u16 frag; u8 ttl; u8 proto; u16 csum; u32 saddr; u32 daddr; };
int naive(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    if (data + 14 > end) return TC_ACT_OK;
    if (*(u16 *)(data + 12) != bpf_htons(0x0800)) return TC_ACT_OK;
    struct ip4h *ip = data + 14;
    if ((void *)(ip + 1) > end) return TC_ACT_OK;
    if (ip->proto != 17 && ip->proto != 6) return TC_ACT_OK;
    u16 *ports = (void *)(ip + 1);
    if ((void *)(ports + 2) > end) return TC_ACT_OK;
    struct k5 k = {};
    k.saddr = ip->saddr; k.daddr = ip->daddr; k.sport = ports[0]; k.dport = ports[1]; k.proto = ip->proto;
    u64 now = bpf_ktime_get_ns();
    struct fv *v = flows.lookup(&k);
    if (v) { v->last = now; __sync_fetch_and_add(&v->pkts, 1); }
    else { struct fv n = {now, 1}; flows.update(&k, &n); }
    return TC_ACT_OK;
}
"""

# the socket-layer design the brief suggested: one key build and lookup per unconnected sendmsg
SENDMSG_HOOK = r"""
struct skey { u64 netns; u32 laddr; u32 raddr; u16 lport; u16 rport; u32 pad; };
struct sval { u64 first; u64 last; };
BPF_F_TABLE("hash", struct skey, struct sval, sm_sessions, 262144, BPF_F_NO_PREALLOC);
int sendmsg4(struct bpf_sock_addr *ctx) {
    struct bpf_sock *sk = ctx->sk;
    if (!sk) return 1;
    struct skey k = {};
    k.netns = bpf_get_netns_cookie(ctx);
    k.laddr = ctx->msg_src_ip4 ? ctx->msg_src_ip4 : sk->src_ip4;
    k.raddr = ctx->user_ip4; k.lport = sk->src_port; k.rport = bpf_ntohl(ctx->user_port) >> 16;
    u64 now = bpf_ktime_get_coarse_ns();
    struct sval *v = sm_sessions.lookup(&k);
    if (v) { if (now - v->last > 1000000000ULL) v->last = now; }
    else { struct sval n = {now, now}; sm_sessions.insert(&k, &n); }
    return 1;
}
"""

_libc = ctypes.CDLL(None, use_errno=True)


# ---------------------------------------------------------------------------------------------
# the flood (runs as a child inside the tx netns)

class _Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msg(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_Iov)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsg(ctypes.Structure):
    _fields_ = [("hdr", _Msg), ("len", ctypes.c_uint)]


def flood(dst: str, port: int, nports: int, connected: bool, secs: float, size: int, batch: int = 256) -> dict:
    payload = max(1, size - 28)   # IP + UDP headers
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    buf = ctypes.create_string_buffer(b"m" * payload, payload)
    iov = _Iov(ctypes.cast(buf, ctypes.c_void_p), payload)
    names = [ctypes.create_string_buffer(struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", port + i,
                                                                                          socket.inet_aton(dst)), 16)
             for i in range(nports)]
    if connected:
        s.connect((dst, port))
    # one batch per rotation over the destinations, so every call covers them all evenly
    batch = max(batch, nports) if nports > 1 else batch
    msgs = (_MMsg * batch)()
    for i in range(batch):
        m = msgs[i].hdr
        if not connected:
            m.name = ctypes.cast(names[i % nports], ctypes.c_void_p)
            m.namelen = 16
        m.iov = ctypes.pointer(iov)
        m.iovlen = 1
    fd, sent, calls = s.fileno(), 0, 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    end = t0 + secs
    while True:
        r = _libc.sendmmsg(fd, msgs, batch, 0)
        if r < 0:
            e = ctypes.get_errno()
            if e in (11, 105, 111):   # EAGAIN, ENOBUFS, ECONNREFUSED (ICMP from an earlier run)
                continue
            raise OSError(e, os.strerror(e))
        sent += r
        calls += 1
        if calls % 16 == 0 and time.perf_counter() >= end:
            break
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    # pps: wall-clock rate; ppcs: packets per CPU-second of the sender, which other load on the
    # machine disturbs less (descheduled time is not counted; the veth receive path runs as softirq
    # in the sender's context and is counted)
    return {"pps": sent / dt, "ppcs": sent / cpu if cpu > 0 else 0.0, "sent": sent, "secs": dt, "cpu": cpu}


def receiver(port: int, nports: int) -> None:
    socks = []
    for i in range(nports):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind(("0.0.0.0", port + i))
        socks.append(s)
    print("ready", flush=True)
    sys.stdin.read()   # until the bench closes our stdin (or terminates us)


# ---------------------------------------------------------------------------------------------
# attaching the configurations

@contextlib.contextmanager
def _netns(name: str):
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            if _libc.setns(home, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(fd)
        os.close(home)


class Bench:
    def __init__(self, lab: Lab, tx: str, dev: str, base_src: str = "") -> None:
        from bcc import BPF  # imported here: bcc (and root) only when the bench runs
        from dataplane.probe import sessions
        from dataplane.probe.kheaders import compile_bpf

        self.lab, self.tx, self.dev = lab, tx, dev
        self.sessions = sessions
        self.base_src = Path(base_src) if base_src else None
        self.naive_bpf = compile_bpf([], text=NAIVE_TC)
        self.naive_fn = self.naive_bpf.load_func(b"naive", BPF.SCHED_CLS)
        self.nop_bpf = compile_bpf([], text=SKB_NOP)
        self.nop_fns = [(self.nop_bpf.load_func(b"nop_egress", BPF.CGROUP_SKB, attach_type=1), 1),
                        (self.nop_bpf.load_func(b"nop_ingress", BPF.CGROUP_SKB, attach_type=0), 0)]
        self.nop_links = []
        self.sm_bpf = compile_bpf([], text=SENDMSG_HOOK)
        self.sm_fn = self.sm_bpf.load_func(b"sendmsg4", BPF.CGROUP_SOCK_ADDR, attach_type=14)
        self.cg_fd, _ = sessions._open_cgroup2_root()
        from pyroute2 import IPRoute
        with _netns(tx):
            self.ipr = IPRoute()
        self.ifindex = self.ipr.link_lookup(ifname=dev)[0]
        self.probe = None
        self.link = None

    def attach(self, config: str) -> dict[str, int]:
        """Attach a configuration; returns the fds of its programs."""
        if config in ("sessions", "sessions-tx"):
            self.probe = self.sessions.SessionProbe(ingress=config == "sessions")
            self.probe.start()
            return self.probe.prog_fds()
        if config == "sessions-base":
            if self.base_src is None:
                raise ValueError("sessions-base needs --base-src")
            self.probe = self.sessions.SessionProbe()
            saved = self.sessions._BPF_SRC
            self.sessions._BPF_SRC = self.base_src   # read by start() only
            try:
                self.probe.start()
            finally:
                self.sessions._BPF_SRC = saved
            return self.probe.prog_fds()
        if config == "skb-nop":
            self.nop_links = [self.sessions._attach(fn.fd, self.cg_fd, at) for fn, at in self.nop_fns]
            return {fn.name.decode(): fn.fd for fn, _ in self.nop_fns}
        if config == "naive-tc":
            self.ipr.tc("add", "clsact", self.ifindex)
            self.ipr.tc("add-filter", "bpf", self.ifindex, ":1", fd=self.naive_fn.fd, name="naive",
                        parent="ffff:fff3", classid=1, direct_action=True)
            return {"naive": self.naive_fn.fd}
        if config == "sendmsg":
            self.link = self.sessions._attach(self.sm_fn.fd, self.cg_fd, 14)
            return {"sendmsg4": self.sm_fn.fd}
        return {}

    def detach(self, config: str) -> None:
        if config in ("sessions", "sessions-tx", "sessions-base") and self.probe is not None:
            self.probe.close()
            self.probe = None
        elif config == "skb-nop":
            for link in self.nop_links:
                self.sessions._detach(link)
            self.nop_links = []
        elif config == "naive-tc":
            with contextlib.suppress(Exception):
                self.ipr.tc("del", "clsact", self.ifindex)
            self.naive_bpf[b"flows"].clear()
        elif config == "sendmsg" and self.link is not None:
            self.sessions._detach(self.link)
            self.link = None
            self.sm_bpf[b"sm_sessions"].clear()

    def close(self) -> None:
        for c in CONFIGS:
            with contextlib.suppress(Exception):
                self.detach(c)
        with contextlib.suppress(Exception):
            self.ipr.close()
        os.close(self.cg_fd)
        self.naive_bpf.cleanup()
        self.nop_bpf.cleanup()
        self.sm_bpf.cleanup()


def run_flood(lab: Lab, tx: str, nports: int, connected: bool, secs: float, size: int) -> dict:
    p = lab.run(tx, PY, __file__, "_flood", RX_IP, str(PORT), str(nports), "c" if connected else "u",
                str(secs), str(size), timeout=secs + 60)
    return json.loads(p.stdout)


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program (its fdinfo; counted while BPF stats are enabled)."""
    from dataplane.probe.kheaders import run_stats
    runs, ns = run_stats(fd)
    return ns, runs


def self_bpf(cmd: int, attr: bytes) -> int:
    from dataplane.probe.sessions import _bpf
    return _bpf(cmd, attr)


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--secs", type=float, default=1.5)
    ap.add_argument("--size", type=int, default=64, help="IP packet size in bytes")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--base-src", default="", help="sessions.bpf.c of another version: adds config sessions-base")
    ap.add_argument("--stats-reps", type=int, default=1, help="runs per configuration with BPF run-time stats")
    args = ap.parse_args()
    why = require_root()
    if why:
        print(f"session_cost: {why}", file=sys.stderr)
        return 2
    scenarios = [s for s in args.scenarios.split(",") if s]
    configs = [c for c in args.configs.split(",") if c]
    if "off" not in configs:
        configs.insert(0, "off")
    if args.base_src and "sessions-base" not in configs:
        configs.insert(configs.index("sessions") + 1 if "sessions" in configs else 1, "sessions-base")
    for c in configs:
        if c not in CONFIGS + ["sessions-base"]:
            ap.error(f"unknown configuration {c}")
    if "sessions-base" in configs and not args.base_src:
        ap.error("sessions-base needs --base-src")
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")

    lab = Lab()
    bench = None
    try:
        tx, rx = lab.ns("tx"), lab.ns("rx")
        lab.veth(tx, "v0", rx, "v1")
        lab.addr(tx, "v0", f"{TX_IP}/24")
        lab.addr(rx, "v1", f"{RX_IP}/24")
        nmax = max(SCENARIOS[s][0] for s in scenarios)
        rcv = lab.spawn(rx, [PY, __file__, "_recv", str(PORT), str(nmax)], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
        if rcv.stdout.readline().strip() != "ready":
            raise RuntimeError("receiver did not start")
        bench = Bench(lab, tx, "v0", args.base_src)
        print(f"# {os.uname().release}, {os.cpu_count()} CPUs, {args.size}-byte IP packets, "
              f"sendmmsg x256, {args.secs:g} s per run, {args.reps} reps; load average {_loadavg()}")
        if float(_loadavg().split()[0]) > 0.5:
            print("# warning: the machine is busy; wall rates are noisy, per-CPU-second rates less so")
        results: dict[str, dict[str, list[float]]] = {}
        for sc in scenarios:
            nports, connected = SCENARIOS[sc]
            run_flood(lab, tx, nports, connected, min(1.0, args.secs), args.size)   # warm-up
            res = results[sc] = {c: [] for c in configs}
            cres = {c: [] for c in configs}
            for r in range(args.reps):
                order = configs[r % len(configs):] + configs[:r % len(configs)]
                for c in order:
                    bench.attach(c)
                    try:
                        out = run_flood(lab, tx, nports, connected, args.secs, args.size)
                    finally:
                        bench.detach(c)
                    res[c].append(out["pps"])
                    cres[c].append(out["ppcs"])
            base, cbase = statistics.median(res["off"]), statistics.median(cres["off"])
            print(f"\n{sc}: medians of {args.reps}. wall: kpps, cost vs off | per sender CPU-second: kpps, "
                  f"cost vs off, ns added per packet | wall runs")
            for c in configs:
                m, cm = statistics.median(res[c]), statistics.median(cres[c])
                runs = " ".join(f"{x / 1e3:.0f}" for x in res[c])
                print(f"  {c:13s} {m / 1e3:7.1f} {(1 - m / base) * 100:+6.1f}%  | {cm / 1e3:7.1f} "
                      f"{(1 - cm / cbase) * 100:+6.1f}% {1e9 / cm - 1e9 / cbase:+7.0f} ns  | [{runs}]")

        sreps = max(1, args.stats_reps)
        print(f"\nBPF run time (BPF_ENABLE_STATS, {sreps} run(s) each, alternated): ns per program run "
              f"(median{', min-max' if sreps > 1 else ''}), runs per packet (runs of any socket on the machine), and "
              "that time as a share of the packet's time with nothing attached. The skb-nop rows are the floor "
              "of this measurement (it reads the clock twice per run).")
        stats_fd = self_bpf(32, struct.pack("<I", 0).ljust(16, b"\0"))   # BPF_ENABLE_STATS, RUN_TIME
        try:
            run_configs = [c for c in configs if c != "off"]
            for sc in scenarios:
                nports, connected = SCENARIOS[sc]
                ns_per_pkt = 1e9 / statistics.median(results[sc]["off"])   # wall, nothing attached
                # (config, program) -> [(ns per run, runs per packet)]
                per: dict[tuple[str, str], list[tuple[float, float]]] = {}
                for r in range(sreps):
                    order = run_configs[r % len(run_configs):] + run_configs[:r % len(run_configs)]
                    for c in order:
                        fds = bench.attach(c)
                        try:
                            before = {n: prog_stats(fd) for n, fd in fds.items()}
                            out = run_flood(lab, tx, nports, connected, args.secs, args.size)
                            after = {n: prog_stats(fd) for n, fd in fds.items()}
                        finally:
                            bench.detach(c)
                        for n in fds:
                            dt, dn = after[n][0] - before[n][0], after[n][1] - before[n][1]
                            per.setdefault((c, n), [])
                            if dn:
                                per[(c, n)].append((dt / dn, dn / out["sent"]))
                for c in run_configs:
                    for (cc, n), xs in per.items():
                        if cc != c:
                            continue
                        if not xs:
                            print(f"  {sc:14s} {c:13s} {n:16s} not run")
                            continue
                        ns_run = statistics.median(x for x, _ in xs)
                        rpp = statistics.median(y for _, y in xs)
                        per_pkt = ns_run * rpp
                        spread = f" ({min(x for x, _ in xs):.1f}-{max(x for x, _ in xs):.1f})" if len(xs) > 1 else ""
                        print(f"  {sc:14s} {c:13s} {n:16s} {ns_run:6.1f}{spread} ns/run  {rpp:5.2f} runs/pkt  "
                              f"{per_pkt:6.1f} ns/pkt = {per_pkt / ns_per_pkt * 100:4.1f}% of {ns_per_pkt:.0f} ns")
        finally:
            os.close(stats_fd)
        print(f"# load average at the end {_loadavg()}")
        return 0
    finally:
        if bench is not None:
            bench.close()
        lab.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_flood":
        dst, port, nports, mode, secs, size = sys.argv[2:8]
        print(json.dumps(flood(dst, int(port), int(nports), mode == "c", float(secs), int(size))))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "_recv":
        receiver(int(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
