"""The route watch and the Fib against the real kernel, each scenario in its own network namespace
(the scenario runs in a child process inside it and reports JSON):

- the socket filter keeps the learned routes' churn (protocol 111) out of the watch entirely;
- a deleted link's IPv4 routes (flushed by the kernel without RTM_DELROUTE) and a downed link's
  routes are withdrawn from what the link's routes were, without reading the table again; a route
  of another protocol replacing ours in place withdraws it;
- with a tiny receive buffer and bursts of adds and deletes (one while the event loop is blocked),
  the watch overflows, re-reads and ends exactly equal to the kernel's table;
- the Fib writes 20,000 routes, an ECMP change and their removal exactly; a replace the kernel
  refuses removes the old route (or keeps the ECMP hops it accepts).
"""
from __future__ import annotations

import asyncio
import atexit
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from dataplane.nslab import Lab
from tests.helpers import REPO

pytestmark = pytest.mark.integration


def in_netns(scenario: str, *args: str) -> dict:
    lab = Lab()
    try:
        ns = lab.ns("rw")
        code = ("import json, sys; from tests.integration.test_routewatch_kernel import " + scenario +
                " as f; print(json.dumps(f(*sys.argv[1:])))")
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        lab.close()


# -- scenarios (run inside the namespace) ---------------------------------------------------------
_BATCH: list[str] = []


def _batch_file(lines: list[str]) -> str:
    """The scenario's own batch file for `ip -batch`, removed when the child exits."""
    if not _BATCH:
        fd, path = tempfile.mkstemp(prefix="moor-rw-", suffix=".batch")
        os.close(fd)
        atexit.register(os.unlink, path)
        _BATCH.append(path)
    with open(_BATCH[0], "w") as f:
        f.write("".join(lines))
    return _BATCH[0]


def _sh(cmd: str, lines: list[str] | None = None) -> None:
    if lines is not None:
        cmd = cmd.replace("BATCH", _batch_file(lines))
    subprocess.run(cmd, shell=True, check=True, timeout=120)


async def _quiet(watch) -> None:
    """Until the watch has read, applied and told everything the kernel sent (a hang guard)."""
    deadline = time.monotonic() + 120
    calm = 0
    while calm < 3:
        if time.monotonic() > deadline:  # a hang guard, not a speed check
            raise TimeoutError("the route watch never went quiet")
        busy = (watch._queue or watch._job is not None or watch._dirty or watch._emitting is not None
                or watch._dump is not None or watch._need or watch._lost or watch._verify_pending)
        calm = 0 if busy else calm + 1
        await asyncio.sleep(0.1)


def _kernel(proto: int) -> set[str]:
    from cni.netlink.rtnl import RTNL
    with RTNL() as nl:
        return {str(r.dst) for v in (4, 6) for r in nl.routes(v) if r.proto == proto}


def scenario_links_and_filter() -> dict:
    from dataplane.routewatch import RouteWatch
    out: dict = {}

    async def main() -> None:
        told: set[str] = set()
        watch = RouteWatch(lambda r, present: (told.add if present else told.discard)(str(r.dst)))
        watch.start(asyncio.get_running_loop())
        out["filtered"] = watch.filtered
        for a, b in (("pa", "pa1"), ("pb", "pb1")):
            _sh(f"ip link add {a} type veth peer name {b} && ip link set {a} up && ip link set {b} up")
        _sh("ip addr add 192.0.2.2/24 dev pb")
        await _quiet(watch)
        e0 = watch.events
        # 2,000 learned routes (the Fib's protocol) and 10 pod routes
        _sh("ip -batch BATCH",
            [f"route add 172.16.{i >> 8}.{i & 255}/32 via 192.0.2.1 proto 111 metric 4096\n" for i in range(2000)]
            + [f"route add 10.9.0.{i}/32 dev pb proto 109\n" for i in range(10)])
        await _quiet(watch)
        out["events_for_2010_routes"] = watch.events - e0
        out["after_filter"] = sorted(told)
        # 300 IPv4 and 2 IPv6 routes on pa; the link goes
        _sh("ip -batch BATCH", [f"route add 10.1.{i >> 8}.{i & 255}/32 dev pa proto 109\n"
                                              for i in range(300)]
            + [f"route add 2001:db8::{i}/128 dev pa proto 109\n" for i in (1, 2)])
        await _quiet(watch)
        out["with_pa"] = len(told)
        r0 = watch.resyncs
        _sh("ip link del pa")
        await _quiet(watch)
        out["after_pa_deleted"] = sorted(told)
        # another protocol replaces one of ours in place
        _sh("ip route replace 10.9.0.0/32 dev pb proto static")
        await _quiet(watch)
        out["after_replace"] = sorted(told)
        # pb goes down: IPv4 flushes its routes silently
        _sh("ip link set pb down")
        await _quiet(watch)
        out["after_pb_down"] = sorted(told)
        out["resyncs_for_links"] = watch.resyncs - r0
        out["overflows"] = watch.overflows
        out["kernel"] = sorted(_kernel(109))
        watch.stop()
    asyncio.run(main())
    return out


