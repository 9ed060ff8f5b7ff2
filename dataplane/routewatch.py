"""Watch the kernel routing table for the routes the CNI plugin installs (moor's protocol
number): the table is the contract between plugin and agent, so the agent reads it whole on
start and then follows netlink events, and either side can restart at any time.

The view stays exact under any burst:
- the event socket has a large receive buffer (SO_RCVBUFFORCE, else SO_RCVBUF) and a classic BPF
  filter that lets only moor's route messages and link removals in, so other routing churn (the
  learned routes the Fib installs, a routing daemon's table) can neither fill nor wake it;
- when messages are lost anyway (ENOBUFS), everything still queued is drained and dropped, the table
  is read again (a kernel-filtered dump, restarted when interrupted), the view and what was told to
  the consumer (the adj-RIB-out) are reconciled with it, and the events that arrived during the
  re-read are applied after it, in order; this repeats until a re-read completes without loss;
- the kernel flushes a removed (or downed) link's IPv4 routes without RTM_DELROUTE: the view keeps
  each route's interface and withdraws that interface's routes on RTM_DELLINK (or IFF_UP cleared);
- every piece of work runs in slices of a few milliseconds on the event loop, so a burst of
  100,000 routes never stalls the BGP sessions' keepalives; nothing ever raises out of the loop's
  reader callback (an unexpected error is logged and handled as a loss: re-read and reconcile).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import socket
import struct
import sys
import time
from collections import deque

from cni.netlink import wire as w
from bgp.wire import key_network
from cni.netlink.rtnl import NetlinkError, Route

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

log = logging.getLogger("moord.routewatch")

RTMGRP_LINK, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x40, 0x400
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12  # dump requests are filtered by the kernel (protocol, table)
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
RTM_F_CLONED = 0x200

# one route event costs ~830 bytes of receive buffer (skb truesize), and the kernel doubles what is
# asked: 32 MiB holds ~80,000 events queued while the agent is busy
RCVBUF = 32 << 20
SLICE_S = 0.008  # work done per event-loop callback before yielding to the BGP sessions
MAX_QUEUE = 1 << 20  # events held back during a re-read; beyond that they count as lost
MAX_VERIFY = 3  # re-reads in a row made only because the table changed while it was read
RETRY_S = 0.5  # wait before re-reading after the kernel refused a dump

_HDR = struct.Struct("=IHHII")
_HDR_LEN = _HDR.size
_RTMSG = w.RTMSG
_U32 = struct.Struct("=I")
_IFF_UP_BYTE = 24 if sys.byteorder == "little" else 27  # the byte of ifi_flags holding IFF_UP


def _sw16(v: int) -> int:
    """A host-order u16 as classic BPF's (big-endian) half-word load sees it."""
    return int.from_bytes(struct.pack("=H", v), "big")


def bpf_program(proto: int, learned: int = w.RTPROT_MOOR_BGP) -> list[tuple[int, int, int, int]]:
    """A classic BPF socket filter for the event socket (one netlink message per multicast skb):
    route messages with `proto`; RTM_NEWROUTE with NLM_F_REPLACE of another protocol (it may have
    replaced one of ours; never the learned routes' protocol, whose replaces are the Fib's churn);
    RTM_DELLINK; RTM_NEWLINK with IFF_UP cleared (IPv4 flushes a downed link's routes silently).
    Everything else never reaches the socket's buffer."""
    LDH, LDB, JEQ, JSET, RET = 0x28, 0x30, 0x15, 0x45, 0x06
    ACCEPT, DROP, ROUTE = "accept", "drop", "route"
    prog: list[tuple] = [
        (LDH, 0, 0, 4),  # nlmsg_type
        (JEQ, ROUTE, 0, _sw16(w.RTM_NEWROUTE)),
        (JEQ, ROUTE, 0, _sw16(w.RTM_DELROUTE)),
        (JEQ, ACCEPT, 0, _sw16(w.RTM_DELLINK)),
        (JEQ, 0, DROP, _sw16(w.RTM_NEWLINK)),
        (LDB, 0, 0, _HDR_LEN + 8 + (_IFF_UP_BYTE - 24)),  # ifinfomsg.ifi_flags, the IFF_UP byte
        (JSET, DROP, ACCEPT, w.IFF_UP),
        ("label", ROUTE),
        (LDB, 0, 0, _HDR_LEN + 5),  # rtmsg.rtm_protocol
        (JEQ, ACCEPT, 0, proto),
        (JEQ, DROP, 0, learned),
        (LDH, 0, 0, 6),  # nlmsg_flags
        (JSET, ACCEPT, DROP, _sw16(w.NLM_F_REPLACE)),
        ("label", ACCEPT),
        (RET, 0, 0, 0xFFFFFFFF),
        ("label", DROP),
        (RET, 0, 0, 0),
    ]
    return assemble(prog)


