"""eBPF host routing for routed mode: a tc program on each pod's host veth forwards what the pod
sends in the kernel's fast path (bpf_fib_lookup on the kernel's own tables; bpf_redirect_peer into
a local pod's netns, bpf_redirect_neigh out of the node) and leaves the rest to the normal stack.
See hostrouting.bpf.c for what it forwards and what it passes.

moord owns one HostRouting: pod_route() for every proto-109 route the route watch reports (before
start() too: they are remembered), start() to compile and load (seconds: off the event loop),
attach_all() on the loop once loaded, close(detach) at the end. The tc filters are plain cls_bpf
filters at moor's priority and handle: they outlive moord (a restart replaces them in place with
the new program; pods keep the fast path meanwhile) until close(detach=True) on a full shutdown.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from bgp.wire import Key, key_of
from cni.netlink import wire as w
from cni.netlink.rtnl import RTNL, TCA_KIND, TCMSG, NetlinkError

from .bpfload import Loaded, LoadError, load
from .bpfsys import Map, bpf
from .routemtu import RouteMtus, lpm_key

log = logging.getLogger("moord.hostrouting")

BPF_SOURCE = Path(__file__).with_name("hostrouting.bpf.c")
MAX_PODS = 4096
MAX_MTU_ROUTES = 1024  # prefixes in the route MTU trie; beyond that one bound per family (routemtu.py)
# moor's tc filter on the ingress hook: priority 1 (first: it is the routing decision) and a handle
# that says whose it is; a restart replaces exactly this filter, a shutdown removes exactly it
PRIO = 1
HANDLE = 0x6D6F6F72  # "moor"
NAME = "moor_hostrouting"
MAPS = ("counters", "pods", "sources", "route_mtu")  # hostrouting.bpf.c's
SCHED_CLS = 3  # BPF_PROG_TYPE_SCHED_CLS
ONE = b"\x01"  # the u8 value of pods and sources
_U32 = struct.Struct("=I")
COUNTERS = ("to_pod", "to_uplink", "pass_not_ip", "pass_special", "pass_source", "pass_fib", "pass_mtu")

# rtnetlink traffic control (include/uapi/linux/rtnetlink.h, pkt_sched.h, pkt_cls.h); the clsact
# qdisc's request and constants are cni.netlink.rtnl's (the routed ADD makes it)
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
TCA_OPTIONS = 2
TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_INGRESS_PARENT = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
ETH_P_ALL = 0x0003


class HostRoutingUnavailable(RuntimeError):
    """The kernel or bcc cannot run host routing here: the reason, in one line."""


@dataclass
class HostRoutingConfig:
    enabled: bool = True  # where the kernel and bcc can load it; moord says why in one line when they cannot
    uplinks: list[str] = field(default_factory=list)  # node uplinks whose way in to pods is redirected too


def _check_bpf_allowed() -> None:
    """One bpf(BPF_MAP_CREATE) for a 1-entry array: a kernel or a process that may not use eBPF
    says why here (EPERM, ENOSYS...), where bcc's compile error would only say "failed to load"."""
    try:
        # BPF_MAP_CREATE (0) of a BPF_MAP_TYPE_ARRAY (2), key 4, value 4, 1 entry
        os.close(bpf(0, struct.pack("=IIII", 2, 4, 4, 1).ljust(128, b"\0")))
    except OSError as e:
        need = " (moord needs CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN)" if e.errno == errno.EPERM else ""
        raise HostRoutingUnavailable(f"the kernel refused bpf(): {os.strerror(e.errno)}{need}") from None


class Tc(RTNL):
    """The few tc requests host routing needs: a clsact qdisc (RTNL.clsact) and one direct-action
    bpf filter."""

    def _filter(self, ifindex: int) -> bytes:
        return TCMSG.pack(socket.AF_UNSPEC, ifindex, HANDLE, TC_H_INGRESS_PARENT,
                          (PRIO << 16) | socket.htons(ETH_P_ALL))

    def filter_replace(self, ifindex: int, prog_fd: int) -> None:
        """moor's filter with this program: created, or replaced in place (no moment without one)."""
        opts = w.attr_nested(TCA_OPTIONS, w.attr_u32(TCA_BPF_FD, prog_fd), w.attr_str(TCA_BPF_NAME, NAME),
                             w.attr_u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT))
        self._request(RTM_NEWTFILTER, w.NLM_F_CREATE | w.NLM_F_REPLACE, self._filter(ifindex)
                      + w.attr_str(TCA_KIND, "bpf") + opts, f"bpf filter on ifindex {ifindex}")

    def filter_del(self, ifindex: int) -> bool:
        """Remove moor's filter; False when there was none (or no device)."""
        try:
            self._request(RTM_DELTFILTER, 0, self._filter(ifindex) + w.attr_str(TCA_KIND, "bpf"),
                          f"remove bpf filter on ifindex {ifindex}")
        except NetlinkError as e:
            if e.errno in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                return False
            raise
        return True


