"""RouteWatch without privileges: its BPF socket filter run by a small classic-BPF interpreter, and
its view driven by synthetic netlink messages, a scripted event socket and a scripted table read
(loss, drain, re-read, events after the re-read applied in order, interrupted reads, errors)."""
from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest

from bgp.wire import key_of
from cni.netlink import wire as w
from dataplane import routewatch as rw
from dataplane.routewatch import RouteWatch, bpf_program

MOOR, LEARNED, STATIC = w.RTPROT_MOOR, w.RTPROT_MOOR_BGP, 4


# -- messages -------------------------------------------------------------------------------------
def route_msg(mtype: int, dst: str, proto: int = MOOR, oif: int = 5, flags: int = 0, priority: int = 0,
              table: int = w.RT_TABLE_MAIN, rtype: int = w.RTN_UNICAST) -> bytes:
    net = ipaddress.ip_network(dst)
    fam = socket.AF_INET if net.version == 4 else socket.AF_INET6
    body = w.RTMSG.pack(fam, net.prefixlen, 0, 0, table if table < 256 else 252, proto, w.RT_SCOPE_LINK, rtype, 0)
    body += w.attr(w.RTA_DST, net.network_address.packed) + w.attr_u32(w.RTA_OIF, oif)
    body += w.attr_u32(w.RTA_TABLE, table)
    if priority:
        body += w.attr_u32(w.RTA_PRIORITY, priority)
    return w.pack_msg(mtype, flags, 0, body)


def link_msg(mtype: int, index: int, up: bool = True) -> bytes:
    return w.pack_msg(mtype, 0, 0, w.IFINFOMSG.pack(0, 0, index, w.IFF_UP if up else 0, 0) + w.attr_str(w.IFLA_IFNAME, "x"))


def new(dst: str, **kw) -> bytes:
    return route_msg(w.RTM_NEWROUTE, dst, flags=w.NLM_F_CREATE | w.NLM_F_EXCL, **kw)


def gone(dst: str, **kw) -> bytes:
    return route_msg(w.RTM_DELROUTE, dst, **kw)


# -- the filter -----------------------------------------------------------------------------------
def run_bpf(prog, pkt: bytes) -> int:
    """Classic BPF, the five instructions the filter uses; loads past the end drop, as the kernel does."""
    a, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == 0x28:  # ldh [k], network byte order
            if k + 2 > len(pkt):
                return 0
            a = struct.unpack_from(">H", pkt, k)[0]
        elif code == 0x30:  # ldb [k]
            if k + 1 > len(pkt):
                return 0
            a = pkt[k]
        elif code == 0x15:  # jeq #k
            pc += jt if a == k else jf
        elif code == 0x45:  # jset #k
            pc += jt if a & k else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize("pkt, passes", [
    (new("10.0.0.1/32"), True),
    (gone("10.0.0.1/32"), True),
    (new("2001:db8::1/128"), True),
    (new("10.0.0.1/32", proto=LEARNED), False),  # the Fib's own churn
    (route_msg(w.RTM_NEWROUTE, "10.0.0.1/32", proto=LEARNED, flags=w.NLM_F_REPLACE), False),
    (route_msg(w.RTM_NEWROUTE, "10.0.0.1/32", proto=STATIC, flags=w.NLM_F_REPLACE), True),  # may replace ours
    (new("10.0.0.1/32", proto=STATIC), False),
    (gone("10.0.0.1/32", proto=STATIC), False),
    (link_msg(w.RTM_DELLINK, 7), True),
    (link_msg(w.RTM_NEWLINK, 7, up=False), True),  # IPv4 drops a downed link's routes silently
    (link_msg(w.RTM_NEWLINK, 7, up=True), False),
    (w.pack_msg(w.RTM_NEWADDR, 0, 0, w.IFADDRMSG.pack(2, 24, 0, 0, 7)), False),
    (b"\x10\x00", False),  # truncated
])
def test_the_socket_filter_passes_moor_routes_and_link_removals_only(pkt, passes):
    assert (run_bpf(bpf_program(MOOR), pkt) != 0) == passes


# -- the view, driven directly --------------------------------------------------------------------
class Consumer:
    def __init__(self):
        self.calls: list[tuple[str, bool]] = []
        self.have: set[str] = set()

    def __call__(self, route, present: bool) -> None:
        self.calls.append((str(route.dst), present))
        (self.have.add if present else self.have.discard)(str(route.dst))


