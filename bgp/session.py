"""One BGP session over asyncio streams (RFC 4271 FSM, simplified where noted): OPEN exchange and
capability negotiation, hold and keepalive timers, UPDATE processing with RFC 7606 handling,
NOTIFICATION on protocol errors, packed UPDATEs out, End-of-RIB after the initial table."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat

from . import capability as cap
from . import sockopt
from .attribute import as_path, communities, local_pref, mp_reach, mp_unreach, next_hop, origin
from .attribute import med as med_attr
from .rib import Rank
from .errors import (BAD_PEER_AS, BAD_BGP_IDENTIFIER, CEASE, FSM_ERROR, HOLD_TIMER_EXPIRED, MAX_PREFIXES, OPEN_MESSAGE,
                     BGPError)
from .message import notification, open as bopen, refresh, update
from .message.keepalive import KEEPALIVE_BYTES
from .wire import (AFI_IPV4, AFI_IPV6, HEADER_LEN, KEEPALIVE, NOTIFICATION, OPEN, ROUTE_REFRESH, SAFI_UNICAST, UNICAST,
                   UPDATE, Prefix, parse_header, split)

log = logging.getLogger("moor.bgp")

IDLE, CONNECT, ACTIVE, OPENSENT, OPENCONFIRM, ESTABLISHED = "Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established"
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
    max_prefixes: int = 0  # more prefixes than this from the peer end the session (RFC 4486 Cease 1); 0: no limit
    max_prefixes_idle_s: float = 60.0  # then neither connect to it nor accept it for this long


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
    # the longest a connection waits for the peer's OPEN (RFC 4271's 4 minutes is far more than a
    # live peer needs and lets half-open connections pile up)
    open_wait_s: float = 30.0
    # whether an address is one of this node's (the agent asks the kernel); a route via it would
    # loop back to us. None: only the session's own local address counts
    is_local: Callable[[str], bool] | None = None


@dataclass
class Received:
    """What a peer told us in one UPDATE: routes with their next hop, and withdrawals."""
    peer: str
    announced: list[tuple[Prefix, str]] = field(default_factory=list)
    withdrawn: list[Prefix] = field(default_factory=list)
    end_of_rib: tuple[int, int] | None = None
    rank: Rank = field(default_factory=Rank)  # shared by every announced route
    # families disabled by this UPDATE (RFC 7606 AFI/SAFI disable): drop every route of theirs
    # from this peer, before anything else in it
    disabled: list[tuple[int, int]] = field(default_factory=list)


class PeerNotified(Exception):
    """The session ended by a NOTIFICATION (sent, received or by collision): not a graceful restart."""


class Session:
    def __init__(self, local: LocalConfig, peer: PeerConfig, rib_out: dict, on_received=None, on_state=None,
                 on_down=None):
        self.local, self.peer = local, peer
        self.rib_out = rib_out  # wire.Key -> next hop (None: the session's own address), shared
        self.on_received = on_received or (lambda r: None)
        self.on_state = on_state or (lambda p, s: None)
        self.on_down = on_down or (lambda s, graceful: None)  # after Established ends
        self.state = IDLE
        self._last_failure = ""  # why the last connect failed, while retrying
        self.first = True  # no session yet since this process started (the R bit's scope)
        self.hold_time = peer.hold_time if peer.hold_time is not None else local.hold_time  # what we offer
        self.bind_address = ""  # source of our connections (the speaker's listen address)
        self.peer_open: bopen.Open | None = None
        self.hold = 0
        self.writer: asyncio.StreamWriter | None = None
        self.local_address = ""
        self._pending: dict = {}  # wire.Key -> True (announce) / False (withdraw), coalesced
        self._buf = bytearray()
        self._inbox: list[tuple[int, bytes]] = []
        self._wake = asyncio.Event()
        self._stopped = False
        self._dropped = False
        self._idle = asyncio.Event()  # no connection is being served
        self._idle.set()
        self._pending_in: asyncio.StreamWriter | None = None  # the peer's newest connection not yet Established
        self._idle_until = 0.0  # loop time: no connection to or from the peer before (prefix limit)
        # per session: families disabled after a malformed MP attribute, families already logged as
        # not negotiated, and the prefixes accepted (kept only under a prefix limit)
        self._disabled: set[tuple[int, int]] = set()
        self._ignored: set[tuple[int, int]] = set()
        self._accepted: set[Prefix] = set()

    def _set(self, state: str, reason: str) -> None:
        if state != self.state:
            # a peer that stays unreachable is retried every few seconds: its first failure is an INFO
            # line, each retry (Active -> Connect) and each failure like the last one DEBUG
            retry = (self.state, state) == (ACTIVE, CONNECT) or (
                (self.state, state) == (CONNECT, ACTIVE) and reason == self._last_failure)
            log.log(logging.DEBUG if retry else logging.INFO, "peer %s: %s -> %s (%s)", self.peer.address,
                    self.state, state, reason,
                    extra={"peer": self.peer.address, "old": self.state, "new": state, "reason": reason})
            if state == ACTIVE:
                self._last_failure = reason
            elif state != CONNECT:  # it got further: the next failure is news
                self._last_failure = ""
            self.state = state
            self.on_state(self.peer.address, state)

    # -- route changes from the speaker --------------------------------------------------------
    def changed(self, prefix: bytes, present: bool) -> None:  # a wire.Key
        if self.state == ESTABLISHED:
            self._pending[prefix] = present
            self._wake.set()

    # -- connection handling ---------------------------------------------------------------------
    async def run_active(self) -> None:
        """Connect, serve, and reconnect after the connect-retry time, until stopped. While a
        connection the peer opened is being served, no connection of ours is tried."""
        loop = asyncio.get_running_loop()
        while not self._stopped:
            await self._idle.wait()
            if self.busy():  # woken while a connection changed hands
                continue
            if (wait := self._idle_until - loop.time()) > 0:  # after the prefix limit: leave the peer alone
                await asyncio.sleep(wait)
                continue
            self._set(CONNECT, f"connecting to port {self.peer.port}")
            try:
                reader, writer = await asyncio.wait_for(self._connect(), self.local.connect_retry_s)
            except (OSError, asyncio.TimeoutError) as e:
                if not self.busy():  # the peer's connection may be serving meanwhile: its state stands
                    self._set(ACTIVE, f"no connection within {self.local.connect_retry_s:g} s"
                              if isinstance(e, asyncio.TimeoutError) else f"connect failed: {e.strerror or e}")
                await asyncio.sleep(self.local.connect_retry_s)
                continue
            try:
                await self.connected(reader, writer, outgoing=True)
            except Exception:  # a bug must not end the reconnect loop: the peer would be gone for good
                log.exception("peer %s: connection failed", self.peer.address)
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

    def idle_hold(self) -> float:
        """Seconds left before the peer may connect again after exceeding its prefix limit."""
        return max(0.0, self._idle_until - asyncio.get_running_loop().time())

    async def connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outgoing: bool) -> None:
        """A new connection to the peer, ours or theirs: serve it, or resolve the collision first.
        Of the connections the peer opened, only the newest not yet Established is kept: a peer
        opens a new one when it has given up on the old, and half-open ones must not pile up."""
        if self._stopped or self.idle_hold():
            if not self._stopped:
                log.info("peer %s: connection refused for %.0f s more (prefix limit)", self.peer.address,
                         self.idle_hold())
            writer.close()
            return
        if not outgoing:
            old, self._pending_in = self._pending_in, writer
            if old is not None:
                log.info("peer %s: a new connection replaces its pending one", self.peer.address)
                old.close()
                if old is self.writer:  # being served: let it finish, then this one is served instead
                    await self._idle.wait()
                if self._pending_in is not writer:  # replaced in turn meanwhile
                    writer.close()
                    return
        try:
            if not self.busy():
                await self.serve(reader, writer)
                return
            peer_open = await self._contend(reader, writer, outgoing)
            if peer_open is not None and not self.busy() and not self._stopped and not writer.is_closing():
                await self.serve(reader, writer, peer_open)
            else:
                writer.close()
        finally:
            if self._pending_in is writer:
                self._pending_in = None

    async def _contend(self, reader, writer, outgoing: bool) -> bopen.Open | None:
        """A second connection while one is being served (RFC 4271 6.8): exchange OPENs on it, then
        keep the connection opened by the side with the higher BGP identifier. An Established session
        stays, unless the peer does graceful restart: then a new connection means it restarted and
        the old one is dead (RFC 4724 4.2). Returns the peer's OPEN when the new connection wins."""
        # only a connection the peer opened to an already Established session means it restarted
        restart = not outgoing and self.state == ESTABLISHED

        async def exchange() -> bopen.Open:
            writer.write(self.open_message().encode())
            await writer.drain()
            head = await reader.readexactly(HEADER_LEN)
            length, mtype = parse_header(head)
            return self.accept_open(mtype, await reader.readexactly(length - HEADER_LEN))
        try:  # the whole OPEN within the bound: a peer sending it byte by byte gains nothing
            peer_open = await asyncio.wait_for(exchange(), self.local.open_wait_s)
        except BGPError as e:
            writer.write(notification.Notification(e.code, e.subcode, e.data).encode())
            return None
        except asyncio.TimeoutError:
            log.info("peer %s: no OPEN within %g s on a second connection", self.peer.address, self.local.open_wait_s)
            writer.write(notification.Notification(HOLD_TIMER_EXPIRED, 0).encode())
            return None
        except (OSError, ConnectionError, asyncio.IncompleteReadError, PeerNotified):
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
        sockname = writer.get_extra_info("sockname")
        if not sockname:  # reset before we got to it
            writer.close()
            return
        self._idle.clear()
        self.writer = writer
        self.local_address = sockname[0]
        self._buf, self._inbox = bytearray(), []
        self._dropped = False
        # a new session: every family enabled again, nothing accepted yet (RFC 7606 AFI/SAFI disable
        # lasts for the session)
        self._disabled, self._ignored, self._accepted = set(), set(), set()
        # RFC 4724: a peer that restarts gracefully drops the TCP connection without a NOTIFICATION
        graceful = False
        why = "closed"
        try:
            await self._session(reader, peer_open)
        except BGPError as e:
            log.warning("peer %s: %s; sending NOTIFICATION %d/%d", self.peer.address, e, e.code, e.subcode)
            why = f"{e}; NOTIFICATION {e.code}/{e.subcode} sent"
            await self._send(notification.Notification(e.code, e.subcode, e.data).encode())
        except PeerNotified as e:
            log.warning("peer %s: %s", self.peer.address, e)
            why = str(e)
        except (OSError, asyncio.IncompleteReadError, ConnectionError) as e:
            log.debug("peer %s: connection lost: %s", self.peer.address, e)  # the state change says so
            graceful = not self._dropped and not self._stopped  # we did not end it ourselves
            why = ("stopped" if self._stopped else "dropped by us" if self._dropped
                   else f"connection lost: {e}")
        except Exception:
            # a bug (here or in a route callback) ends this session, never the task serving the peer;
            # a Cease, so the peer does not take the silence for a graceful restart
            log.exception("peer %s: internal error, closing the session", self.peer.address)
            why = "internal error; Cease sent"
            await self._send(notification.Notification(CEASE, 0).encode())
        finally:
            writer.close()
            self.writer = None
            was = self.state
            self._set(IDLE, why)
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
        writer = self.writer
        if writer is not None:
            self._dropped = not graceful
            if not graceful:
                await self._send(notification.Notification(CEASE, subcode).encode())
            writer.close()  # the one we meant: the session may have ended while the Cease went out
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
        """The next message within `timeout` seconds (0: no limit); messages that arrived together
        are queued, never dropped. The limit is for the whole message, not for each read: a peer
        trickling bytes neither holds a connection open without an OPEN nor keeps a session alive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout > 0 else None
        while not self._inbox:
            self._inbox.extend(split(self._buf))
            if self._inbox:
                break
            left = None if deadline is None else deadline - loop.time()
            try:
                if left is not None and left <= 0:
                    raise asyncio.TimeoutError
                data = await asyncio.wait_for(reader.read(65536), left)
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
            self._set(OPENSENT, "OPEN sent")
            peer_open = self.accept_open(*await self._next(reader, self.local.open_wait_s))
        self.peer_open = peer_open
        self.hold = min(self.hold_time, peer_open.hold_time)  # what we advertised, and theirs
        if self.hold and self.hold < 3:
            self.hold = 3
        await self._send(KEEPALIVE_BYTES)
        self._set(OPENCONFIRM, f"OPEN received, hold time {self.hold} s")
        mtype, body = await self._next(reader, self.hold or self.local.open_wait_s)
        if mtype == NOTIFICATION:
            n = notification.decode(body)
            raise PeerNotified(f"peer sent NOTIFICATION {n.code}/{n.subcode}")
        if mtype != KEEPALIVE:
            raise BGPError(FSM_ERROR, 2, f"expected KEEPALIVE in OpenConfirm, got type {mtype}")
        if self._dropped:
            # this connection lost a collision while its KEEPALIVE was on the way (drop() sends the
            # Cease and closes it): it must not become the session, even for a moment, or both
            # sides see an Established session come and go (and the routes with it)
            raise ConnectionResetError("lost a connection collision in OpenConfirm")
        self._set(ESTABLISHED, "KEEPALIVE received")
        self.first = False
        if self._pending_in is self.writer:  # no longer pending: a new connection is a collision now
            self._pending_in = None
        keepalive = asyncio.ensure_future(self._keepalives())
        sender = asyncio.ensure_future(self._sender())
        try:
            handled = 0
            while True:
                self._handle(*await self._next(reader, self.hold))
                handled += 1
                if handled % 8 == 0:  # one 64 KB read holds dozens of UPDATEs: let keepalives and the
                    await asyncio.sleep(0)  # other sessions run between them
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
            rr = refresh.decode(body)  # a bad length is a NOTIFICATION (RFC 7313 section 5)
            if (rr.afi, rr.safi) in self.families():  # any other family is ignored (RFC 2918 section 4)
                version = _version(rr.afi)
                self._pending.update({p: True for p in self.rib_out if p[0] == version})  # wire.Key
                self._wake.set()
            return
        if mtype != UPDATE:
            raise BGPError(FSM_ERROR, 3, f"unexpected message type {mtype} in Established")
        self._update(update.decode(body, self.peer_open.four_octet))

    def _update(self, upd: update.Update) -> None:
        """One UPDATE's routes into the RIB, after what RFC 4271, 4760 and 7606 say to drop."""
        rec = Received(peer=self.peer.address, rank=self._rank(upd.attributes))
        negotiated = set(self.families()) & UNICAST
        for fam in upd.broken:  # RFC 7606 7.11: the NLRI cannot be located; that family goes
            if fam in negotiated and fam not in self._disabled:
                self._disabled.add(fam)
                rec.disabled.append(fam)
                self._accepted = {p for p in self._accepted if p.version != _version(fam[0])}
                log.warning("peer %s: malformed MP attribute of AFI %d SAFI %d: that family is disabled for this "
                            "session and its routes from this peer removed (RFC 7606 AFI/SAFI disable)",
                            self.peer.address, *fam)
            elif fam not in self._disabled:
                self._usable(fam, negotiated)  # says once that it is ignored

        v4 = (AFI_IPV4, SAFI_UNICAST)
        withdrawn = list(upd.withdrawn) if upd.withdrawn and self._usable(v4, negotiated) else []
        unreach = upd.attributes.get(mp_unreach.TYPE)
        if unreach is not None and self._usable((unreach.afi, unreach.safi), negotiated):
            withdrawn += unreach.withdrawn
        # announced routes by next hop; the NEXT_HOP attribute counts only with classic NLRI (RFC 4760 3)
        groups: list[tuple[list[Prefix], object]] = []
        if upd.nlri and self._usable(v4, negotiated):
            nh = upd.attributes.get(next_hop.TYPE)  # absent only with treat_as_withdraw (RFC 7606 3(d))
            groups.append((upd.nlri, nh.address if nh else None))
        reach = upd.attributes.get(mp_reach.TYPE)
        if reach is not None and self._usable((reach.afi, reach.safi), negotiated) and reach.nlri:
            groups.append((list(reach.nlri), reach.next_hops[0]))
        prefixes = [p for ps, _hop in groups for p in ps]

        path = upd.attributes.get(as_path.TYPE)
        if not groups:
            pass
        elif path is not None and any(self.local.asn in asns for _t, asns in path.segments):
            # our own AS in the path: a loop (RFC 4271 9.1.2); such a route replaces nothing either
            withdrawn += prefixes
        elif upd.treat_as_withdraw:
            log.warning("peer %s: malformed attributes, routes treated as withdrawn (RFC 7606)", self.peer.address)
            withdrawn += prefixes
        elif bad := next(((hop, why) for _ps, hop in groups if (why := self._bad_next_hop(hop))), None):
            # RFC 4271 6.3, RFC 7606 7.3: the session stays, the routes (and what they replace) go
            log.warning("peer %s: next hop %s is %s: %d routes treated as withdrawn", self.peer.address, bad[0],
                        bad[1], len(prefixes))
            withdrawn += prefixes
        else:
            rec.announced = [(p, str(hop)) for ps, hop in groups for p in ps]
        rec.withdrawn = withdrawn

        eor = upd.end_of_rib()  # of another family it would sweep stale unicast routes: only ours count
        if eor is not None and self._usable(eor, negotiated):
            rec.end_of_rib = eor
        if self.peer.max_prefixes:
            self._count(rec)
        self.on_received(rec)

    def _usable(self, fam: tuple[int, int], negotiated: set) -> bool:
        """Whether routes of `fam` are taken from the peer: unicast, in both OPENs, not disabled.
        A family not negotiated is ignored, without a reset (RFC 4760 section 7), said once."""
        if fam in negotiated:
            return fam not in self._disabled
        if fam not in self._ignored:
            self._ignored.add(fam)
            log.warning("peer %s: AFI %d SAFI %d is not a unicast family both OPENs carry: ignored for this session",
                        self.peer.address, *fam)
        return False

    def _bad_next_hop(self, hop) -> str | None:
        """Why a route via `hop` must not be used, or None: an address no router can have, or one of
        ours (the route would point back at us)."""
        why = next_hop.unusable(hop)
        if why:
            return why
        addr = _plain(hop)
        own = {_plain(self.local_address)} | ({_plain(self.local.next_hop6)} if self.local.next_hop6 else set())
        if addr in own:
            return "our own address"
        if self.local.is_local is not None:
            try:
                if self.local.is_local(str(addr)):
                    return "an address of this node"
            except Exception:  # cannot tell: the route is judged on the other checks
                log.exception("peer %s: is_local(%s) failed", self.peer.address, addr)
        return None

    def _count(self, rec: Received) -> None:
        """The per-peer prefix limit: over it, a Cease and no session for a while (RFC 4486 4)."""
        self._accepted.difference_update(rec.withdrawn)
        self._accepted.update(p for p, _hop in rec.announced)
        if len(self._accepted) <= self.peer.max_prefixes:
            return
        afi = _afi(rec.announced[-1][0]) if rec.announced else AFI_IPV4  # only an announcement can go over
        self._idle_until = asyncio.get_running_loop().time() + self.peer.max_prefixes_idle_s
        log.warning("peer %s: %d prefixes, over its limit of %d: closing the session, no new one for %g s",
                    self.peer.address, len(self._accepted), self.peer.max_prefixes, self.peer.max_prefixes_idle_s)
        raise BGPError(CEASE, MAX_PREFIXES, "maximum number of prefixes reached",
                       struct.pack("!HBI", afi, SAFI_UNICAST, self.peer.max_prefixes))

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
        await self._flush(list(self.rib_out), four, ebgp, families)  # no copy of the table's dict
        for afi, safi in families:
            await self._send(update.end_of_rib(afi, safi, four))
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0.005)  # let a burst of changes coalesce into few UPDATEs
            batch, self._pending = self._pending, {}
            await self._flush(batch, four, ebgp, families)

    async def _flush(self, batch, four: bool, ebgp: bool, families: list) -> None:
        """Send a batch of changes: wire.Key -> True (announce) / False (withdraw), or a list of
        keys all announced (the initial table). A key announced but no longer in the adj-RIB-out
        is withdrawn."""
        base = self._attrs(ebgp)
        rib_out = self.rib_out
        local = ipaddress.ip_address(self.local_address.split("%")[0])
        by_hop: dict = {}  # IPv4 next hop -> keys announced with it
        gone4: list = []
        keep6: list = []
        gone6: list = []
        for p, present in (batch.items() if isinstance(batch, dict) else zip(batch, repeat(True))):
            hop = rib_out.get(p, _ABSENT) if present else _ABSENT
            if p[0] == 4:  # a wire.Key's first byte is its IP version
                if hop is _ABSENT:
                    gone4.append(p)
                else:
                    by_hop.setdefault(hop, []).append(p)  # None: our own address (hashed in C, unlike an ipaddress)
            elif hop is _ABSENT:
                gone6.append(p)
            else:
                keep6.append(p)
        out: list[bytes] = []
        if (AFI_IPV4, SAFI_UNICAST) in families and local.version == 4:  # IPv4 next hops only
            out += update.encode_updates([], [], four, withdrawn=gone4) if gone4 else []
            for hop, prefixes in by_hop.items():
                nh = ipaddress.ip_address(hop) if hop else local
                out += update.encode_updates(base + [next_hop.NextHop(nh)], prefixes, four)
        hop6 = local if local.version == 6 else ipaddress.ip_address(self.local.next_hop6) if self.local.next_hop6 else None
        if (AFI_IPV6, SAFI_UNICAST) in families and (keep6 or gone6) and hop6 is not None:
            out += update.encode_mp(AFI_IPV6, SAFI_UNICAST, base, (hop6,), keep6, four, withdrawn=gone6)
        for m in out:
            await self._send(m)


_ABSENT = object()


def _version(afi: int) -> int:
    return 4 if afi == AFI_IPV4 else 6


def _afi(p: Prefix) -> int:
    return AFI_IPV4 if p.version == 4 else AFI_IPV6


def _plain(addr) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """One form per address: no zone, IPv4-mapped IPv6 as IPv4."""
    ip = ipaddress.ip_address(str(addr).split("%")[0])
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip
