"""What deleting a routed pod's veth costs the kernel, by the way it is deleted and by what hangs
on it: one process, no agent, no IPAM, no exec. Each round sets up one pod per variant as moor's
routed ADD does (the pair made with its pod end inside the pod's netns; /32, permanent neighbour and
default route in the pod; host route proto 109 on the host end), lets it live --age seconds, then
times only the delete. The variants run interleaved, the order rotating per round.

  host: route_del + link_del   the host routes one by one, then the host end (cni/routed.py)
  host: link_del               the host end only (the kernel flushes its routes)
  pod: link_del                the pod end, from a socket in the pod's netns (Go ptp's way)
  go ptp ADD, pod: link_del    the pair made by Go ptp's own ADD (exec), deleted like that
  +tc                          a clsact qdisc and a direct-action bpf filter on the host end (what
                               moord's host routing attaches)
  +fwd                         the host end's forwarding=1 in both families (moor's ADD until now)
  +fwd4                        IPv4 forwarding only;  +ra0: and IPv6 accept_ra=0;
  +noip6                       and disable_ipv6=1
--node-ipv6-forwarding: net.ipv6.conf.all.forwarding=1 on the node first, which every new link
inherits (a node that routes IPv6 pods).

Run as root: python bench/veth_del.py [--rounds N] [--age S] [--node-ipv6-forwarding]
"""
from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cni.netlink import netns  # noqa: E402
from cni.netlink.rtnl import RTNL  # noqa: E402
from cni.netlink.wire import RTPROT_MOOR  # noqa: E402
from dataplane.hostrouting import Tc  # noqa: E402
from dataplane.nslab import Lab  # noqa: E402

GW = ipaddress.ip_address("169.254.1.1")
MAC = "02:00:00:00:00:01"
PTP = "/usr/lib/cni/ptp"

# name -> (how it is deleted, sysctls on the host end, tc filter on it)
FWD = {"ipv4/forwarding": "1", "ipv6/forwarding": "1"}
FWD4 = {"ipv4/forwarding": "1"}
VARIANTS = {
    "host: route_del + link_del": ("host+routes", {}, False),
    "host: link_del": ("host", {}, False),
    "pod: link_del": ("pod", {}, False),
    "go ptp ADD, pod: link_del": ("ptp", {}, False),
    "host: route_del + link_del +tc": ("host+routes", {}, True),
    "pod: link_del +tc": ("pod", {}, True),
    "host: route_del + link_del +fwd": ("host+routes", FWD, False),
    "pod: link_del +fwd": ("pod", FWD, False),
    "host: route_del + link_del +fwd4": ("host+routes", FWD4, False),
    "host: route_del + link_del +fwd4 +ra0": ("host+routes", dict(FWD4, **{"ipv6/accept_ra": "0"}), False),
    "host: route_del + link_del +fwd4 +noip6": ("host+routes", dict(FWD4, **{"ipv6/disable_ipv6": "1"}), False),
}


def trivial_tc_prog() -> int:
    """A SCHED_CLS program that returns TC_ACT_UNSPEC (-1): a filter that changes nothing."""
    insns = struct.pack("=BBhi", 0xB7, 0, 0, -1) + struct.pack("=BBhi", 0x95, 0, 0, 0)  # r0 = -1; exit
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("=IIQQIIQII", 3, 2, ctypes.addressof(ibuf), ctypes.addressof(lic), 0, 0, 0, 0, 0)
    abuf = ctypes.create_string_buffer(attr.ljust(128, b"\0"), 128)
    fd = ctypes.CDLL(None, use_errno=True).syscall(321, 5, abuf, 128)  # SYS_bpf (x86_64), BPF_PROG_LOAD
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_PROG_LOAD")
    return fd


