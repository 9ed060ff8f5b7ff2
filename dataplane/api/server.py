"""moord's gRPC API on a unix socket that only root can open (the socket file is created 0600
under a 0077 umask, so there is no window where others can connect)."""
from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import grpc

from ..view import AgentView
from . import moor_pb2 as pb
from . import moor_pb2_grpc as rpc


def _pod(refs: dict, key: int) -> str:
    ref = refs.get(key)
    return ref.pod if ref is not None else ""



def _version() -> str:
    import platform
    try:
        from importlib.metadata import version
        moor = version("moor")
    except Exception:  # run from a checkout that is not installed
        moor = "unknown"
    return f"moor {moor}, kernel {platform.release()}"


_VERSION = _version()
# reservations a page of Ipam: a reservation is ~150 bytes in a reply, so even the largest page
# stays under grpc's 4 MiB default message limit for clients that keep it
PAGE_SIZE, MAX_PAGE_SIZE = 1000, 5000

class AgentService(rpc.AgentServicer):
    def __init__(self, view: AgentView):
        self.view = view

    async def Health(self, request, context):
        comps = self.view.health()
        return pb.HealthReply(ok=all(c.ok for c in comps), started=self.view.started, version=_VERSION,
                              restarted=self.view.restarted, forwarding=self.view.forwarding,
                              components=[pb.Component(name=c.name, ok=c.ok, detail=c.detail) for c in comps])

    async def BgpPeers(self, request, context):
        return pb.BgpPeersReply(peers=[pb.BgpPeer(address=p.address, asn=p.asn, state=p.state, since=p.since,
                                                  received=p.received, stale=p.stale,
                                                  graceful_restart=p.graceful_restart, hold_time=p.hold_time)
                                       for p in self.view.peers()])

    async def BgpRoutes(self, request, context):
        return pb.BgpRoutesReply(advertised=self.view.advertised(),
                                 learned=[pb.Route(prefix=p, next_hops=list(h), installed=i)
                                          for p, h, i in self.view.learned()])

    async def Ipam(self, request, context):
        size = min(request.page_size or PAGE_SIZE, MAX_PAGE_SIZE)
        rows, pools, err, nxt = await asyncio.to_thread(self.view.ipam_page, request.page_token, size, request.node)
        return pb.IpamReply(error=err, next_page_token=nxt,
                            reservations=[pb.Reservation(ip=r.ip, pool=r.pool, key=r.identity, pod=r.pod,
                                                         container_id=r.container_id, state=r.state) for r in rows],
                            pools=[pb.PoolUsage(cidr=c, size=n, active=a, held=h) for c, n, a, h in pools])

    async def Drops(self, request, context):
        return await asyncio.to_thread(self._drops)  # map reads and big replies stay off the BGP loop

    def _drops(self) -> pb.DropsReply:
        stats, rcv, why = self.view.drop_snapshot()
        by_ino, _ = self.view.pods()
        return pb.DropsReply(
            unavailable=why,
            drops=[pb.Drop(reason=s.key.reason, netns=s.key.netns, ifindex=s.key.ifindex, proto=s.key.proto,
                           saddr=s.key.saddr, daddr=s.key.daddr, sport=s.key.sport, dport=s.key.dport,
                           fragment=s.key.fragment, frag_bytes=s.key.frag_bytes, packets=s.packets, bytes=s.bytes,
                           pod=_pod(by_ino, s.key.netns), first_seen=s.first_seen, last_seen=s.last_seen)
                   for s in stats],
            rcvbuf=[pb.RcvbufOverflow(netns=r.netns, proto=r.proto, laddr=r.laddr, lport=r.lport, rcvbuf=r.rcvbuf,
                                      drops=r.drops, pod=_pod(by_ino, r.netns), first_seen=r.first_seen,
                                      last_seen=r.last_seen) for r in rcv])

    async def Sessions(self, request, context):
        return await asyncio.to_thread(self._sessions, request.list)

    def _sessions(self, full: bool) -> pb.SessionsReply:
        pr, stats, dropped, why = self.view.session_snapshot()
        if pr is None:
            return pb.SessionsReply(unavailable=why)
        _, by_cookie = self.view.pods()

        def sess(s) -> pb.Session:
            f = s.flow
            return pb.Session(netns_cookie=f.netns_cookie, proto=f.proto, saddr=f.saddr, sport=f.sport,
                              daddr=f.daddr, dport=f.dport, first_seen=s.first_seen, last_seen=s.last_seen,
                              last_rx=s.last_rx or 0.0,   # 0: nothing received (or not counted)
                              pod=_pod(by_cookie, f.netns_cookie))
        return pb.SessionsReply(
            active=pr.active, limit=pr.limit, aging_s=pr.aging_s, growth_per_min=pr.growth_per_min, dropped=dropped,
            by_netns=[pb.NetnsSessions(netns_cookie=c, active=n, pod=_pod(by_cookie, c))
                      for c, n in sorted(pr.by_netns.items(), key=lambda kv: -kv[1])],
            long_lived=[sess(s) for s in pr.long_lived],
            sessions=[sess(s) for s in stats] if full else [])


class ServeError(Exception):
    """The API cannot listen on its socket: one line saying why (the caller names the config key)."""


def claim_socket(path: Path) -> None:
    """Make `path` free for our socket: a previous agent's socket that nobody listens on any more
    is removed; a live agent's socket, or anything that is not a socket, is an error. A bind of a
    plain unix socket tells why the path cannot be bound (grpc only says that it failed)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ServeError(f"cannot create {path.parent}: {e.strerror or e}") from None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ServeError(f"cannot examine it: {e.strerror or e}") from None
    if st is not None and stat.S_ISSOCK(st.st_mode):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
        except OSError:  # a previous agent's socket: nothing listens on it any more
            pass
        else:
            raise ServeError("another process (a running moord?) listens on it")
        finally:
            s.close()
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise ServeError(f"cannot remove the old socket: {e.strerror or e}") from None
    elif st is not None:
        raise ServeError("is a directory" if stat.S_ISDIR(st.st_mode) else "exists and is not a socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
    except OSError as e:
        raise ServeError(f"cannot bind: {e.strerror or e}") from None
    finally:
        s.close()
    path.unlink(missing_ok=True)


async def serve(view: AgentView, socket_path: str) -> grpc.aio.Server:
    """Start the API; the caller stops it with `await server.stop(grace)`. ServeError when the
    socket cannot be bound."""
    path = Path(socket_path)
    claim_socket(path)
    server = grpc.aio.server()
    rpc.add_AgentServicer_to_server(AgentService(view), server)
    old = os.umask(0o077)
    try:
        try:
            if not server.add_insecure_port(f"unix://{path}"):  # older grpc returns 0, newer raises
                raise RuntimeError
        except RuntimeError:
            raise ServeError("cannot bind (grpc refused the address)") from None
        await server.start()
    finally:
        os.umask(old)
    try:
        os.chmod(path, 0o600)
    except OSError as e:
        await server.stop(0)
        raise ServeError(f"cannot make it mode 0600: {e.strerror or e}") from None
    return server