def settle(watch: RouteWatch) -> None:
    """Run a pending job (a link's routes withdrawn in slices), then what waited for it."""
    while watch._job is not None or watch._queue:
        if watch._job is not None:
            for _ in watch._job:
                pass
            watch._job = None
        else:
            watch._apply(watch._queue.popleft())


def applied(watch: RouteWatch, *msgs: bytes) -> None:
    for m in msgs:
        watch._apply(m)
        settle(watch)
    settle(watch)
    watch._emit(float("inf"))


def test_a_deleted_or_downed_link_withdraws_exactly_its_routes_without_reading_the_table():
    c = Consumer()
    watch = RouteWatch(c)
    applied(watch, new("10.0.0.1/32", oif=5), new("10.0.0.2/32", oif=5), new("10.0.1.1/32", oif=6),
            new("2001:db8::1/128", oif=5, priority=1024))
    assert c.have == {"10.0.0.1/32", "10.0.0.2/32", "10.0.1.1/32", "2001:db8::1/128"}
    applied(watch, link_msg(w.RTM_DELLINK, 5))
    assert c.have == {"10.0.1.1/32"}
    applied(watch, link_msg(w.RTM_NEWLINK, 6, up=True))
    assert c.have == {"10.0.1.1/32"}
    applied(watch, link_msg(w.RTM_NEWLINK, 6, up=False))
    assert c.have == set() and watch.by_oif == {} and not watch._need


def test_a_link_with_thousands_of_routes_is_withdrawn_in_slices_before_later_events():
    c = Consumer()
    watch = RouteWatch(c)
    applied(watch, *(new(f"10.1.{i >> 8}.{i & 255}/32", oif=9) for i in range(3000)))
    watch._apply(link_msg(w.RTM_DELLINK, 9) + new("10.1.0.1/32", oif=9))  # one datagram, in this order
    assert watch._job is not None and len(watch._queue) == 1  # the rest of the datagram waits for the job
    applied(watch)
    assert c.have == {"10.1.0.1/32"}  # re-added on the same interface after the withdrawal


def test_another_protocol_replacing_our_route_withdraws_it_and_a_second_route_keeps_a_destination():
    c = Consumer()
    watch = RouteWatch(c)
    applied(watch, new("10.0.0.1/32"), new("10.0.0.1/32", priority=100), new("10.0.0.2/32"))
    applied(watch, gone("10.0.0.1/32", priority=100))
    assert c.have == {"10.0.0.1/32", "10.0.0.2/32"}  # the metric-0 route is still there
    applied(watch, route_msg(w.RTM_NEWROUTE, "10.0.0.1/32", proto=STATIC, flags=w.NLM_F_REPLACE))
    applied(watch, route_msg(w.RTM_NEWROUTE, "10.0.0.2/32", proto=STATIC, flags=w.NLM_F_CREATE))  # beside it
    assert c.have == {"10.0.0.2/32"}
    applied(watch, new("10.0.0.3/32", table=100), new("10.0.0.4/32", proto=LEARNED), new("10.0.0.5/32", rtype=2))
    assert c.have == {"10.0.0.2/32"}


def test_changes_that_cancel_out_before_they_are_told_tell_nothing():
    c = Consumer()
    watch = RouteWatch(c)
    for m in (new("10.0.0.1/32"), gone("10.0.0.1/32"), new("10.0.0.2/32")):
        watch._apply(m)
    watch._emit(float("inf"))
    assert c.calls == [("10.0.0.2/32", True)]


# -- losses, driven through the event-loop callback -----------------------------------------------
class FakeSock:
    """The event socket: a script of datagrams and errors, then EAGAIN."""

    def __init__(self):
        self.script: list = []

    def recv(self, _n: int) -> bytes:
        if not self.script:
            raise BlockingIOError(errno.EAGAIN, "empty")
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


class FakeLoop:
    def __init__(self):
        self.soon: list = []
        self.readers: dict = {}

    def call_soon(self, fn, *args):
        self.soon.append(fn)

    def call_at(self, _when, fn, *args):
        self.soon.append(fn)
        return self

    call_later = call_at

    def cancel(self):
        pass

    def add_reader(self, fd, fn):
        self.readers[fd] = fn

    def remove_reader(self, fd):
        self.readers.pop(fd, None)


