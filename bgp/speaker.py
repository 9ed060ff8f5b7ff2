"""The BGP speaker: one asyncio loop, one Session per configured peer (no thread per peer), a
listener that accepts only configured peers, and an adj-RIB-out shared by every session.

`python -m bgp.speaker --asn 65001 --router-id 192.0.2.2 --peer 192.0.2.1:65000 --announce
203.0.113.7/32` runs it standalone (moord embeds it): received routes are printed as
JSON lines on stdout, and lines `announce PREFIX` / `withdraw PREFIX` on stdin change the table.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import signal
import socket
import sys

from . import sockopt
from .rib import Path, RibIn
from .session import ESTABLISHED, LocalConfig, PeerConfig, Received, Session
from .wire import AFI_IPV4, AFI_IPV6, UNICAST, key_of

log = logging.getLogger("moor.bgp")


class Speaker:
    def __init__(self, local: LocalConfig, peers: list[PeerConfig], listen: str = "0.0.0.0", port: int = 179,
                 on_received=None, on_state=None, on_best=None, stale_time: float = 360.0):
        self.local = local
        self.listen, self.port = listen, port
        self.rib_out: dict = {}  # wire.Key -> next hop (None: each session's own address)
        self.rib_in = RibIn(on_best)
        self.stale_time = stale_time  # bound on keeping a restarted peer's stale routes (RFC 4724 4.2)
        self._user_received = on_received or (lambda r: None)
        self._user_state = on_state or (lambda p, s: None)
        for p in peers:
            p.address = canonical(p.address)
        self.sessions = {p.address: Session(local, p, self.rib_out, self._received, self._state, self._down)
                         for p in peers}
        if not ipaddress.ip_address(listen).is_unspecified:
            for s in self.sessions.values():
                s.bind_address = listen
        self._timers: dict[str, asyncio.TimerHandle] = {}  # peer -> when its stale routes go
        self.synced = asyncio.Event()  # every peer sent End-of-RIB for every family once
        self._eor_wanted: dict[str, set] = {}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task] = []

    # -- received routes and graceful-restart helper (RFC 4724 4.2) ------------------------------
    def _received(self, rec: Received) -> None:
        for fam in rec.disabled:  # RFC 7606 AFI/SAFI disable: none of that family's routes stay
            n = self.rib_in.forget(rec.peer, 4 if fam[0] == AFI_IPV4 else 6)
            log.warning("peer %s: AFI %d SAFI %d disabled, %d routes removed", rec.peer, *fam, n)
            wanted = self._eor_wanted.get(rec.peer)
            if wanted is not None:  # its End-of-RIB would be ignored: wait for it no longer
                wanted.discard(fam)
                self._check_synced()
            if rec.peer not in self.rib_in.stale:
                self._cancel_timer(rec.peer)
        self.rib_in.update(rec.peer, [(p, Path(rec.peer, nh, rec.rank)) for p, nh in rec.announced], rec.withdrawn)
        if rec.end_of_rib is not None:
            afi = rec.end_of_rib[0]
            gone = self.rib_in.sweep(rec.peer, 4 if afi == AFI_IPV4 else 6)
            if gone:
                log.info("peer %s: End-of-RIB, %d stale routes removed", rec.peer, gone)
            wanted = self._eor_wanted.get(rec.peer)
            if wanted is not None:
                wanted.discard(rec.end_of_rib)
                self._check_synced()
            if rec.peer not in self.rib_in.stale:
                self._cancel_timer(rec.peer)
        self._user_received(rec)

    def _state(self, peer: str, state: str) -> None:
        if state == ESTABLISHED:
            s = self.sessions[peer]
            if peer not in self._eor_wanted or self._eor_wanted[peer]:
                self._eor_wanted[peer] = set(s.families())
            if peer in self.rib_in.stale:
                self._cancel_timer(peer)
                gr = s.peer_gr()
                # only unicast families say anything about unicast routes (an EVPN or VPN entry does not)
                kept = {afi for afi, safi, fwd in (gr.families if gr else ()) if fwd and (afi, safi) in UNICAST}
                for afi, version in ((AFI_IPV4, 4), (AFI_IPV6, 6)):
                    if afi not in kept:  # forwarding state not kept over the restart: stale is wrong
                        self.rib_in.sweep(peer, version)
                if peer in self.rib_in.stale:
                    self._timer(peer, self.stale_time)
        self._user_state(peer, state)

    def _down(self, session: Session, graceful: bool) -> None:
        peer = session.peer.address
        gr = session.peer_gr()
        # only the families the peer said it can keep forwarding over a restart (RFC 4724 4.2);
        # a capability without families (BIRD's "aware" mode) means none
        keep = {4 if afi == AFI_IPV4 else 6 for afi, safi, _f in gr.families if (afi, safi) in UNICAST} \
            if graceful and gr else set()
        n = self.rib_in.peer_down(peer, keep)
        if n:
            log.info("peer %s: restarting gracefully, %d routes kept stale for up to %d s", peer, n,
                     gr.restart_time)
            self._timer(peer, gr.restart_time)
        else:
            self._cancel_timer(peer)

    def _timer(self, peer: str, seconds: float) -> None:
        self._cancel_timer(peer)

        def expire() -> None:
            self._timers.pop(peer, None)
            n = self.rib_in.sweep(peer)
            log.warning("peer %s: stale routes expired, %d removed", peer, n)
        self._timers[peer] = asyncio.get_running_loop().call_later(seconds, expire)

    def _cancel_timer(self, peer: str) -> None:
        t = self._timers.pop(peer, None)
        if t is not None:
            t.cancel()

    def _check_synced(self) -> None:
        if len(self._eor_wanted) == len(self.sessions) and not any(self._eor_wanted.values()):
            self.synced.set()

    # -- connections ---------------------------------------------------------------------------
    async def start(self) -> None:
        addr = ipaddress.ip_address(self.listen)
        lsock = socket.socket(socket.AF_INET6 if addr.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # MD5 keys live on the listening socket (the kernel checks the SYN before accept);
        # GTSM set here is inherited by accepted connections
        for s in self.sessions.values():
            if s.peer.password and ipaddress.ip_address(s.peer.address).version == addr.version:
                sockopt.set_md5(lsock, s.peer.address, s.peer.password)
        if any(s.peer.ttl_security for s in self.sessions.values()):
            sockopt.set_gtsm(lsock)
        lsock.bind((self.listen, self.port))
        lsock.listen(64)
        lsock.setblocking(False)
        self._server = await asyncio.start_server(self._incoming, sock=lsock)
        for s in self.sessions.values():
            if not s.peer.passive:
                self._tasks.append(asyncio.ensure_future(s.run_active()))

    async def _incoming(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        if not peername:  # reset before it was accepted
            writer.close()
            return
        addr = canonical(peername[0])
        session = self.sessions.get(addr)
        if session is None:  # only configured peers are accepted
            log.warning("connection from unconfigured %s refused", addr)
            writer.close()
            return
        try:
            await session.connected(reader, writer, outgoing=False)
        except Exception:  # asyncio would only log it at the server; say which peer
            log.exception("peer %s: connection failed", addr)
            writer.close()

    def announce(self, prefix, next_hop: str | None = None) -> None:
        """Advertise a prefix (an ipaddress network, a string, or a wire.Key as the route watch
        gives: a burst is 100k calls, and the adj-RIB-out keeps keys, not ipaddress objects)."""
        p = prefix if type(prefix) is bytes else key_of(prefix)
        self.rib_out[p] = next_hop
        for s in self.sessions.values():
            s.changed(p, True)

    def withdraw(self, prefix) -> None:
        p = prefix if type(prefix) is bytes else key_of(prefix)
        if self.rib_out.pop(p, "absent") != "absent":
            for s in self.sessions.values():
                s.changed(p, False)

    async def stop(self, graceful: bool = False) -> None:
        """Cease to every peer; `graceful`: close without NOTIFICATION so peers that do graceful
        restart keep our routes while we restart."""
        if self._server is not None:
            self._server.close()  # no new connections while we stop
        for s in self.sessions.values():
            await s.stop(graceful=graceful)
        for t in self._tasks:
            t.cancel()
        try:  # let every connection finish its own ending (state callbacks included)
            await asyncio.wait_for(asyncio.gather(*(s.wait_idle() for s in self.sessions.values())), 5)
        except asyncio.TimeoutError:
            log.warning("a session did not close within 5 s")
        for peer in list(self._timers):
            self._cancel_timer(peer)


def canonical(address: str) -> str:
    """One spelling per address: compressed, lower case, IPv4-mapped IPv6 as IPv4, no zone."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _peer(text: str) -> PeerConfig:
    """ADDRESS:ASN[:flag,flag...] with flags passive, gtsm, md5=PASSWORD; an IPv6 address in
    brackets: [2001:db8::1]:65000."""
    if text.startswith("["):
        addr, _, rest = text[1:].partition("]")
        rest = rest[1:]
    else:
        addr, _, rest = text.partition(":")
    asn, _, flags = rest.partition(":")
    fl = [f for f in flags.split(",") if f]
    password = next((f[4:] for f in fl if f.startswith("md5=")), "")
    return PeerConfig(address=addr, asn=int(asn), passive="passive" in fl, ttl_security="gtsm" in fl,
                      password=password)