def _src_key(ifindex: int, key: Key) -> bytes:
    """struct src_key: ifindex, family, address (16 bytes, IPv4 in the first 4) of a pod route's
    destination, given as its bgp.wire key (version, prefix length, address bytes)."""
    fam = socket.AF_INET if key[0] == 4 else socket.AF_INET6
    return struct.pack("=II16s", ifindex, fam, key[2:])


class HostRouting:
    """The loaded program, its maps and the devices it is attached to (see the module doc)."""

    def __init__(self, conf: HostRoutingConfig | None = None, max_pods: int = MAX_PODS):
        self.conf = conf or HostRoutingConfig()
        self.max_pods = max_pods
        # host veth ifindex -> its pod routes' destinations, as bgp.wire keys: bytes the route watch
        # already holds (100k routes cost no object of their own here)
        self.routes: dict[int, set[Key]] = {}
        self.attached: set[int] = set()  # devices carrying this program (pods and uplinks)
        self.ready = False  # attach_all() ran: pod_route() attaches at once from here
        self._loaded: Loaded | None = None
        self._maps: dict[str, Map] = {}
        self._tc: Tc | None = None
        self._mtus: RouteMtus | None = None
        self.mtu_trie: dict[bytes, int] = {}  # what the route_mtu trie holds
        self._loop = None

    # -- loading ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Compile and load (HostRoutingUnavailable with the reason when the kernel or bcc cannot);
        nothing is attached yet. Safe in a worker thread: it touches no shared state but its own,
        and says nothing (the caller logs loaded(), or not, if it stopped meanwhile).
        The compile runs in a child process (bpfload.py): moord keeps the fds, not bcc and LLVM."""
        _check_bpf_allowed()
        try:
            loaded = load(str(BPF_SOURCE), [f"-DMAX_PODS={self.max_pods}", f"-DMAX_MTU_ROUTES={MAX_MTU_ROUTES}"],
                          {"from_pod": SCHED_CLS, "from_uplink": SCHED_CLS}, list(MAPS))
        except LoadError as e:
            if e.stage == "load":
                # the verifier rejects a helper this kernel lacks (bpf_redirect_peer 5.10,
                # bpf_redirect_neigh with a next hop 5.13): the load says why
                raise HostRoutingUnavailable(f"the kernel refused the tc program: {str(e)[:300]}") from None
            raise HostRoutingUnavailable(str(e)) from None
        self._loaded = loaded
        self._maps = loaded.maps
        self._tc = Tc()
        # before anything is attached: no packet meets the program before the trie is filled
        self._mtus = RouteMtus()
        self._sync_route_mtus()

    def loaded(self) -> str:
        """What start() cost, for the log."""
        l = self._loaded
        if l is None:
            return "not loaded"
        return (f"compiled and loaded in a child process ({l.child_cpu_s:.2f} s CPU, {l.child_peak_kib / 1024:.0f} MB "
                f"peak there; moord keeps only the fds); {len(self.mtu_trie)} route MTU bound(s) for the fast path "
                "(routes with an MTU metric)")

    # -- pods ------------------------------------------------------------------------------------
    def pod_route(self, dst, oif: int, present: bool) -> None:
        """A proto-109 route appeared or went (from the route watch; `dst` a network, a string or
        a bgp.wire key). Never raises: a pod the program cannot serve is served by the normal stack."""
        if not oif:
            return
        dst = key_of(dst)
        if present:
            self.routes.setdefault(oif, set()).add(dst)
            if self.ready:
                self._attach_pod(oif, [dst])
            return
        dsts = self.routes.get(oif)
        if dsts is None or dst not in dsts:
            return
        dsts.discard(dst)
        if self._maps:
            self._maps["sources"].delete(_src_key(oif, dst))
        if not dsts:  # the pod is gone (its veth with it, and the filter with the veth)
            del self.routes[oif]
            self.attached.discard(oif)
            if self._maps:
                self._maps["pods"].delete(_U32.pack(oif))

    def attach_all(self) -> None:
        """On the loop, once start() returned: every pod known so far, then the uplinks."""
        for oif, dsts in list(self.routes.items()):
            self._attach_pod(oif, list(dsts))
        for name in self.conf.uplinks:
            link = self._tc.link_get(name)
            if link is None:
                log.warning("host routing: uplink %s (dataplane.uplinks) does not exist: its way in stays with "
                            "the normal stack", name)
                continue
            try:
                self._attach(link.index, self._loaded.progs["from_uplink"])
                log.info("host routing: attached to uplink %s (to local pods only)", name)
            except OSError as e:
                log.warning("host routing: cannot attach to uplink %s: %s", name, e)
        self.ready = True

    def _attach_pod(self, oif: int, dsts: list) -> None:
        m = self._maps
        link = self._tc.link_get(index=oif)
        if link is None or link.kind != "veth":  # gone already, or not a pod's veth after all
            log.debug("host routing: ifindex %d is %s: not attached", oif, "gone" if link is None else link.kind)
            return
        keys = [_src_key(oif, d) for d in dsts]
        for k in keys:
            m["sources"].update(k, ONE)
        m["pods"].update(_U32.pack(oif), ONE)
        if oif in self.attached:
            return
        try:
            self._attach(oif, self._loaded.progs["from_pod"])
        except OSError as e:  # the pod works through the normal stack; the maps as they were
            for k in keys:
                m["sources"].delete(k)
            if not self.routes.get(oif, set()) - set(dsts):
                m["pods"].delete(_U32.pack(oif))
            log.warning("host routing: cannot attach to %s: %s (its pod uses the normal stack)", link.name, e)
            return
        log.debug("host routing: attached to %s", link.name)

    def _attach(self, ifindex: int, fd: int) -> None:
        """clsact (when missing) and moor's filter, replaced in place when one is there; a
        failure removes the clsact this call created."""
        created = self._tc.clsact(ifindex)
        try:
            self._tc.filter_replace(ifindex, fd)
        except OSError:
            if created:
                try:
                    self._tc.clsact_del(ifindex)
                except OSError:
                    pass
            raise
        self.attached.add(ifindex)

    # -- route MTU metrics (routemtu.py) ---------------------------------------------------------
    def follow_route_mtus(self, loop) -> None:
        """On the loop, once started: keep the trie in step with the routes' MTU metrics."""
        self._loop = loop
        loop.add_reader(self._mtus.fileno(), self.route_mtus_changed)

    def route_mtus_changed(self) -> None:
        """The route MTU socket is readable: apply its events, then the trie. Never raises (the
        loop's reader): on an error the trie keeps its bounds and the next event tries again."""
        try:
            if self._mtus.drain():
                self._sync_route_mtus()
        except Exception as e:
            log.warning("host routing: cannot follow the routes' MTU metrics: %s", e)

    def _sync_route_mtus(self) -> None:
        """The trie to the bounds of the routes now: new and lowered bounds first, then what went,
        so a packet never meets a looser bound than both the old and the new table give."""
        want = {lpm_key(dst): mtu for dst, mtu in self._mtus.bounds().items()}
        if len(want) > MAX_MTU_ROUTES:  # too many to hold: one bound per family, the smallest
            low: dict[int, int] = {}
            for dst, mtu in self._mtus.bounds().items():
                low[dst.version] = min(mtu, low.get(dst.version, mtu))
            want = {lpm_key(ipaddress.ip_network("0.0.0.0/0" if v == 4 else "::/0")): m for v, m in low.items()}
        t = self._maps["route_mtu"]
        for k, mtu in want.items():
            if self.mtu_trie.get(k) != mtu:
                t.update(k, _U32.pack(mtu))
        for k in [k for k in self.mtu_trie if k not in want]:
            t.delete(k)
        if want != self.mtu_trie and self.ready:  # at start, loaded() says it
            log.info("host routing: %d route MTU bound(s) for the fast path (routes with an MTU metric)", len(want))
        self.mtu_trie = want

    # -- reading and stopping ------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Packets by outcome, summed over CPUs."""
        if not self._maps:
            return {}
        t = self._maps["counters"]
        return {name: t.percpu_u64_sum(_U32.pack(i)) for i, name in enumerate(COUNTERS)}

    def _detach_all(self) -> None:
        """moor's filter off every pod veth known, not only those attached here: a load that
        failed, or ended after the shutdown began, leaves a previous moord's filters, whose maps
        nobody keeps any more; and off the configured uplinks."""
        tc = self._tc or Tc()
        try:
            uplinks = {link.index for link in map(tc.link_get, self.conf.uplinks) if link is not None}
            for ifindex in sorted(self.attached | set(self.routes) | uplinks):
                try:
                    tc.filter_del(ifindex)
                except OSError as e:
                    log.warning("host routing: cannot detach from ifindex %d: %s", ifindex, e)
        finally:
            if tc is not self._tc:
                tc.close()

    def prog_stats(self) -> dict[str, tuple[int, int]]:
        """(runs, total ns) per program; the kernel counts only while kernel.bpf_stats_enabled=1."""
        from .probe.kheaders import run_stats
        return {name: run_stats(fd) for name, fd in self._loaded.progs.items()} if self._loaded else {}

    def close(self, detach: bool) -> None:
        """`detach`: remove moor's filter from every device it is on (a full shutdown). Otherwise
        the filters stay, and with them the program and its maps (a restart stop)."""
        if self._mtus is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._mtus.fileno())
                self._loop = None
            self._mtus.close()
            self._mtus = None
        if detach:
            try:
                self._detach_all()
            except OSError as e:  # no netlink socket at all: nothing here can remove them
                log.warning("host routing: cannot remove moor's filters: %s", e)
            self.attached.clear()
        if self._tc is not None:
            self._tc.close()
            self._tc = None
        if self._loaded is not None:
            self._loaded.close()
            self._loaded, self._maps = None, {}
        self.ready = False


def remove_filters(ifindexes) -> int:
    """moor's filter off these devices (host routing turned off in the config, after a moord that
    had it on stopped for a restart); how many there were."""
    with Tc() as tc:
        return sum(1 for i in ifindexes if tc.filter_del(i))