class FakeDump:
    """A table read: returns `tables[i]` on the i-th read; `during` runs while it is in progress."""
    tables: list = []
    interrupted_first = 0
    during = None
    started = 0

    def __init__(self, proto: int):
        cls = type(self)
        self.n = cls.started
        cls.started += 1
        self.interrupted = self.n < cls.interrupted_first
        self.routes = {}
        for dst in cls.tables[min(self.n, len(cls.tables) - 1)]:
            key = rw.parse_route_msg(new(dst)[16:])[0]
            self.routes[key] = (5, ())
        self.reads = 0

    def fileno(self) -> int:
        return 1000 + self.n

    def close(self) -> None:
        pass

    def read(self, deadline: float) -> bool:
        self.reads += 1
        if self.reads == 1 and type(self).during is not None:
            type(self).during(self.n)
            return False
        return True


@pytest.fixture
def scripted(monkeypatch):
    FakeDump.tables, FakeDump.interrupted_first, FakeDump.during, FakeDump.started = [[]], 0, None, 0
    monkeypatch.setattr(rw, "TableDump", FakeDump)
    c = Consumer()
    watch = RouteWatch(c)
    watch.sock, watch._loop = FakeSock(), FakeLoop()

    def run(rounds: int = 100) -> None:
        for _ in range(rounds):
            soon, watch._loop.soon = watch._loop.soon, []
            for fn in soon or [watch._callback]:  # what the loop would call, else the socket's reader
                fn()
            if not watch._loop.soon and not watch._dump and not watch.sock.script:
                return
    return watch, c, run


def test_after_a_loss_queued_events_are_dropped_and_events_during_the_re_read_come_after_it(scripted):
    watch, c, run = scripted
    applied(watch, new("10.0.0.1/32"))
    watch.told = set(watch._dsts)
    # queued before the overflow was noticed (stale by the time the table is read), then the loss
    watch.sock.script = [new("10.0.0.9/32"), OSError(errno.ENOBUFS, "No buffer space available"),
                         gone("10.0.0.9/32")]
    # the kernel by the time of the read: .1 gone, .2 and .3 there; while it is read .3 goes
    FakeDump.tables = [["10.0.0.2/32", "10.0.0.3/32"]]
    FakeDump.during = lambda n: watch.sock.script.append(gone("10.0.0.3/32"))
    run()
    assert watch.overflows == 1 and watch.resyncs >= 1
    assert c.have == {"10.0.0.2/32"}, c.calls
    assert ("10.0.0.9/32", True) not in c.calls  # the stale event was never told


def test_an_interrupted_re_read_is_read_again(scripted):
    watch, c, run = scripted
    watch.sock.script = [OSError(errno.ENOBUFS, "lost")]
    FakeDump.tables, FakeDump.interrupted_first = [["10.0.0.7/32"]], 2
    run()
    assert watch.dump_restarts == 2 and FakeDump.started >= 3
    assert c.have == {"10.0.0.7/32"}


def test_nothing_raises_out_of_the_callback_and_an_error_is_handled_as_a_loss(scripted):
    watch, c, run = scripted
    watch.sock.script = [RuntimeError("something unexpected")]
    FakeDump.tables = [["10.0.0.8/32"]]
    run()
    assert watch.overflows == 1 and c.have == {"10.0.0.8/32"}

    def broken(route, present):
        raise ValueError("the consumer failed")
    watch.on_change = broken
    watch.sock.script = [new("10.0.0.10/32")]
    run()  # logged, not raised


def test_a_re_read_reconciles_against_the_adj_rib_out_too(scripted):
    watch, c, run = scripted
    rib_out: dict = {}
    watch.rib_out = rib_out
    applied(watch, new("10.0.0.1/32"), new("10.0.0.2/32"))
    rib_out.update({key_of("10.0.0.1/32"): None})  # the speaker's keys; .2 was lost from it somehow
    c.calls.clear()
    watch.sock.script = [OSError(errno.ENOBUFS, "lost")]
    FakeDump.tables = [["10.0.0.1/32", "10.0.0.2/32"]]
    run()
    assert c.calls == [("10.0.0.2/32", True)]  # announced again; nothing else changed
