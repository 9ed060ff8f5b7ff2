"""Routes learned over BGP, installed in the kernel (bgp.installLearned): one route per prefix with
protocol moor-bgp (111), ECMP over every equally good next hop, always changed with replace
(make-before-break). A restarted agent adopts the routes its predecessor left and removes the ones
its peers no longer send only after they resynchronised (End-of-RIB, or a bounded wait).

Changes are queued (the latest next hops per prefix win) and written from the event loop in slices
of a few milliseconds, hundreds of requests per netlink datagram, so a peer sending 100,000 routes
never holds the loop long enough to starve the BGP keepalives. A replace the kernel refuses (a next
hop it cannot reach) removes our old route for the prefix instead of leaving it pointing at the
previous next hops; with ECMP, the hops the kernel accepts are kept."""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from itertools import islice

from cni.netlink import wire as w
from cni.netlink.rtnl import RTNL, NetlinkError

log = logging.getLogger("moord.fib")

# above the kernel's defaults (IPv4 0, IPv6 1024): a route the node itself holds for the same
# prefix, such as a pod that just moved here (proto moor, default metric), always wins
LEARNED_METRIC = 4096

BATCH = 256  # requests per netlink datagram (the kernel answers only failures and the last)
SLICE_S = 0.008  # time given to the kernel writes per event-loop callback
RCVBUF = 4 << 20  # room for a whole batch of refusals
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10  # refusals without a copy of the request
SO_RCVBUFFORCE = 33
_GONE = (errno.ESRCH, errno.ENOENT, errno.ENODEV)
LOG_REFUSALS = 20  # refusals logged one by one per slice; the rest are summed up
RETRY_S = 0.5  # after an unexpected error writing a batch


