"""Watch the kernel routing table for the routes the CNI plugin installs (moor's protocol
number): the table is the contract between plugin and agent, so the agent reads it whole on
start and then follows netlink events, and either side can restart at any time."""
from __future__ import annotations

import asyncio
import socket

from cni.netlink import wire as w
from cni.netlink.rtnl import RTNL, Route, parse_route

RTMGRP_LINK, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x40, 0x400

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable


class RouteWatch:
    def __init__(self, on_change: Callable[[Route, bool], None], proto: int = w.RTPROT_MOOR):
        self.on_change = on_change  # (route, present)
        self.proto = proto
        self.sock: socket.socket | None = None
        self.present: set = set()  # destinations of moor's routes, as last seen

    def start(self, loop: asyncio.AbstractEventLoop) -> list[Route]:
        """Subscribe first, then dump: no change can fall between the two (a duplicate can, and
        announcing a route twice is harmless). Returns the routes present now."""
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
        self.sock.setblocking(False)
        present = self._dump()
        self.present = {r.dst for r in present}
        loop.add_reader(self.sock.fileno(), self._readable)
        return present

    def _dump(self) -> list[Route]:
        with RTNL() as nl:
            return [r for v in (4, 6) for r in nl.routes(v) if r.proto == self.proto]

    def _resync(self) -> None:
        """Events were lost (the socket buffer overflowed): compare a fresh dump with what we knew."""
        now = {r.dst: r for r in self._dump()}
        for dst in self.present - set(now):
            self.on_change(Route(dst=dst, proto=self.proto), False)
        for dst in set(now) - self.present:
            self.on_change(now[dst], True)
        self.present = set(now)

    def _readable(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:  # ENOBUFS: events were lost
                self._resync()
                return
            msgs = w.split_msgs(data)
            for m in msgs:
                r = parse_route(m)
                if r is not None and r.proto == self.proto and r.table == w.RT_TABLE_MAIN:
                    added = m.type == w.RTM_NEWROUTE
                    (self.present.add if added else self.present.discard)(r.dst)
                    self.on_change(r, added)
            if any(m.type == w.RTM_DELLINK for m in msgs):
                # a deleted link's IPv4 routes vanish without RTM_DELROUTE: compare with the table
                self._resync()

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.sock is not None:
            loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
