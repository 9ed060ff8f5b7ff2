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
from .attribute import med as med_attr
from .rib import Rank
from .errors import (BAD_PEER_AS, BAD_BGP_IDENTIFIER, CEASE, FSM_ERROR, HOLD_TIMER_EXPIRED, OPEN_MESSAGE, BGPError)
from .message import notification, open as bopen, update
from .message.keepalive import KEEPALIVE_BYTES
from .wire import (AFI_IPV4, AFI_IPV6, HEADER_LEN, KEEPALIVE, NOTIFICATION, OPEN, ROUTE_REFRESH, SAFI_UNICAST, UPDATE,
                   Prefix, parse_header, split)

log = logging.getLogger("moor.bgp")

IDLE, CONNECT, ACTIVE, OPENSENT, OPENCONFIRM, ESTABLISHED = "Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established"
OPEN_HOLD_S = 240  # RFC 4271: a large hold time until the peer's OPEN arrives
CONNECTION_COLLISION = 7  # Cease subcode (RFC 4486)


@dataclass
class PeerConfig:
    address: str
    asn: int
    passive: bool = False
    port: int = 179
    hold_time: int | None = None  # None: the speaker's (LocalConfig.hold_time)
    communities: tuple[int, ...] = ()
    password: str = ""  # TCP MD5 (RFC 2385)
    ttl_security: bool = False  # GTSM (RFC 5082), directly connected peers
    graceful_restart: bool = False  # RFC 4724, both as restarting speaker and as helper


@dataclass
class LocalConfig:
    asn: int
    router_id: str
    hold_time: int = 90
    connect_retry_s: float = 5.0
    families: tuple[tuple[int, int], ...] = ((AFI_IPV4, SAFI_UNICAST), (AFI_IPV6, SAFI_UNICAST))
    # graceful restart (RFC 4724): what we tell peers in OPEN. `restarted` only after a real restart
    # (the agent knows from its state file), `forwarding` only when the kernel kept our routes
    restart_time: int = 120
    restarted: bool = False
    forwarding: bool = False
    next_hop6: str = ""  # IPv6 next hop for IPv6 routes on an IPv4 session; empty: IPv6 sessions only


@dataclass
class Received:
    """What a peer told us in one UPDATE: routes with their next hop, and withdrawals."""
    peer: str
    announced: list[tuple[Prefix, str]] = field(default_factory=list)
    withdrawn: list[Prefix] = field(default_factory=list)
    end_of_rib: tuple[int, int] | None = None
    rank: Rank = field(default_factory=Rank)  # shared by every announced route


class PeerNotified(Exception):
    """The session ended by a NOTIFICATION (sent, received or by collision): not a graceful restart."""