def assemble(prog: list[tuple]) -> list[tuple[int, int, int, int]]:
    """Classic BPF with ("label", name) entries and jump targets named by label: the label
    entries removed and each named target turned into its relative offset."""
    labels, out, at = {}, [], 0
    for ins in prog:
        if ins[0] == "label":
            labels[ins[1]] = at
        else:
            at += 1
    at = 0
    for ins in prog:
        if ins[0] == "label":
            continue
        code, jt, jf, k = ins
        jt = labels[jt] - at - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - at - 1 if isinstance(jf, str) else jf
        out.append((code, jt, jf, k))
        at += 1
    return out


def attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER with a classic BPF program (the kernel copies it during the call)."""
    code = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def set_rcvbuf(sock: socket.socket, size: int) -> int:
    """SO_RCVBUFFORCE (CAP_NET_ADMIN: beyond net.core.rmem_max), else SO_RCVBUF; what the kernel
    granted."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def _hop_oifs(data: bytes) -> tuple[int, ...]:
    out, off = [], 0
    while off + w.RTNEXTHOP.size <= len(data):
        ln, _fl, _hops, oif = w.RTNEXTHOP.unpack_from(data, off)
        if ln < w.RTNEXTHOP.size:
            break
        out.append(oif)
        off += (ln + 3) & ~3
    return tuple(out)


_RTA = struct.Struct("=HH")
_ZERO = {socket.AF_INET: b"\0" * 4, socket.AF_INET6: b"\0" * 16}
_VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}


def parse_route_msg(body: bytes):
    """The parts of an RTM_NEWROUTE/RTM_DELROUTE body the watch needs:
    (key, table, protocol, oif, multipath oifs), or None for a route that is not unicast.
    key = (destination, tos, priority): what the kernel tells routes apart by (IPv4: tos and
    priority; IPv6: metric); the destination is the speaker's key for the prefix (bgp.wire.Key:
    IP version and NLRI bytes), so the view and the adj-RIB-out share one small bytes object per
    route and no ipaddress object is made. Keys are tuples of bytes and ints, which the garbage
    collector does not track: the view of 100,000 routes costs it nothing. Only the five
    attributes used are read (no dict of all of them)."""
    if len(body) < _RTMSG.size:
        return None
    fam, dlen, _sl, tos, tbl, proto, _scope, rtype, rflags = _RTMSG.unpack_from(body)
    if rtype != w.RTN_UNICAST or fam not in _VERSION or rflags & RTM_F_CLONED:
        return None  # RTM_F_CLONED: a cached exception (PMTU), not a route in the table
    raw, prio, oif, mp = _ZERO[fam], 0, 0, ()
    off, end = _RTMSG.size, len(body)
    while off + 4 <= end:
        ln, kind = _RTA.unpack_from(body, off)
        if ln < 4:
            break
        if kind == w.RTA_DST:
            raw = body[off + 4:off + ln]
        elif kind == w.RTA_OIF:
            oif = _U32.unpack_from(body, off + 4)[0]
        elif kind == w.RTA_TABLE:
            tbl = _U32.unpack_from(body, off + 4)[0]
        elif kind == w.RTA_PRIORITY:
            prio = _U32.unpack_from(body, off + 4)[0]
        elif kind == w.RTA_MULTIPATH:
            mp = _hop_oifs(body[off + 4:off + ln])
        off += (ln + 3) & ~3
    dst = bytes((_VERSION[fam], dlen)) + raw[:(dlen + 7) >> 3]
    return (dst, tos, prio), tbl, proto, oif, mp


def network(dk: bytes):
    """The destination of a key's first field, as an ipaddress network."""
    return key_network(dk)