async def _main(args) -> int:
    def emit(rec: Received) -> None:
        print(json.dumps({"peer": rec.peer, "announced": [[str(p), nh] for p, nh in rec.announced],
                          "withdrawn": [str(p) for p in rec.withdrawn],
                          "end_of_rib": list(rec.end_of_rib) if rec.end_of_rib else None}), flush=True)

    def state(peer: str, st: str) -> None:
        print(json.dumps({"peer": peer, "state": st}), flush=True)

    local = LocalConfig(asn=args.asn, router_id=args.router_id, hold_time=args.hold_time,
                        connect_retry_s=args.connect_retry)
    sp = Speaker(local, [_peer(p) for p in args.peer], args.listen, args.port, emit, state)
    for p in args.announce:
        sp.announce(p)
    await sp.start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := (await reader.readline()).decode().split():
            if line[0] == "announce":
                sp.announce(line[1], line[2] if len(line) > 2 else None)
            elif line[0] == "withdraw":
                sp.withdraw(line[1])
    cmd = asyncio.ensure_future(commands())
    await done.wait()
    cmd.cancel()
    await sp.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bgp.speaker", description="moor's BGP speaker, standalone")
    ap.add_argument("--asn", type=int, required=True)
    ap.add_argument("--router-id", required=True)
    ap.add_argument("--peer", action="append", default=[],
                    help="ADDRESS:ASN[:passive,gtsm,md5=PASSWORD], IPv6 as [ADDRESS]:ASN")
    ap.add_argument("--announce", action="append", default=[], help="a prefix to advertise from the start")
    ap.add_argument("--listen", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=179)
    ap.add_argument("--hold-time", type=int, default=90)
    ap.add_argument("--connect-retry", type=float, default=5.0)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