def scenario_overflow(rcvbuf: str) -> dict:
    from dataplane.routewatch import RouteWatch
    out: dict = {"rounds": []}

    async def main() -> None:
        told: set[str] = set()
        watch = RouteWatch(lambda r, present: (told.add if present else told.discard)(str(r.dst)),
                           rcvbuf=int(rcvbuf))
        loop = asyncio.get_running_loop()
        watch.start(loop)
        out["rcvbuf"] = watch.rcvbuf
        _sh("ip link add pa type veth peer name pa1 && ip link set pa up && ip link set pa1 up")
        live: set[int] = set()
        for rnd in range(6):
            # each round adds 4,000 new routes and deletes 3,000 live ones (and, in round 3,
            # re-adds routes deleted moments before: the same prefix gone and back in one burst)
            base = rnd * 4000
            add = list(range(base, base + 4000))
            dele = sorted(live)[:3000]
            lines = [f"route del 10.2.{i >> 8}.{i & 255}/32 dev pa proto 109\n" for i in dele]
            lines += [f"route add 10.2.{i >> 8}.{i & 255}/32 dev pa proto 109\n" for i in add]
            if rnd == 3:
                lines += [f"route add 10.2.{i >> 8}.{i & 255}/32 dev pa proto 109\n" for i in dele[:500]]
                live |= set(dele[:500])
            live = (live - set(dele)) | set(add) | (set(dele[:500]) if rnd == 3 else set())
            proc = await asyncio.create_subprocess_exec("ip", "-batch", _batch_file(lines))
            if rnd % 2 == 0:
                time.sleep(1.0)  # the agent busy elsewhere while the burst comes: the socket overflows
            assert await proc.wait() == 0
            await _quiet(watch)
            kernel = _kernel(109)
            want = {f"10.2.{i >> 8}.{i & 255}/32" for i in live}
            out["rounds"].append({"exact": told == kernel == want, "told": len(told), "kernel": len(kernel),
                                  "want": len(want), "overflows": watch.overflows, "resyncs": watch.resyncs})
        out["max_slice_ms"] = watch.max_slice_s * 1000
        watch.stop()
    asyncio.run(main())
    return out


def scenario_fib() -> dict:
    from dataplane.fib import Fib
    out: dict = {}
    _sh("ip link add up0 type veth peer name up1 && ip link set up0 up && ip link set up1 up && "
        "ip addr add 192.0.2.2/24 dev up0")

    def learned() -> dict[str, list[str]]:
        from cni.netlink.rtnl import RTNL
        with RTNL() as nl:
            return {str(r.dst): sorted(str(g) for g in (r.multipath or (r.gateway,))) for r in nl.routes(4)
                    if r.proto == 111}

    async def main() -> None:
        fib = Fib()
        nets = [ipaddress.ip_network(f"172.16.{i >> 8}.{i & 255}/32") for i in range(20000)]
        for name, hops in (("install", ("192.0.2.1",)), ("ecmp", ("192.0.2.1", "192.0.2.3")), ("remove", ())):
            for i in range(0, len(nets), 800):  # as UPDATEs deliver them
                for p in nets[i:i + 800]:
                    fib.set(p, hops)
                await asyncio.sleep(0)
            while fib.pending:
                await asyncio.sleep(0.01)
            got = learned()
            out[name] = (len(got) == (len(nets) if hops else 0) and all(v == sorted(hops) for v in got.values())
                         and len(fib.installed) == len(got))
        out["max_slice_ms"] = fib.max_slice_s * 1000
        p = ipaddress.ip_network("198.51.100.0/24")
        fib.set(p, ("192.0.2.1",))
        await asyncio.sleep(0.05)
        out["before"] = learned().get(str(p))
        fib.set(p, ("10.99.0.1",))  # unreachable: refused
        await asyncio.sleep(0.05)
        out["after_refusal"] = learned().get(str(p))
        out["refusal_counts"] = [fib.failed, fib.removed_on_refusal, p in fib.installed]
        fib.set(p, ("192.0.2.1", "192.0.2.3"))
        await asyncio.sleep(0.05)
        fib.set(p, ("192.0.2.1", "10.99.0.1"))  # one ECMP hop refused: the other stays
        await asyncio.sleep(0.05)
        out["after_ecmp_refusal"] = learned().get(str(p))
        out["installed"] = list(fib.installed.get(p, ()))
        fib.flush()
        out["after_flush"] = learned()
        fib.close()
    asyncio.run(main())
    return out


# -- the tests ------------------------------------------------------------------------------------
def test_the_filter_keeps_learned_churn_out_and_links_going_withdraw_their_routes_without_a_re_read():
    r = in_netns("scenario_links_and_filter")
    assert r["filtered"]
    assert r["events_for_2010_routes"] < 100, r["events_for_2010_routes"]  # the 10 pod routes, not the 2,000
    pods = [f"10.9.0.{i}/32" for i in range(10)]
    assert r["after_filter"] == sorted(pods)
    assert r["with_pa"] == 10 + 302
    assert r["after_pa_deleted"] == sorted(pods)
    assert r["after_replace"] == sorted(pods[1:])
    assert r["after_pb_down"] == [] and r["kernel"] == []
    assert r["resyncs_for_links"] == 0 and r["overflows"] == 0


def test_bursts_that_overflow_a_small_buffer_end_exactly_equal_to_the_kernel():
    r = in_netns("scenario_overflow", str(128 << 10))
    assert all(rnd["exact"] for rnd in r["rounds"]), r
    assert r["rounds"][-1]["overflows"] >= 3 and r["rounds"][-1]["resyncs"] >= 3, r


def test_the_fib_writes_100s_of_routes_per_request_and_a_refused_replace_removes_the_old_route():
    r = in_netns("scenario_fib")
    assert r["install"] and r["ecmp"] and r["remove"], r
    assert r["before"] == ["192.0.2.1"]
    assert r["after_refusal"] is None  # not left pointing at the old next hop
    assert r["refusal_counts"] == [1, 1, False]
    assert r["after_ecmp_refusal"] == ["192.0.2.1"] and r["installed"] == ["192.0.2.1"]
    assert r["after_flush"] == {}