def _ptp(command: str, node: str, pod: str, cid: str, conf: bytes) -> bytes:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": pod,
           "CNI_IFNAME": "eth0", "CNI_PATH": os.path.dirname(PTP)}
    return subprocess.run(["ip", "netns", "exec", node, PTP], input=conf, env=env, capture_output=True,
                          check=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--age", type=float, default=0.1, help="seconds a pod lives before its delete (default 0.1)")
    ap.add_argument("--node-ipv6-forwarding", action="store_true",
                    help="net.ipv6.conf.all.forwarding=1 on the node (new links inherit it)")
    a = ap.parse_args()
    prog = trivial_tc_prog()
    tmp = Path(tempfile.mkdtemp(prefix="moor-vethdel-"))
    names = list(VARIANTS)
    times: dict[str, list[float]] = {n: [] for n in names}
    ptp_conf = json.dumps({"cniVersion": "1.0.0", "name": "vd", "type": "ptp",
                           "ipam": {"type": "host-local", "dataDir": str(tmp / "hl"),
                                    "ranges": [[{"subnet": "198.51.100.0/24"}]]}}).encode()
    with Lab() as lab:
        node = lab.ns("node")
        if a.node_ipv6_forwarding:
            lab.run(node, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
        pods = [lab.ns(f"p{i}") for i in range(len(names))]
        nodefd = netns.open_netns(Lab.path(node))
        podfds = [netns.open_netns(Lab.path(p)) for p in pods]
        with netns.entered(nodefd):
            host, tc = RTNL(), Tc()
        podsocks = []
        for fd in podfds:
            with netns.entered(fd):
                podsocks.append(RTNL())
        try:
            for r in range(a.rounds):
                k = r % len(names)
                order = names[k:] + names[:k]
                made = {}
                for name in order:
                    how, sysctls, with_tc = VARIANTS[name]
                    j = names.index(name)
                    pod, hname = podsocks[j], f"vd{j}h"
                    if how == "ptp":
                        _ptp("ADD", node, Lab.path(pods[j]), f"vd{r}", ptp_conf)
                        made[name] = (0, [])
                        continue
                    ip = ipaddress.ip_interface(f"203.0.113.{10 + j}/32")
                    host.veth_add(hname, "eth0", podfds[j], peer_mac=MAC)
                    h = host.link_get(hname)
                    with netns.entered(nodefd):
                        for key, value in sysctls.items():
                            fam, leaf = key.split("/")
                            netns.write_sysctl(f"net/{fam}/conf/{hname}/{leaf}", value)
                    host.link_set(h.index, up=True)
                    link = pod.link_get("eth0")
                    pod.addr_add(link.index, ip)
                    pod.link_set(link.index, up=True)
                    pod.neigh_replace(link.index, GW, h.mac)
                    pod.route_replace(ipaddress.ip_network("0.0.0.0/0"), oif=link.index, gateway=GW, proto=4,
                                      onlink=True)
                    host.route_replace(ip.network, oif=h.index, proto=RTPROT_MOOR)
                    if with_tc:
                        tc.clsact(h.index)
                        tc.filter_replace(h.index, prog)
                    made[name] = (h.index, [ip.network])
                time.sleep(a.age)
                for name in order:
                    how = VARIANTS[name][0]
                    j = names.index(name)
                    hidx, dsts = made[name]
                    t = time.perf_counter()
                    if how.startswith("host"):
                        if how == "host+routes":
                            for d in dsts:
                                host.route_del(d, oif=hidx, proto=RTPROT_MOOR)
                        host.link_del(hidx)
                    else:
                        podsocks[j].link_del(podsocks[j].link_get("eth0").index)
                    times[name].append((time.perf_counter() - t) * 1e3)
                    if how == "ptp":  # the IP back to host-local, outside the timed part
                        _ptp("DEL", node, Lab.path(pods[j]), f"vd{r}", ptp_conf)
        finally:
            host.close()
            tc.close()
            for s in podsocks:
                s.close()
            for fd in podfds + [nodefd]:
                os.close(fd)
            os.close(prog)
    shutil.rmtree(tmp, ignore_errors=True)
    ref = names[0]
    print(f"veth delete, node IPv6 forwarding {int(a.node_ipv6_forwarding)}, {a.rounds} interleaved rounds, pod age "
          f"{a.age} s (ms: median [IQR]; ratio: median of per-round ratios to '{ref}')")
    for name in names:
        q = statistics.quantiles(times[name], n=4)
        ratios = [x / y for x, y in zip(times[name], times[ref])]
        print(f"  {name:<42} {statistics.median(times[name]):7.2f} [{q[0]:.2f}-{q[2]:.2f}]  "
              f"{statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