class Fib:
    def __init__(self, proto: int = w.RTPROT_MOOR_BGP, metric: int = LEARNED_METRIC, slice_s: float = SLICE_S,
                 batch: int = BATCH, nl: RTNL | None = None):
        self.proto, self.metric = proto, metric
        self.slice_s, self.batch_size = slice_s, batch
        if nl is None:
            nl = RTNL()
            for opt in ((socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF), (SOL_NETLINK, NETLINK_CAP_ACK, 1)):
                try:
                    nl.sock.setsockopt(*opt)
                except OSError:
                    pass
        self.nl = nl
        self.installed: dict = {}  # prefix -> next hops as installed
        self.adopted: set = set()  # left by the previous agent, not yet confirmed by a peer
        self.pending: dict = {}  # prefix -> next hops wanted, not yet written; () removes
        self.failed = 0  # routes the kernel refused (an unreachable next hop); logged
        self.removed_on_refusal = 0  # old routes removed because the kernel refused their replacement
        self.writes = 0  # route requests written
        self.max_slice_s = 0.0  # the longest one slice held the event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._logged = 0

    def adopt(self) -> int:
        """Take over the routes a previous agent installed (they kept forwarding while it restarted)."""
        for v in (4, 6):
            for attempt in range(10):
                try:
                    routes = self.nl.routes(v)
                    break
                except NetlinkError as e:  # a dump interrupted by a change: read again
                    if e.errno != errno.EAGAIN or attempt == 9:
                        raise
            for r in routes:
                if r.proto == self.proto and r.priority == self.metric:
                    hops = r.multipath or ((r.gateway,) if r.gateway is not None else ())
                    self.installed[r.dst] = tuple(sorted(str(h) for h in hops))
        self.adopted = set(self.installed)
        return len(self.adopted)

    def set(self, prefix, hops: tuple[str, ...]) -> None:
        """The best next hops for a prefix changed; () removes the route. Written to the kernel from
        the running event loop shortly (at once without one)."""
        self.adopted.discard(prefix)
        self.pending[prefix] = tuple(hops)
        self._schedule()

    def _schedule(self, delay: float = 0.0) -> None:
        if self._scheduled:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: a plain caller waits for the kernel
            self.apply_pending()
            return
        self._scheduled = True
        if delay:
            self._loop.call_later(delay, self._slice)
        else:
            self._loop.call_soon(self._slice)

    def _slice(self) -> None:
        """One slice of kernel writes on the event loop; never raises."""
        self._scheduled = False
        t0 = time.monotonic()
        self._logged = 0
        delay = 0.0
        while self.pending:
            items = self._take(self.batch_size)
            try:
                self._write(items)
            except Exception:  # netlink trouble must not take the agent down: the batch is retried
                log.exception("writing %d learned-route changes; retrying in %.1f s", len(items), RETRY_S)
                for p, hops in items:
                    self.pending.setdefault(p, hops)  # unless a newer change came meanwhile
                delay = RETRY_S
                break
            if time.monotonic() - t0 > self.slice_s:
                break
        self.max_slice_s = max(self.max_slice_s, time.monotonic() - t0)
        if self.pending:
            self._schedule(delay)

    def apply_pending(self) -> None:
        """Write everything queued, now."""
        while self.pending:
            self._write(self._take(self.batch_size))

    def _take(self, n: int) -> list:
        items = list(islice(self.pending.items(), n))
        for p, _h in items:
            del self.pending[p]
        return items

    def _request(self, prefix, hops: tuple):
        """(request, gateways) for one change; None when there is nothing to do."""
        gws = [g for g in map(ipaddress.ip_address, hops) if g.version == prefix.version] if hops else []
        if gws:
            return self.nl.route_replace_request(prefix, gws, self.proto, self.metric), gws
        if prefix in self.installed:
            return self.nl.route_del_request(prefix, proto=self.proto, priority=self.metric), None
        return None

    def _write(self, items: list) -> None:
        reqs, what = [], []
        for prefix, hops in items:
            try:
                r = self._request(prefix, hops)
            except ValueError as e:
                self.failed += 1
                log.warning("route %s via %s: %s", prefix, ",".join(hops), e)
                continue
            if r is not None:
                reqs.append(r[0])
                what.append((prefix, hops, r[1]))
        if not reqs:
            return
        try:
            codes = self.nl.batch(reqs)
        except OSError as e:  # replies lost: the outcome is unknown, so each is written again alone
            log.warning("batch of %d route changes: %s; writing them one by one", len(reqs), e)
            codes = [self._one(req) for req in reqs]
        self.writes += len(reqs)
        for (prefix, hops, gws), code in zip(what, codes):
            if gws is None:  # a removal
                if code and code not in _GONE:
                    log.warning("removing route %s: %s", prefix, NetlinkError(code, "delete route"))
                self.installed.pop(prefix, None)
            elif not code:
                self.installed[prefix] = tuple(sorted(str(g) for g in gws))
            else:
                self._refused(prefix, hops, gws, code)

    def _one(self, req) -> int:
        """One request on its own: its errno (0: done)."""
        try:
            return self.nl.batch([req])[0]
        except OSError as e:
            return e.errno or errno.EIO

    def _refused(self, prefix, hops: tuple, gws: list, code: int) -> None:
        """The kernel refused the new next hops: keep the ECMP hops it accepts, else remove our old
        route, which would forward to next hops the best path no longer has."""
        self.failed += 1
        self._logged += 1
        if self._logged <= LOG_REFUSALS:
            log.warning("route %s via %s: %s", prefix, ",".join(hops), NetlinkError(code, f"replace route {prefix}"))
        elif self._logged == LOG_REFUSALS + 1:
            log.warning("more routes refused in this batch; see the failed-route count")
        if len(gws) > 1:
            ok = [g for g in gws if not self._one(self.nl.route_replace_request(prefix, [g], self.proto,
                                                                                   self.metric))]
            if ok and (len(ok) == 1 or not self._one(self.nl.route_replace_request(prefix, ok, self.proto,
                                                                                    self.metric))):
                self.installed[prefix] = tuple(sorted(str(g) for g in ok))
                return
        code = self._one(self.nl.route_del_request(prefix, proto=self.proto, priority=self.metric))
        if not code:
            self.removed_on_refusal += 1
            log.warning("route %s: the old route was removed (its next hops are no longer the best)", prefix)
        elif code not in _GONE:
            log.warning("removing route %s: %s", prefix, NetlinkError(code, "delete route"))
        self.installed.pop(prefix, None)

    def _remove(self, prefix) -> None:
        self.pending.pop(prefix, None)
        if self.installed.pop(prefix, None) is not None:
            self.nl.route_del(prefix, proto=self.proto, priority=self.metric)

    def sweep_adopted(self) -> int:
        """After the peers resynchronised: what the previous agent installed and no peer sends any
        more goes (queued like any other change)."""
        gone = list(self.adopted)
        for p in gone:
            self.pending.setdefault(p, ())
        self.adopted.clear()
        if gone:
            self._schedule()
        return len(gone)

    def flush(self) -> None:
        """A clean shutdown: no control plane will keep these routes right, so none stay."""
        self.pending.clear()
        gone = list(self.installed)
        for i in range(0, len(gone), self.batch_size):
            chunk = gone[i:i + self.batch_size]
            reqs = [self.nl.route_del_request(p, proto=self.proto, priority=self.metric) for p in chunk]
            try:
                codes = self.nl.batch(reqs)
            except OSError:
                codes = [self._one(r) for r in reqs]
            for p, code in zip(chunk, codes):
                if code and code not in _GONE:
                    log.warning("route %s: %s", p, NetlinkError(code, "delete route"))
                self.installed.pop(p, None)
        self.adopted.clear()

    def close(self) -> None:
        """What is queued is written first: after a restart stop the kernel keeps forwarding along
        the last best paths."""
        try:
            self.apply_pending()
        except OSError as e:
            log.warning("writing the last learned-route changes: %s", e)
        self.nl.close()