class TableDump:
    """One read of moor's routes in the main table (IPv4 then IPv6) on its own socket, asked of the
    kernel already filtered by protocol and table (strict dump checking, Linux 4.20+; older
    kernels send everything and the filter here does the same). Read in slices from the event
    loop (`read`), or at once (`run`). `interrupted`: the kernel flagged it inconsistent."""

    def __init__(self, proto: int):
        self.proto = proto
        self.routes: dict = {}  # key -> (oif, multipath oifs)
        self._vals: dict = {}
        self.messages = 0
        self.interrupted = False
        self.done = False
        self._families = [socket.AF_INET, socket.AF_INET6]
        self._family = 0
        self._seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            try:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            except OSError:
                pass
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((0, 0))
            self.sock.setblocking(False)
            self._next()
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def _next(self) -> None:
        self._family = fam = self._families.pop(0)
        self._seq += 1
        body = _RTMSG.pack(fam, 0, 0, 0, w.RT_TABLE_MAIN, self.proto, 0, 0, 0) + \
            w.attr_u32(w.RTA_TABLE, w.RT_TABLE_MAIN)
        self.sock.send(w.pack_msg(w.RTM_GETROUTE, w.NLM_F_REQUEST | w.NLM_F_DUMP, self._seq, body))

    def _end(self, code: int) -> bool:
        """The current family's dump ended; True when the whole read is complete."""
        if code and code != errno.ENOENT:  # ENOENT: no main table yet (a fresh netns)
            if not (self._family == socket.AF_INET6 and code in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP)):
                raise NetlinkError(code, "dump routes")
        if self._families:
            self._next()
            return False
        self.done = True
        return True

    def read(self, deadline: float) -> bool:
        """Take what the kernel has ready, until `deadline` (time.monotonic); True when done."""
        while not self.done:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return False
            for mtype, flags, seq, body, _next in w.iter_msgs(data):
                if seq != self._seq:
                    continue
                if flags & w.NLM_F_DUMP_INTR:
                    self.interrupted = True
                if mtype == w.NLMSG_DONE or mtype == w.NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
                    if self._end(code):
                        return True
                    break
                if mtype != w.RTM_NEWROUTE:
                    continue
                self.messages += 1
                p = parse_route_msg(body)
                if p is not None and p[2] == self.proto and p[1] == w.RT_TABLE_MAIN and p[0][0][0] == _VERSION[self._family]:
                    val = (p[3], p[4])
                    # one (oif, ()) tuple per interface, not per route: 100,000 routes share a few
                    self.routes[p[0]] = self._vals.setdefault(val, val) if not p[4] else val
            if time.monotonic() > deadline:
                return False
        return True

    def run(self, timeout: float = 60.0) -> None:
        """Read it whole, blocking (start-up)."""
        self.sock.settimeout(timeout)
        self.read(float("inf"))