class Session:
    def __init__(self, local: LocalConfig, peer: PeerConfig, rib_out: dict, on_received=None, on_state=None,
                 on_down=None):
        self.local, self.peer = local, peer
        self.rib_out = rib_out  # prefix -> next hop (None: the session's own address), shared
        self.on_received = on_received or (lambda r: None)
        self.on_state = on_state or (lambda p, s: None)
        self.on_down = on_down or (lambda s, graceful: None)  # after Established ends
        self.state = IDLE
        self.first = True  # no session yet since this process started (the R bit's scope)
        self.hold_time = peer.hold_time if peer.hold_time is not None else local.hold_time  # what we offer
        self.bind_address = ""  # source of our connections (the speaker's listen address)
        self.peer_open: bopen.Open | None = None
        self.hold = 0
        self.writer: asyncio.StreamWriter | None = None
        self.local_address = ""
        self._pending: dict = {}  # prefix -> True (announce) / False (withdraw), coalesced
        self._buf = bytearray()
        self._inbox: list[tuple[int, bytes]] = []
        self._wake = asyncio.Event()
        self._stopped = False
        self._dropped = False
        self._idle = asyncio.Event()  # no connection is being served
        self._idle.set()

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
        """Connect, serve, and reconnect after the connect-retry time, until stopped. While a
        connection the peer opened is being served, no connection of ours is tried."""
        while not self._stopped:
            await self._idle.wait()
            if self.busy():  # woken while a connection changed hands
                continue
            self._set(CONNECT)
            try:
                reader, writer = await asyncio.wait_for(self._connect(), self.local.connect_retry_s)
            except (OSError, asyncio.TimeoutError):
                if not self.busy():  # the peer's connection may be serving meanwhile: its state stands
                    self._set(ACTIVE)
                await asyncio.sleep(self.local.connect_retry_s)
                continue
            await self.connected(reader, writer, outgoing=True)
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
            if self.bind_address and ipaddress.ip_address(self.bind_address).version == addr.version:
                sock.bind((self.bind_address, 0))  # the address the peer has configured for us
            await asyncio.get_running_loop().sock_connect(sock, (self.peer.address, self.peer.port))
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def busy(self) -> bool:
        return not self._idle.is_set()

    async def connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outgoing: bool) -> None:
        """A new connection to the peer, ours or theirs: serve it, or resolve the collision first."""
        if self._stopped:
            writer.close()
            return
        if not self.busy():
            await self.serve(reader, writer)
            return
        peer_open = await self._contend(reader, writer, outgoing)
        if peer_open is not None and not self.busy():
            await self.serve(reader, writer, peer_open)
        else:
            writer.close()

    async def _contend(self, reader, writer, outgoing: bool) -> bopen.Open | None:
        """A second connection while one is being served (RFC 4271 6.8): exchange OPENs on it, then
        keep the connection opened by the side with the higher BGP identifier. An Established session
        stays, unless the peer does graceful restart: then a new connection means it restarted and
        the old one is dead (RFC 4724 4.2). Returns the peer's OPEN when the new connection wins."""
        # only a connection the peer opened to an already Established session means it restarted
        restart = not outgoing and self.state == ESTABLISHED
        try:
            writer.write(self.open_message().encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readexactly(HEADER_LEN), OPEN_HOLD_S)
            length, mtype = parse_header(head)
            peer_open = self.accept_open(mtype, await reader.readexactly(length - HEADER_LEN))
        except BGPError as e:
            writer.write(notification.Notification(e.code, e.subcode, e.data).encode())
            return None
        except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, PeerNotified):
            return None
        if self.state == ESTABLISHED:
            if not restart or self.peer_gr() is None:
                writer.write(notification.Notification(CEASE, CONNECTION_COLLISION).encode())
                return None
            log.info("peer %s: new connection while Established: the peer restarted", self.peer.address)
            await self.drop(0, graceful=True)
            return peer_open
        ours = int(ipaddress.IPv4Address(self.local.router_id)) > int(ipaddress.IPv4Address(peer_open.router_id))
        if ours == outgoing:  # the new connection was opened by the winner
            log.info("peer %s: connection collision, keeping the new connection", self.peer.address)
            await self.drop(CONNECTION_COLLISION)
            return peer_open
        writer.write(notification.Notification(CEASE, CONNECTION_COLLISION).encode())
        return None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    peer_open: bopen.Open | None = None) -> None:
        """Run one connection to its end. `peer_open`: the peer's OPEN, already read on this
        connection after ours was sent (the speaker read it to resolve a collision)."""
        self._idle.clear()
        self.writer = writer
        self.local_address = writer.get_extra_info("sockname")[0]
        self._buf, self._inbox = bytearray(), []
        self._dropped = False
        # RFC 4724: a peer that restarts gracefully drops the TCP connection without a NOTIFICATION
        graceful = False
        try:
            await self._session(reader, peer_open)
        except BGPError as e:
            log.warning("peer %s: %s; sending NOTIFICATION %d/%d", self.peer.address, e, e.code, e.subcode)
            await self._send(notification.Notification(e.code, e.subcode, e.data).encode())
        except PeerNotified as e:
            log.warning("peer %s: %s", self.peer.address, e)
        except (OSError, asyncio.IncompleteReadError, ConnectionError) as e:
            log.info("peer %s: connection lost: %s", self.peer.address, e)
            graceful = not self._dropped and not self._stopped  # we did not end it ourselves
        finally:
            writer.close()
            self.writer = None
            was = self.state
            self._set(IDLE)
            self._idle.set()
            if was == ESTABLISHED:
                self.on_down(self, graceful and self.peer_gr() is not None)

    async def stop(self, subcode: int = 2, graceful: bool = False) -> None:
        """Administrative shutdown: Cease, then close. `graceful`: a restart, so close without a
        NOTIFICATION and the peer keeps our routes for the restart time (RFC 4724)."""
        self._stopped = True
        if self.writer is not None:
            if not graceful:
                try:  # a peer that stopped reading cannot hold up our shutdown
                    await asyncio.wait_for(self._send(notification.Notification(CEASE, subcode).encode()), 2)
                except asyncio.TimeoutError:
                    pass
            if self.writer is not None:
                self.writer.close()

    async def drop(self, subcode: int, graceful: bool = False) -> None:
        """End the current connection and wait until it is gone. With a Cease (a collision lost), or
        `graceful`: silently, as when the peer has restarted and its old connection is dead."""
        if self.writer is not None:
            self._dropped = not graceful
            if not graceful:
                await self._send(notification.Notification(CEASE, subcode).encode())
            self.writer.close()
        await self._idle.wait()

    def peer_gr(self) -> cap.GracefulRestart | None:
        """The peer's graceful-restart capability, when both sides negotiated it."""
        if not self.peer.graceful_restart or self.peer_open is None:
            return None
        return self.peer_open.find(cap.GracefulRestart)

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

    def open_message(self) -> bopen.Open:
        caps = [cap.Multiprotocol(a, s) for a, s in self.local.families] + [cap.RouteRefresh()]
        if self.peer.graceful_restart:
            caps.append(cap.GracefulRestart(
                restart_time=self.local.restart_time, restarting=self.local.restarted and self.first,
                families=tuple((a, s, self.local.forwarding) for a, s in self.local.families)))
        return bopen.Open(asn=self.local.asn, hold_time=self.hold_time, router_id=self.local.router_id,
                          capabilities=caps)

    def check_open(self, peer_open: bopen.Open) -> None:
        if peer_open.asn != self.peer.asn:
            raise BGPError(OPEN_MESSAGE, BAD_PEER_AS, f"peer AS {peer_open.asn}, configured {self.peer.asn}")
        if peer_open.router_id == self.local.router_id:
            raise BGPError(OPEN_MESSAGE, BAD_BGP_IDENTIFIER, "peer has our router ID")

    def accept_open(self, mtype: int, body: bytes) -> bopen.Open:
        """The peer's first message, which must be a valid OPEN from the configured AS."""
        if mtype == NOTIFICATION:
            n = notification.decode(body)
            raise PeerNotified(f"peer sent NOTIFICATION {n.code}/{n.subcode}")
        if mtype != OPEN:
            raise BGPError(FSM_ERROR, 1, f"expected OPEN, got type {mtype}")
        peer_open = bopen.decode(body)
        self.check_open(peer_open)
        return peer_open

    async def _session(self, reader: asyncio.StreamReader, peer_open: bopen.Open | None) -> None:
        if peer_open is None:
            await self._send(self.open_message().encode())
            self._set(OPENSENT)
            peer_open = self.accept_open(*await self._next(reader, OPEN_HOLD_S))
        self.peer_open = peer_open
        self.hold = min(self.hold_time, peer_open.hold_time)  # what we advertised, and theirs
        if self.hold and self.hold < 3:
            self.hold = 3
        await self._send(KEEPALIVE_BYTES)
        self._set(OPENCONFIRM)
        mtype, body = await self._next(reader, self.hold or OPEN_HOLD_S)
        if mtype == NOTIFICATION:
            n = notification.decode(body)
            raise PeerNotified(f"peer sent NOTIFICATION {n.code}/{n.subcode}")
        if mtype != KEEPALIVE:
            raise BGPError(FSM_ERROR, 2, f"expected KEEPALIVE in OpenConfirm, got type {mtype}")
        self._set(ESTABLISHED)
        self.first = False
        keepalive = asyncio.ensure_future(self._keepalives())
        sender = asyncio.ensure_future(self._sender())
        try:
            while True:
                self._handle(*await self._next(reader, self.hold))
        finally:
            keepalive.cancel()
            sender.cancel()

    def families(self) -> list[tuple[int, int]]:
        theirs = {(c.afi, c.safi) for c in self.peer_open.capabilities if isinstance(c, cap.Multiprotocol)}
        if not theirs:  # no MP capability: IPv4 unicast only (RFC 4760 section 8)
            theirs = {(AFI_IPV4, SAFI_UNICAST)}
        return [f for f in self.local.families if f in theirs]

    def _handle(self, mtype: int, body: bytes) -> None:
        if mtype == KEEPALIVE:
            return
        if mtype == NOTIFICATION:
            n = notification.decode(body)
            raise PeerNotified(f"peer sent NOTIFICATION {n.code}/{n.subcode}")
        if mtype == ROUTE_REFRESH:
            self._pending.update({p: True for p in self.rib_out})
            self._wake.set()
            return
        if mtype != UPDATE:
            raise BGPError(FSM_ERROR, 3, f"unexpected message type {mtype} in Established")
        upd = update.decode(body, self.peer_open.four_octet)
        rec = Received(peer=self.peer.address, end_of_rib=upd.end_of_rib(), withdrawn=upd.withdrawn_all,
                       rank=self._rank(upd.attributes))
        path = upd.attributes.get(as_path.TYPE)
        if path is not None and any(self.local.asn in asns for _t, asns in path.segments):
            # our own AS in the path: a loop (RFC 4271 9.1.2); such a route replaces nothing either
            rec.withdrawn += upd.announced
        elif not upd.treat_as_withdraw:
            nh = upd.attributes.get(next_hop.TYPE)
            rec.announced += [(p, str(nh.address)) for p in upd.nlri] if nh else []
            reach = upd.attributes.get(mp_reach.TYPE)
            if reach is not None:
                hop = str(reach.next_hops[0])
                rec.announced += [(p, hop) for p in reach.nlri]
        else:
            log.warning("peer %s: malformed attributes, routes treated as withdrawn (RFC 7606)", self.peer.address)
        self.on_received(rec)

    def _rank(self, attrs: dict) -> Rank:
        """What best-path selection compares (RFC 4271 9.1.2.2), shared by the UPDATE's routes."""
        lp = attrs.get(local_pref.TYPE)
        path = attrs.get(as_path.TYPE)
        org = attrs.get(origin.TYPE)
        med = attrs.get(med_attr.TYPE)
        ibgp = self.peer.asn == self.local.asn
        segs = path.segments if path else ()
        length = sum(1 if t == as_path.AS_SET else len(a) for t, a in segs)
        first = next((a[0] for t, a in segs if t == as_path.AS_SEQUENCE and a), self.local.asn if ibgp else self.peer.asn)
        return Rank(local_pref=lp.value if lp and ibgp else 100, as_path_len=length,
                    origin=org.value if org else 2, med=med.value if med else 0, neighbor_as=first, ibgp=ibgp)

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
        families = self.families()
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
        if (AFI_IPV4, SAFI_UNICAST) in families and v4 and local.version == 4:  # IPv4 next hops only
            gone = [p for p in v4 if not batch[p] or p not in self.rib_out]
            by_hop: dict = {}
            for p in v4:
                if batch[p] and p in self.rib_out:
                    by_hop.setdefault(self.rib_out[p] or local, []).append(p)
            out += update.encode_updates([], [], four, withdrawn=gone) if gone else []
            for hop, prefixes in by_hop.items():
                out += update.encode_updates(base + [next_hop.NextHop(ipaddress.ip_address(hop))], prefixes, four)
        hop6 = local if local.version == 6 else ipaddress.ip_address(self.local.next_hop6) if self.local.next_hop6 else None
        if (AFI_IPV6, SAFI_UNICAST) in families and v6 and hop6 is not None:
            gone = [p for p in v6 if not batch[p] or p not in self.rib_out]
            keep = [p for p in v6 if batch[p] and p in self.rib_out]
            out += update.encode_mp(AFI_IPV6, SAFI_UNICAST, base, (hop6,), keep, four, withdrawn=gone)
        for m in out:
            await self._send(m)
