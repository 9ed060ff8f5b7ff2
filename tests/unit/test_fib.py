"""The Fib without privileges: a scripted netlink socket stands in for the kernel. Changes are
queued and written in batches from the event loop (the latest next hops per prefix win), a replace
the kernel refuses removes the old route (or keeps the ECMP hops it accepts), and an unexpected
error neither escapes the loop callback nor loses the batch."""
from __future__ import annotations

import asyncio
import errno
import ipaddress

from cni.netlink import wire as w
from dataplane.fib import Fib

P = ipaddress.ip_network("198.51.100.0/24")


class FakeKernel:
    """Routes by prefix; gateways outside 192.0.2.0/24 are unreachable (ENETUNREACH)."""

    def __init__(self):
        self.routes: dict = {}
        self.batches: list[int] = []
        self.fail_next: Exception | None = None

    def route_replace_request(self, dst, gateways, proto, priority=0, table=w.RT_TABLE_MAIN):
        return ("replace", dst, tuple(str(g) for g in gateways))

    def route_del_request(self, dst, proto=0, priority=0, table=w.RT_TABLE_MAIN):
        return ("del", dst, ())

    def batch(self, reqs):
        if self.fail_next is not None:
            e, self.fail_next = self.fail_next, None
            raise e
        self.batches.append(len(reqs))
        codes = []
        for op, dst, gws in reqs:
            if op == "replace":
                if any(not g.startswith("192.0.2.") for g in gws):
                    codes.append(errno.ENETUNREACH)
                    continue
                self.routes[dst] = gws
                codes.append(0)
            else:
                codes.append(0 if self.routes.pop(dst, None) is not None else errno.ESRCH)
        return codes

    def route_del(self, dst, **kw):
        return self.routes.pop(dst, None) is not None

    def close(self):
        pass


def fib() -> tuple[Fib, FakeKernel]:
    kernel = FakeKernel()
    return Fib(nl=kernel), kernel


async def settle(f: Fib) -> None:
    while f.pending or f._scheduled:
        await asyncio.sleep(0)


def test_changes_are_queued_coalesced_and_written_in_batches_from_the_loop():
    f, kernel = fib()

    async def main():
        nets = [ipaddress.ip_network(f"10.0.{i >> 8}.{i & 255}/32") for i in range(1000)]
        for p in nets:
            f.set(p, ("192.0.2.1",))
        f.set(nets[0], ("192.0.2.3",))  # the latest wins
        assert kernel.routes == {}  # nothing written inside the caller's callback
        await settle(f)
        assert len(kernel.routes) == 1000 and kernel.routes[nets[0]] == ("192.0.2.3",)
        assert kernel.batches == [256, 256, 256, 232]
        for p in nets:
            f.set(p, ())
        await settle(f)
        assert kernel.routes == {} and f.installed == {}
    asyncio.run(main())


def test_without_a_running_loop_a_change_is_written_at_once():
    f, kernel = fib()
    f.set(P, ("192.0.2.1",))
    assert kernel.routes == {P: ("192.0.2.1",)} and f.installed == {P: ("192.0.2.1",)}


def test_a_refused_replace_removes_the_old_route_and_ecmp_keeps_the_accepted_hops():
    f, kernel = fib()
    f.set(P, ("192.0.2.1",))
    f.set(P, ("10.99.0.1",))
    assert P not in kernel.routes and P not in f.installed
    assert (f.failed, f.removed_on_refusal) == (1, 1)
    f.set(P, ("192.0.2.1", "10.99.0.1"))  # nothing to remove: one hop is good
    assert kernel.routes[P] == ("192.0.2.1",) and f.installed[P] == ("192.0.2.1",)
    f.set(P, ("10.99.0.1", "10.99.0.2"))  # no hop is good
    assert P not in kernel.routes and (f.failed, f.removed_on_refusal) == (3, 2)


def test_an_unexpected_error_is_logged_and_the_batch_written_later():
    f, kernel = fib()

    async def main():
        kernel.fail_next = RuntimeError("netlink went strange")
        f.set(P, ("192.0.2.1",))
        await asyncio.sleep(0)  # the slice runs, fails, and the change stays queued
        assert f.pending == {P: ("192.0.2.1",)} and kernel.routes == {}
        await asyncio.wait_for(settle(f), 5)
        assert kernel.routes == {P: ("192.0.2.1",)}
    asyncio.run(main())


def test_a_lost_reply_makes_each_change_written_alone():
    f, kernel = fib()
    kernel.fail_next = OSError(errno.ENOBUFS, "No buffer space available")
    f.set(P, ("192.0.2.1",))
    assert kernel.routes == {P: ("192.0.2.1",)} and f.installed == {P: ("192.0.2.1",)}