class RouteWatch:
    """Follows moor's routes (protocol `proto`, main table) and calls on_change(route, present)
    whenever a destination appears or goes. Counters for metrics and tests: overflows (losses
    seen), resyncs (re-reads completed), dump_restarts (re-reads begun again), events (messages
    applied), max_slice_s (the longest one callback held the event loop)."""

    def __init__(self, on_change: Callable[[Route, bool], None], proto: int = w.RTPROT_MOOR, *,
                 rcvbuf: int = RCVBUF, socket_filter: bool = True, rib_out: dict | None = None,
                 slice_s: float = SLICE_S):
        self.on_change = on_change  # (route, present)
        self.proto = proto
        self.rib_out = rib_out  # the speaker's adj-RIB-out, when given: reconciled against too
        self.sock: socket.socket | None = None
        self.socket_filter = socket_filter
        self.filtered = False  # the BPF filter is attached
        self.rcvbuf_wanted, self.rcvbuf = rcvbuf, 0
        self.slice_s = slice_s
        # the kernel's table as last known (keys: see parse_route_msg)
        self.routes: dict = {}  # key -> oif
        self._mp: dict = {}  # key -> interfaces of a multipath route
        self.by_oif: dict[int, set] = {}  # interface -> keys of the routes using it
        self._dsts: dict = {}  # destination (bgp.wire.Key) -> keys of its routes
        self.told: set = set()  # destination keys the consumer was told are present
        self._dirty: dict = {}  # destination keys whose told state may differ from the table
        self._emitting = None  # an iterator over a batch of dirty destinations
        self._queue: deque = deque()  # event datagrams received, not yet applied
        self._lost = False  # a loss was seen: drop what is queued until the socket is empty
        self._after_loss = False
        self._need = False  # a re-read is wanted
        self._retry_at = 0.0
        self._dump: TableDump | None = None
        self._seen_during_dump = 0
        self._verify = 0
        self._verify_pending = False
        self._job = None  # a generator making a long change to the view in slices (a re-read, a link gone)
        self._loop = None
        self._scheduled = False
        self._timer = None
        self.overflows = 0
        self.resyncs = 0
        self.dump_restarts = 0
        self.events = 0
        self.max_slice_s = 0.0

    @property
    def present(self) -> set:
        """Destinations of moor's routes in the table, as last seen."""
        return {network(dk) for dk in self._dsts}

    def _route(self, dk: tuple) -> Route:
        keys = self._dsts.get(dk)
        if keys:
            key = keys[0]
            return Route(dst=network(dk), oif=self.routes.get(key, 0), proto=self.proto, priority=key[2])
        return Route(dst=network(dk), proto=self.proto)

    # -- start and stop --------------------------------------------------------------------------
    def start(self, loop) -> list[bytes]:
        """Subscribe first, then read the table: no change can fall between the two (one can be
        seen twice, which is harmless). Returns the destinations present now (bgp.wire.Key, the
        speaker's own key: no Route or ipaddress object per route); the caller announces them
        itself."""
        self._loop = loop
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            self.rcvbuf = set_rcvbuf(sock, self.rcvbuf_wanted)
            if self.socket_filter:
                try:
                    attach_filter(sock, bpf_program(self.proto))
                    self.filtered = True
                except OSError as e:
                    log.warning("route watch: no socket filter (%s); every routing message is read", e)
            sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
            sock.setblocking(False)
            table = self._read_table()
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        for key, (oif, mp) in table.items():
            self._add(key, oif, mp, mark=False)  # all told at once below: no dirty set of the whole table
        self.told = set(self._dsts)
        self._dirty.clear()
        loop.add_reader(sock.fileno(), self._callback)
        log.info("route watch: %d routes of protocol %d; receive buffer %d bytes, socket filter %s",
                 len(self.routes), self.proto, self.rcvbuf, "on" if self.filtered else "off")
        return list(self._dsts)

    def _read_table(self) -> dict:
        for attempt in range(100):
            d = TableDump(self.proto)
            try:
                d.run()
            finally:
                d.close()
            if not d.interrupted:
                return d.routes
            self.dump_restarts += 1
            time.sleep(min(0.01 * (attempt + 1), 0.2))
        log.warning("route watch: the table read was interrupted 100 times; using the last read")
        return d.routes

    def stop(self, loop=None) -> None:
        loop = loop or self._loop
        if self._dump is not None:
            if loop is not None:
                loop.remove_reader(self._dump.fileno())
            self._dump.close()
            self._dump = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.sock is not None:
            if loop is not None:
                loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    # -- the view --------------------------------------------------------------------------------
    def _index(self, key, oif: int, mp: tuple) -> None:
        if mp:
            self._mp[key] = mp
        for i in mp or (oif,):
            if i:
                keys = self.by_oif.get(i)
                if keys is None:
                    self.by_oif[i] = {key}
                else:
                    keys.add(key)

    def _unindex(self, key, oif: int) -> None:
        for i in self._mp.pop(key, ()) or (oif,):
            keys = self.by_oif.get(i)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_oif[i]

    def _add(self, key, oif: int, mp: tuple = (), mark: bool = True) -> None:
        old = self.routes.get(key)
        if old is not None:
            if old != oif or self._mp.get(key, ()) != mp:
                self._unindex(key, old)
                self._index(key, oif, mp)
                self.routes[key] = oif
            return
        self.routes[key] = oif
        self._index(key, oif, mp)
        dk = key[0]
        keys = self._dsts.get(dk)
        if keys is None:
            self._dsts[dk] = (key,)
            if mark:
                self._dirty[dk] = None
        else:
            self._dsts[dk] = keys + (key,)

    def _del(self, key) -> None:
        oif = self.routes.pop(key, None)
        if oif is None:
            return
        self._unindex(key, oif)
        dk = key[0]
        keys = tuple(k for k in self._dsts[dk] if k != key)
        if keys:
            self._dsts[dk] = keys
        else:
            del self._dsts[dk]
            self._dirty[dk] = None

    def _link_gone(self, index: int) -> None:
        """A link was removed or set down: the kernel dropped its IPv4 routes without a word (and
        announces its IPv6 ones); a multipath route may only have lost a hop: read it again."""
        keys = list(self.by_oif.get(index, ()))
        if len(keys) <= 256:
            for _ in self._withdraw_keys(keys):
                pass
        else:  # thousands of routes on one link: in slices, before any later event
            self._job = self._withdraw_keys(keys)

    def _withdraw_keys(self, keys: list):
        for i, key in enumerate(keys):
            if key in self._mp:
                self._need = True
            else:
                self._del(key)
            if i & 255 == 255:
                yield

    def _apply(self, data: bytes) -> None:
        """Apply one datagram of events (one message each, from the kernel's multicast)."""
        for mtype, flags, _seq, body, off in w.iter_msgs(data):
            self.events += 1
            if mtype == w.RTM_NEWROUTE or mtype == w.RTM_DELROUTE:
                p = parse_route_msg(body)
                if p is None:
                    continue
                key, tbl, proto, oif, mp = p
                if tbl != w.RT_TABLE_MAIN:
                    continue
                if proto != self.proto:
                    # a route of another protocol replaced ours in place (same key): ours is gone
                    if mtype == w.RTM_NEWROUTE and flags & w.NLM_F_REPLACE and key in self.routes:
                        self._del(key)
                elif mtype == w.RTM_NEWROUTE:
                    self._add(key, oif, mp)
                else:
                    self._del(key)
                continue
            if len(body) < w.IFINFOMSG.size:
                continue
            _fam, _type, index, iflags, _chg = w.IFINFOMSG.unpack_from(body)
            if (mtype == w.RTM_DELLINK or (mtype == w.RTM_NEWLINK and not iflags & w.IFF_UP)) \
                    and index in self.by_oif:
                self._link_gone(index)
                if self._job is not None and off < len(data):  # the rest waits for the job
                    self._queue.appendleft(data[off:])
                    return

    def _emit(self, deadline: float) -> bool:
        """Tell the consumer what changed, destination by destination; True when nothing is left."""
        n = 0
        while True:
            if self._emitting is None:
                if not self._dirty:
                    return True
                self._emitting = iter(list(self._dirty))
                self._dirty = {}
            for dk in self._emitting:
                if dk in self._dsts:
                    if dk not in self.told:
                        self.told.add(dk)
                        self._tell(self._route(dk), True)
                elif dk in self.told:
                    self.told.discard(dk)
                    self._tell(self._route(dk), False)
                n += 1
                if n & 63 == 0 and time.monotonic() > deadline:
                    return False
            self._emitting = None

    def _tell(self, r: Route, present: bool) -> None:
        try:
            self.on_change(r, present)
        except Exception:  # the consumer's failure must not stop the watch
            log.exception("route watch: the consumer failed on %s", r.dst)

    # -- the event loop --------------------------------------------------------------------------
    def _callback(self) -> None:
        """Every slice of work, whichever socket or timer woke us; never raises."""
        self._scheduled = False
        if self.sock is None:
            return
        t0 = time.monotonic()
        try:
            self._step(t0 + self.slice_s)
        except Exception:
            log.exception("route watch: unexpected error; reading the table again")
            try:
                self._loss("an unexpected error")
                # drain and read again shortly, whether or not the socket wakes us (not at once: an
                # error that persists must not spin)
                if self._timer is None and self.sock is not None:
                    self._timer = self._loop.call_later(RETRY_S, self._timer_fired)
            except Exception:
                log.exception("route watch: cannot recover")
        dt = time.monotonic() - t0
        if dt > self.max_slice_s:
            self.max_slice_s = dt
        if self._more() and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._callback)

    def _more(self) -> bool:
        """Work that no socket will wake us for."""
        if self.sock is None or self._dump is not None or self._lost or self._timer is not None:
            return False
        return bool(self._need or self._queue or self._job is not None or self._dirty
                    or self._emitting is not None or self._verify_pending)

    def _loss(self, why: str) -> None:
        """Events were lost: what is queued is superseded by the re-read that follows the drain."""
        self.overflows += 1
        log.warning("route watch: netlink messages lost (%s; loss #%d): draining, then reading the table again",
                    why, self.overflows)
        self._lost = self._after_loss = True
        self._need = False
        self._queue.clear()
        self._job = None
        self._verify_pending = False
        self._verify = 0
        if self._dump is not None:
            self._loop.remove_reader(self._dump.fileno())
            self._dump.close()
            self._dump = None

    def _read_events(self, deadline: float) -> None:
        sock, n = self.sock, 0
        while True:
            n += 1
            if n & 255 == 0 and time.monotonic() > deadline:
                return
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                if self._lost:  # drained: nothing from before the loss is left
                    self._lost = False
                    self._need = True
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self._loss("receive buffer overflow")
                    continue
                raise
            if self._lost:
                continue
            if self._dump is not None:
                self._seen_during_dump += 1
            self._queue.append(data)
            if len(self._queue) > MAX_QUEUE:
                self._loss(f"more than {MAX_QUEUE} events held during a table read")

    def _step(self, deadline: float) -> None:
        self._read_events(deadline)
        if self._dump is not None:
            if not self._dump.read(deadline):
                self._emit(deadline)  # the view holds still meanwhile
                return
            self._dump_done()
            if self._dump is not None:  # read again
                return
        if self._lost or self._timer is not None:
            return
        # events in the order they came; after a loss only those that came after the drain are
        # left, and they are applied after the read that followed it
        q, n = self._queue, 0
        while True:
            if self._job is not None:  # finished before the next event is applied
                for _ in self._job:
                    if time.monotonic() > deadline:
                        return
                self._job = None
            if not q:
                break
            self._apply(q.popleft())
            n += 1
            if n & 31 == 0 and time.monotonic() > deadline:
                return
        if self._verify_pending:
            self._verify_pending = False
            self._need = True
        if self._need:  # nothing is queued now: the read reflects everything applied so far
            if time.monotonic() < self._retry_at:
                self._timer = self._loop.call_at(self._retry_at, self._timer_fired)
                return
            self._start_dump()
        self._emit(deadline)

    def _timer_fired(self) -> None:
        self._timer = None
        self._callback()

    def _start_dump(self) -> None:
        self._need = False
        try:
            self._dump = TableDump(self.proto)
        except OSError as e:
            log.warning("route watch: cannot read the table: %s; retrying", e)
            self._need, self._retry_at = True, time.monotonic() + RETRY_S
            return
        self._seen_during_dump = 0
        self._loop.add_reader(self._dump.fileno(), self._callback)

    def _dump_done(self) -> None:
        d = self._dump
        self._loop.remove_reader(d.fileno())
        d.close()
        self._dump = None
        if d.interrupted:
            self.dump_restarts += 1
            log.info("route watch: table read interrupted by a change; reading again")
            self._start_dump()
            return
        self.resyncs += 1
        if self._seen_during_dump and self._verify < MAX_VERIFY:
            # the table changed while it was read: the events cover what changed, but a dump that
            # restarts its walk (IPv6) may skip routes that did not; read once more when quiet
            self._verify += 1
            self._verify_pending = True
        else:
            self._verify = 0
        self._job = self._reconciling(d.routes, self._seen_during_dump)

    def _reconciling(self, fresh: dict, during: int):
        """Bring the view to a completed read, in slices (a generator), and mark every destination
        whose told state differs from it (announce what is missing, withdraw what is gone)."""
        t0 = time.monotonic()
        before = len(self.routes)
        gone = [k for k in self.routes if k not in fresh]
        for i, k in enumerate(gone):
            self._del(k)
            if i & 255 == 255:
                yield
        added = 0
        for i, (k, (oif, mp)) in enumerate(fresh.items()):
            if k not in self.routes:
                added += 1
            self._add(k, oif, mp)
            if i & 255 == 255:
                yield
        # what was told: to be withdrawn where the table lacks it, announced again where the
        # adj-RIB-out lost it; and what the table holds but was never told
        rib_out = self.rib_out
        for i, dk in enumerate(list(self.told)):
            if dk not in self._dsts:
                self._dirty[dk] = None
            elif rib_out is not None and dk not in rib_out:  # the same bgp.wire.Key
                self.told.discard(dk)
                self._dirty[dk] = None
            if i & 255 == 255:
                yield
        for i, dk in enumerate(self._dsts):
            if dk not in self.told:
                self._dirty[dk] = None
            if i & 1023 == 1023:
                yield
        after_loss, self._after_loss = self._after_loss, False
        log.log(logging.WARNING if after_loss else logging.INFO,
                "route watch: table read again%s (re-read #%d): %d routes (%d before; %d gone, %d new), %d events "
                "during the read applied after it; %.2f s", " after a loss" if after_loss else "", self.resyncs,
                len(fresh), before, len(gone), added, during, time.monotonic() - t0,
                extra={"resyncs": self.resyncs, "losses": self.overflows, "routes": len(fresh), "gone": len(gone),
                       "new": added})
