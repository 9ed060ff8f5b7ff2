"""One BGP session over asyncio streams (RFC 4271 FSM, simplified where noted): OPEN exchange and
capability negotiation, hold and keepalive timers, UPDATE processing with RFC 7606 handling,
NOTIFICATION on protocol errors, packed UPDATEs out, End-of-RIB after the initial table."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass, field

from . import capability as cap
from . import sockopt
from .attribute import as_path, communities, local_pref, mp_reach, next_hop, origin
from .errors import (BAD_PEER_AS, BAD_BGP_IDENTIFIER, CEASE, FSM_ERROR, HOLD_TIMER_EXPIRED, OPEN_MESSAGE, BGPError)
from .message import notification, open as bopen, update
from .message.keepalive import KEEPALIVE_BYTES
from .wire import AFI_IPV4, AFI_IPV6, KEEPALIVE, NOTIFICATION, OPEN, ROUTE_REFRESH, SAFI_UNICAST, UPDATE, Prefix, split

log = logging.getLogger("moor.bgp")

IDLE, CONNECT, ACTIVE, OPENSENT, OPENCONFIRM, ESTABLISHED = "Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established"
OPEN_HOLD_S = 240  # RFC 4271: a large hold time until the peer's OPEN arrives


@dataclass
class PeerConfig:
    address: str
    asn: int
    passive: bool = False
    port: int = 179
    hold_time: int = 90
    communities: tuple[int, ...] = ()
    password: str = ""  # TCP MD5 (RFC 2385)
    ttl_security: bool = False  # GTSM (RFC 5082), directly connected peers


@dataclass
class LocalConfig:
    asn: int
    router_id: str
    hold_time: int = 90
    connect_retry_s: float = 5.0
    families: tuple[tuple[int, int], ...] = ((AFI_IPV4, SAFI_UNICAST), (AFI_IPV6, SAFI_UNICAST))


@dataclass
class Received:
    """What a peer told us in one UPDATE: routes with their next hop, and withdrawals."""
    peer: str
    announced: list[tuple[Prefix, str]] = field(default_factory=list)
    withdrawn: list[Prefix] = field(default_factory=list)
    end_of_rib: tuple[int, int] | None = None


class Session:
    def __init__(self, local: LocalConfig, peer: PeerConfig, rib_out: dict, on_received=None, on_state=None):
        self.local, self.peer = local, peer
        self.rib_out = rib_out  # prefix -> next hop (None: the session's own address), shared
        self.on_received = on_received or (lambda r: None)
        self.on_state = on_state or (lambda p, s: None)
        self.state = IDLE
        self.peer_open: bopen.Open | None = None
        self.hold = 0
        self.writer: asyncio.StreamWriter | None = None
        self.local_address = ""
        self._pending: dict = {}  # prefix -> True (announce) / False (withdraw), coalesced
        self._buf = bytearray()
        self._inbox: list[tuple[int, bytes]] = []
        self._wake = asyncio.Event()
        self._stopped = False

    def _set(self, state: str) -> None:
        if state != self.state:
            log.info("peer %s: %s -> %s", self.peer.address, self.state, state)
            self.state = state
            self.on_state(self.peer.address, state)

    # -- route changes from the speaker --------------------------------------------------------
    def changed(self, prefix: Prefix, present: bool) -> None:
        if self.state == ESTABLISHED:
            self._pending[prefix] = present
            self._wake.set()

    # -- connection handling ---------------------------------------------------------------------
    async def run_active(self) -> None:
        """Connect, serve, and reconnect after the connect-retry time, until stopped."""
        while not self._stopped:
            self._set(CONNECT)
            try:
                reader, writer = await asyncio.wait_for(self._connect(), self.local.connect_retry_s)
            except (OSError, asyncio.TimeoutError):
                self._set(ACTIVE)
                await asyncio.sleep(self.local.connect_retry_s)
                continue
            await self.serve(reader, writer)
            if not self._stopped:
                await asyncio.sleep(self.local.connect_retry_s)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection with MD5 and GTSM set before the SYN leaves."""
        addr = ipaddress.ip_address(self.peer.address)
        sock = socket.socket(socket.AF_INET6 if addr.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self.peer.password:
                sockopt.set_md5(sock, self.peer.address, self.peer.password)
            if self.peer.ttl_security:
                sockopt.set_gtsm(sock)
            await asyncio.get_running_loop().sock_connect(sock, (self.peer.address, self.peer.port))
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise

    def busy(self) -> bool:
        return self.state in (OPENSENT, OPENCONFIRM, ESTABLISHED)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.local_address = writer.get_extra_info("sockname")[0]
        try:
            await self._session(reader, writer)
        except BGPError as e:
            log.warning("peer %s: %s; sending NOTIFICATION %d/%d", self.peer.address, e, e.code, e.subcode)
            await self._send(notification.Notification(e.code, e.subcode, e.data).encode())
        except (OSError, asyncio.IncompleteReadError, ConnectionError) as e:
            log.info("peer %s: connection lost: %s", self.peer.address, e)
        finally:
            writer.close()
            self.writer = None
            self._set(IDLE)

    async def stop(self, subcode: int = 2) -> None:
        """Administrative shutdown: Cease, then close."""
        self._stopped = True
        if self.writer is not None:
            await self._send(notification.Notification(CEASE, subcode).encode())
            self.writer.close()

    async def _send(self, data: bytes) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (OSError, ConnectionError):
            pass

    async def _next(self, reader: asyncio.StreamReader, timeout: float) -> tuple[int, bytes]:
        """The next message; messages that arrived together are queued, never dropped."""
        while not self._inbox:
            self._inbox.extend(split(self._buf))
            if self._inbox:
                break
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout if timeout > 0 else None)
            except asyncio.TimeoutError:
                raise BGPError(HOLD_TIMER_EXPIRED, 0, "hold timer expired") from None
            if not data:
                raise ConnectionError("peer closed the connection")
            self._buf += data
        return self._inbox.pop(0)

    def _open(self) -> bopen.Open:
        caps = [cap.Multiprotocol(a, s) for a, s in self.local.families] + [cap.RouteRefresh()]
        return bopen.Open(asn=self.local.asn, hold_time=self.local.hold_time, router_id=self.local.router_id,
                          capabilities=caps)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._buf, self._inbox = bytearray(), []
        await self._send(self._open().encode())
        self._set(OPENSENT)
        mtype, body = await self._next(reader, OPEN_HOLD_S)
        if mtype == NOTIFICATION:
            n = notification.decode(body)
            raise ConnectionError(f"peer sent NOTIFICATION {n.code}/{n.subcode}")
        if mtype != OPEN:
            raise BGPError(FSM_ERROR, 1, f"expected OPEN, got type {mtype}")
        peer_open = bopen.decode(body)
        if peer_open.asn != self.peer.asn:
            raise BGPError(OPEN_MESSAGE, BAD_PEER_AS, f"peer AS {peer_open.asn}, configured {self.peer.asn}")
        if peer_open.router_id == self.local.router_id:
            raise BGPError(OPEN_MESSAGE, BAD_BGP_IDENTIFIER, "peer has our router ID")
        self.peer_open = peer_open
        self.hold = min(self.local.hold_time, self.peer.hold_time, peer_open.hold_time)
        if self.hold and self.hold < 3:
            self.hold = 3
        await self._send(KEEPALIVE_BYTES)
        self._set(OPENCONFIRM)
        mtype, body = await self._next(reader, self.hold or OPEN_HOLD_S)
        if mtype == NOTIFICATION:
            n = notification.decode(body)
            raise ConnectionError(f"peer sent NOTIFICATION {n.code}/{n.subcode}")
        if mtype != KEEPALIVE:
            raise BGPError(FSM_ERROR, 2, f"expected KEEPALIVE in OpenConfirm, got type {mtype}")
        self._set(ESTABLISHED)
        keepalive = asyncio.ensure_future(self._keepalives())
        sender = asyncio.ensure_future(self._sender())
        try:
            while True:
                self._handle(*await self._next(reader, self.hold))
        finally:
            keepalive.cancel()
            sender.cancel()

    def _families(self) -> list[tuple[int, int]]:
        theirs = {(c.afi, c.safi) for c in self.peer_open.capabilities if isinstance(c, cap.Multiprotocol)}
        if not theirs:  # no MP capability: IPv4 unicast only (RFC 4760 section 8)
            theirs = {(AFI_IPV4, SAFI_UNICAST)}
        return [f for f in self.local.families if f in theirs]

    def _handle(self, mtype: int, body: bytes) -> None:
        if mtype == KEEPALIVE:
            return
        if mtype == NOTIFICATION:
            n = notification.decode(body)
            raise ConnectionError(f"peer sent NOTIFICATION {n.code}/{n.subcode}")
        if mtype == ROUTE_REFRESH:
            self._pending.update({p: True for p in self.rib_out})
            self._wake.set()
            return
        if mtype != UPDATE:
            raise BGPError(FSM_ERROR, 3, f"unexpected message type {mtype} in Established")
        upd = update.decode(body, self.peer_open.four_octet)
        rec = Received(peer=self.peer.address, end_of_rib=upd.end_of_rib(), withdrawn=upd.withdrawn_all)
        if not upd.treat_as_withdraw:
            nh = upd.attributes.get(next_hop.TYPE)
            rec.announced += [(p, str(nh.address)) for p in upd.nlri] if nh else []
            reach = upd.attributes.get(mp_reach.TYPE)
            if reach is not None:
                hop = str(reach.next_hops[0])
                rec.announced += [(p, hop) for p in reach.nlri]
        else:
            log.warning("peer %s: malformed attributes, routes treated as withdrawn (RFC 7606)", self.peer.address)
        self.on_received(rec)

    async def _keepalives(self) -> None:
        if not self.hold:
            return
        while True:
            await asyncio.sleep(self.hold / 3)
            await self._send(KEEPALIVE_BYTES)

    def _attrs(self, ebgp: bool) -> list:
        attrs = [origin.Origin(origin.IGP), as_path.ASPath.sequence(self.local.asn) if ebgp else as_path.ASPath()]
        if not ebgp:
            attrs.append(local_pref.LocalPref(100))
        if self.peer.communities:
            attrs.append(communities.Communities(tuple(self.peer.communities)))
        return attrs

    async def _sender(self) -> None:
        """The initial table, End-of-RIB per family, then coalesced changes, packed."""
        four = self.peer_open.four_octet
        ebgp = self.peer.asn != self.local.asn
        families = self._families()
        await self._flush({p: True for p in self.rib_out}, four, ebgp, families)
        for afi, safi in families:
            await self._send(update.end_of_rib(afi, safi, four))
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0.005)  # let a burst of changes coalesce into few UPDATEs
            batch, self._pending = self._pending, {}
            await self._flush(batch, four, ebgp, families)

    async def _flush(self, batch: dict, four: bool, ebgp: bool, families: list) -> None:
        base = self._attrs(ebgp)
        v4 = [p for p in batch if p.version == 4]
        v6 = [p for p in batch if p.version == 6]
        local = ipaddress.ip_address(self.local_address.split("%")[0])
        out: list[bytes] = []
        if (AFI_IPV4, SAFI_UNICAST) in families and v4:
            gone = [p for p in v4 if not batch[p] or p not in self.rib_out]
            by_hop: dict = {}
            for p in v4:
                if batch[p] and p in self.rib_out:
                    by_hop.setdefault(self.rib_out[p] or local, []).append(p)
            out += update.encode_updates([], [], four, withdrawn=gone) if gone else []
            for hop, prefixes in by_hop.items():
                out += update.encode_updates(base + [next_hop.NextHop(ipaddress.ip_address(hop))], prefixes, four)
        if (AFI_IPV6, SAFI_UNICAST) in families and v6 and local.version == 6:
            gone = [p for p in v6 if not batch[p] or p not in self.rib_out]
            keep = [p for p in v6 if batch[p] and p in self.rib_out]
            out += update.encode_mp(AFI_IPV6, SAFI_UNICAST, base, (local,), keep, four, withdrawn=gone)
        for m in out:
            await self._send(m)
