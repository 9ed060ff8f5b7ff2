"""Prometheus metrics for moord, sampled from the agent's view at scrape time and served on the
agent's own asyncio loop: BGP state is read on the loop (no exporter thread reading what the loop
is changing); the IPAM store and the probe maps, which can block, are read in worker threads so a
scrape never stalls keepalives."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .view import AgentView

log = logging.getLogger("moord.metrics")

STATES = ("Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established")


@dataclass
class Sample:
    health: list
    peers: list
    advertised: int
    learned: list
    table: dict  # the route watch's and the Fib's counters
    ipam: tuple  # (pool usage, error)
    drops: tuple
    pods: tuple
    sessions: tuple


def table_counters(v: AgentView) -> dict:
    """How the agent's two views of the kernel table fare under bursts (read on the loop)."""
    out = {}
    if v.watch is not None:
        out["moor_routewatch_losses_total"] = ("netlink events lost (ENOBUFS): each one makes the agent re-read "
                                               "the table", v.watch.overflows)
        out["moor_routewatch_rereads_total"] = ("re-reads of the kernel table reconciled with the adj-RIB-out",
                                                v.watch.resyncs)
    if v.fib is not None:
        out["moor_fib_refused_total"] = ("learned routes the kernel refused", v.fib.failed)
        out["moor_fib_removed_on_refusal_total"] = ("old kernel routes removed because their replacement was "
                                                    "refused", v.fib.removed_on_refusal)
    return out


async def sample(v: AgentView) -> Sample:
    on_loop = (v.health(), v.peers(), len(v.advertised()), v.learned(), table_counters(v))
    return Sample(*on_loop, ipam=await asyncio.to_thread(v.ipam_usage), drops=await asyncio.to_thread(v.drop_snapshot),
                  pods=await asyncio.to_thread(v.pods), sessions=await asyncio.to_thread(v.session_snapshot))


class Collector:
    def __init__(self):
        self.sample: Sample | None = None  # set right before each exposition

    def collect(self):
        v = self.sample
        if v is None:
            return
        up = GaugeMetricFamily("moor_component_up", "1 when the agent's component works", labels=["component"])
        for c in v.health:
            up.add_metric([c.name], 1 if c.ok else 0)
        yield up

        state = GaugeMetricFamily("moor_bgp_peer_state", "BGP session state (1 for the current one)",
                                  labels=["peer", "state"])
        received = GaugeMetricFamily("moor_bgp_peer_routes_received", "paths from the peer", labels=["peer"])
        stale = GaugeMetricFamily("moor_bgp_peer_routes_stale", "paths kept over the peer's graceful restart",
                                  labels=["peer"])
        for p in v.peers:
            for s in STATES:
                state.add_metric([p.address, s], 1 if p.state == s else 0)
            received.add_metric([p.address], p.received)
            stale.add_metric([p.address], p.stale)
        yield state
        yield received
        yield stale
        yield GaugeMetricFamily("moor_bgp_routes_advertised", "routes in the adj-RIB-out", value=v.advertised)
        learned = v.learned
        yield GaugeMetricFamily("moor_bgp_routes_learned", "best learned routes", value=len(learned))
        yield GaugeMetricFamily("moor_bgp_routes_installed", "learned routes in the kernel",
                                value=sum(1 for *_x, i in learned if i))
        for name, (text, value) in v.table.items():
            yield CounterMetricFamily(name.removesuffix("_total"), text, value=value)

        pools, err = v.ipam
        if not err:
            ipam = GaugeMetricFamily("moor_ipam_addresses", "addresses by pool and state", labels=["pool", "state"])
            size = GaugeMetricFamily("moor_ipam_pool_size", "usable addresses in the pool", labels=["pool"])
            for cidr, n, alloc, held in pools:
                size.add_metric([cidr], n)
                ipam.add_metric([cidr, "active"], alloc)
                ipam.add_metric([cidr, "held"], held)
            yield size
            yield ipam

        by_ino, by_cookie = v.pods
        stats, rcv, why = v.drops
        if not why:
            drops = CounterMetricFamily("moor_drops", "packets the kernel dropped, by reason and pod",
                                        labels=["reason", "pod"])
            agg: dict = {}
            for s in stats:
                ref = by_ino.get(s.key.netns)
                key = (s.key.reason, ref.pod if ref else f"netns:{s.key.netns}")
                agg[key] = agg.get(key, 0) + s.packets
            for (reason, pod), n in sorted(agg.items()):
                drops.add_metric([reason, pod], n)
            yield drops
            rb = CounterMetricFamily("moor_udp_rcvbuf_drops", "datagrams dropped on a full socket receive buffer",
                                     labels=["pod", "port", "rcvbuf"])
            for r in rcv:
                ref = by_ino.get(r.netns)
                rb.add_metric([ref.pod if ref else f"netns:{r.netns}", str(r.lport), str(r.rcvbuf)], r.drops)
            yield rb

        pr, _s, dropped, why = v.sessions
        if pr is not None:
            yield GaugeMetricFamily("moor_sessions_active", "distinct 5-tuples seen within the VPC aging window",
                                    value=pr.active)
            yield GaugeMetricFamily("moor_sessions_limit", "the VPC session limit configured for the node",
                                    value=pr.limit)
            yield GaugeMetricFamily("moor_sessions_growth_per_minute", "change of active sessions per minute",
                                    value=pr.growth_per_min)
            yield GaugeMetricFamily("moor_sessions_long_lived", "active sessions that never aged out",
                                    value=len(pr.long_lived))
            yield CounterMetricFamily("moor_sessions_unrecorded", "sessions not recorded: the map was full",
                                      value=dropped)
            per = GaugeMetricFamily("moor_sessions_active_by_pod", "active sessions per pod", labels=["pod"])
            for cookie, n in pr.by_netns.items():
                ref = by_cookie.get(cookie)
                per.add_metric([ref.pod if ref else f"netns:{cookie}"], n)
            yield per


def probe(view: AgentView, ready: bool) -> tuple[bytes, bytes]:
    """/healthz (liveness: answered on the event loop, so an answer means the loop runs; always
    200) or /readyz (200 once start-up is done and the CNI socket listens, 503 otherwise), each
    with the component states. Read on the loop, nothing that can block: a probe never waits."""
    if ready:
        ok, comps = view.readiness()
    else:
        ok, comps = True, view.health()
    doc = {"status": ("ready" if ok else "not ready") if ready else "alive",
           "components": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in comps]}
    return json.dumps(doc).encode() + b"\n", b"200 OK" if ok else b"503 Service Unavailable"


async def serve(view: AgentView, address: str, port: int) -> asyncio.AbstractServer:
    """GET /metrics in the text exposition format, /healthz and /readyz (see probe()); anything
    else is 404. OSError when the address cannot be bound."""
    collector = Collector()
    reg = CollectorRegistry()
    reg.register(collector)
    lock = asyncio.Lock()  # one scrape at a time shares the collector

    async def expose() -> bytes:
        async with lock:
            collector.sample = await sample(view)
            try:
                return generate_latest(reg)
            finally:
                collector.sample = None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = (request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"").split(b"?")[0]
            ctype = b"text/plain; version=0.0.4; charset=utf-8"
            if path == b"/metrics":
                body, status = await expose(), b"200 OK"
            elif path in (b"/healthz", b"/readyz"):
                body, status = probe(view, path == b"/readyz")
                ctype = b"application/json"
            else:
                body, status = b"not found: try /metrics, /healthz or /readyz\n", b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\n"
                         + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:
            log.exception("metrics scrape failed")
        finally:
            writer.close()
    # our own socket: an address that cannot be bound is an OSError with its errno (the caller names
    # the config key), never one of asyncio's rewordings
    ip = ipaddress.ip_address(address)
    sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(64)
        sock.setblocking(False)
        return await asyncio.start_server(handle, sock=sock)
    except BaseException:
        sock.close()
        raise
