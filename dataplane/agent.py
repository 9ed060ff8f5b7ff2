"""moord, the node agent: runs the BGP speaker and advertises the pod routes the CNI plugin
installs (routes with moor's protocol number), within milliseconds of their appearance.

    moord --config /etc/moor/moord.yaml
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
from dataclasses import dataclass, field

import yaml

from bgp.attribute.communities import parse as parse_community
from bgp.session import LocalConfig, PeerConfig
from bgp.speaker import Speaker

from . import metrics as metrics_server
from . import restart
from .api import server as api_server
from .fib import Fib
from .routewatch import RouteWatch
from .view import AgentView, Component, ProbeConfig

log = logging.getLogger("moord")

class ConfigError(ValueError):
    pass


@dataclass
class AgentConfig:
    local: LocalConfig
    peers: list[PeerConfig]
    listen_address: str = "0.0.0.0"
    listen_port: int = 179
    advertise_pod_routes: bool = True
    advertise_blocks: list = field(default_factory=list)  # pool blocks announced as they are
    install_learned: bool = False
    stale_time: float = 360.0  # longest we keep a restarted peer's stale routes
    state_file: str = "/run/moor/moord-gr.json"
    api_socket: str = "/run/moor/moord.sock"  # "": no API
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 9653  # 0: no metrics
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    ipam_config: str = ""  # the CNI network config whose moor-ipam reservations the API shows


def _req(doc: dict, key: str, typ, where: str):
    if key not in doc:
        raise ConfigError(f"{where}.{key} is missing")
    val = doc[key]
    if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
        raise ConfigError(f"{where}.{key} must be {typ.__name__}, got {val!r}")
    return val


def _opt(doc: dict, key: str, typ, where: str, default):
    return _req(doc, key, typ, where) if doc.get(key) is not None else default


def _load_probes(view: AgentView, conf: ProbeConfig) -> None:
    """Load the eBPF probes (compiling takes seconds: run off the event loop, after BGP is up).
    A probe that cannot load is reported by the API and metrics; the agent runs on without it."""
    from .probe.drops import DropProbe
    from .probe.sessions import SessionProbe
    for name, attr, make, what in (
            ("probe.drops", "drops", DropProbe, "kfree_skb and UDP receive-buffer drops"),
            ("probe.sessions", "sessions", lambda: SessionProbe(max_sessions=conf.max_sessions),
             "UDP/TCP sessions per pod")):
        try:
            probe = make()
            probe.start()
            setattr(view, attr, probe)
            view.components[name] = Component(name, True, what)
        except Exception as e:  # ProbeUnavailable, or bcc failing in its own ways
            view.components[name] = Component(name, False, str(e))
            log.warning("%s not loaded: %s", name, e)


def _mapping(doc: dict, key: str, where: str) -> dict:
    val = doc.get(key) or {}
    if not isinstance(val, dict):
        raise ConfigError(f"{where + '.' if where else ''}{key} must be a mapping")
    return val


def load(text: str) -> AgentConfig:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"not YAML: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("bgp"), dict):
        raise ConfigError("the config needs a 'bgp' mapping")
    b = doc["bgp"]
    gr = _mapping(b, "gracefulRestart", "bgp")
    local = LocalConfig(asn=_req(b, "asn", int, "bgp"), router_id=_req(b, "routerId", str, "bgp"),
                        hold_time=_opt(b, "holdTime", int, "bgp", 90),
                        restart_time=_opt(gr, "restartTime", int, "bgp.gracefulRestart", 120),
                        next_hop6=_opt(b, "nextHopIPv6", str, "bgp", ""))
    if not 1 <= local.asn <= 0xFFFFFFFF:
        raise ConfigError(f"bgp.asn {local.asn} is not a 4-byte AS number")
    for key, val in (("bgp.routerId", local.router_id), ("bgp.nextHopIPv6", local.next_hop6)):
        try:
            if val and ipaddress.ip_address(val).version != (4 if key == "bgp.routerId" else 6):
                raise ValueError(f"{val!r} is of the wrong IP version")
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from e
    if not 0 <= local.restart_time <= 4095:
        raise ConfigError("bgp.gracefulRestart.restartTime must be 0..4095 seconds (12 bits in the capability)")
    if local.hold_time and not 3 <= local.hold_time <= 65535:
        raise ConfigError("bgp.holdTime must be 0 or 3..65535")
    peers = []
    for i, p in enumerate(b.get("peers") or []):
        where = f"bgp.peers[{i}]"
        if not isinstance(p, dict):
            raise ConfigError(f"{where} must be a mapping")
        try:
            comms = tuple(parse_community(str(c)) for c in p.get("communities") or [])
        except ValueError as e:
            raise ConfigError(f"{where}.communities: {e}") from e
        address = _req(p, "address", str, where)
        try:
            ipaddress.ip_address(address)
        except ValueError as e:
            raise ConfigError(f"{where}.address: {e}") from e
        peers.append(PeerConfig(address=address, asn=_req(p, "asn", int, where),
                                passive=_opt(p, "passive", bool, where, False), port=_opt(p, "port", int, where, 179),
                                hold_time=_opt(p, "holdTime", int, where, local.hold_time), communities=comms,
                                password=str(p.get("password") or ""),
                                ttl_security=_opt(p, "ttlSecurity", bool, where, False),
                                graceful_restart=_opt(p, "gracefulRestart", bool, where, False)))
        if peers[-1].hold_time and not 3 <= peers[-1].hold_time <= 65535:
            raise ConfigError(f"{where}.holdTime must be 0 or 3..65535")
        if len(peers[-1].password.encode()) > 80:
            raise ConfigError(f"{where}.password is longer than 80 bytes (the kernel's TCP MD5 limit)")
    if len({p.address for p in peers}) != len(peers):
        raise ConfigError("bgp.peers: an address appears twice")
    adv = _mapping(b, "advertise", "bgp")
    blocks = []
    for i, c in enumerate(adv.get("blocks") or []):
        try:
            blocks.append(ipaddress.ip_network(str(c)))
        except ValueError as e:
            raise ConfigError(f"bgp.advertise.blocks[{i}]: {e}") from e
    api, met, pr, ipam = (_mapping(doc, k, "") for k in ("api", "metrics", "probe", "ipam"))
    probe = ProbeConfig(enabled=_opt(pr, "enabled", bool, "probe", True),
                        session_limit=_opt(pr, "sessionLimit", int, "probe", 0),
                        session_aging_s=float(_opt(pr, "sessionAgingSeconds", int, "probe", 300)),
                        max_sessions=_opt(pr, "maxSessions", int, "probe", 262144))
    if probe.session_limit < 0 or probe.session_aging_s <= 0 or probe.max_sessions < 1024:
        raise ConfigError("probe: sessionLimit must be >= 0, sessionAgingSeconds > 0, maxSessions >= 1024")
    metrics_port = _opt(met, "port", int, "metrics", 9653)
    if not 0 <= metrics_port <= 65535:
        raise ConfigError("metrics.port must be 0..65535 (0 turns metrics off)")
    return AgentConfig(local=local, peers=peers, listen_address=_opt(b, "listenAddress", str, "bgp", "0.0.0.0"),
                       listen_port=_opt(b, "listenPort", int, "bgp", 179),
                       advertise_pod_routes=_opt(adv, "podRoutes", bool, "bgp.advertise", True),
                       advertise_blocks=blocks, install_learned=_opt(b, "installLearned", bool, "bgp", False),
                       stale_time=_opt(gr, "staleRoutesTime", int, "bgp.gracefulRestart", 360),
                       state_file=_opt(gr, "stateFile", str, "bgp.gracefulRestart", "/run/moor/moord-gr.json"),
                       api_socket=_opt(api, "socket", str, "api", "/run/moor/moord.sock"),
                       metrics_address=_opt(met, "address", str, "metrics", "0.0.0.0"), metrics_port=metrics_port,
                       probe=probe, ipam_config=_opt(ipam, "config", str, "ipam", ""))


async def run(conf: AgentConfig, stop: asyncio.Event, graceful_stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set. With `graceful_stop` also set, stop for a restart: peers that do
    graceful restart keep our routes, and the learned routes stay in the kernel, forwarding."""
    gr_peers = any(p.graceful_restart for p in conf.peers)
    st = restart.begin(conf.state_file) if gr_peers else restart.RestartState(False, False)
    conf.local.restarted, conf.local.forwarding = st.restarted, st.forwarding
    if st.restarted:
        log.info("restarted (previous pid %d); forwarding state %s", st.previous_pid,
                 "kept" if st.forwarding else "lost")
    fib = Fib() if conf.install_learned else None
    if fib is not None and (n := fib.adopt()):
        log.info("adopted %d learned routes left by the previous agent", n)
    view = AgentView(fib=fib, restarted=st.restarted, forwarding=st.forwarding, ipam_config=conf.ipam_config,
                     probe_conf=conf.probe)
    speaker = Speaker(conf.local, conf.peers, conf.listen_address, conf.listen_port,
                      on_best=fib.set if fib is not None else None, stale_time=conf.stale_time,
                      on_state=view.peer_state)
    view.speaker = speaker
    loop = asyncio.get_running_loop()

    def changed(route, present: bool) -> None:
        if present:
            speaker.announce(route.dst)
        else:
            speaker.withdraw(route.dst)
        log.info("%s %s", "advertise" if present else "withdraw", route.dst)

    for block in conf.advertise_blocks:
        speaker.announce(block)
    watch = RouteWatch(changed)
    if conf.advertise_pod_routes:
        for r in watch.start(loop):  # the table first: the agent can restart at any time
            speaker.announce(r.dst)
    await speaker.start()

    async def settle() -> None:
        # routes the previous agent installed stay until the peers resent theirs (RFC 4724 4.1),
        # bounded so a silent peer cannot keep wrong routes forever
        try:
            await asyncio.wait_for(speaker.synced.wait(), conf.local.restart_time or 1)
        except asyncio.TimeoutError:
            log.warning("not every peer sent End-of-RIB within %d s", conf.local.restart_time)
        if fib is not None and (n := fib.sweep_adopted()):
            log.info("removed %d learned routes no peer sends any more", n)
    settling = asyncio.ensure_future(settle()) if fib is not None and fib.adopted else None
    api = await api_server.serve(view, conf.api_socket) if conf.api_socket else None
    metrics = await metrics_server.serve(view, conf.metrics_address, conf.metrics_port) if conf.metrics_port else None
    if conf.probe.enabled:
        loading = asyncio.ensure_future(asyncio.to_thread(_load_probes, view, conf.probe))
    else:
        loading = None
        view.components["probe"] = Component("probe", True, "disabled in moord's config")
    try:
        await stop.wait()
    finally:
        if settling is not None:
            settling.cancel()
        if api is not None:
            await api.stop(0.5)
        if metrics is not None:
            metrics.close()
        if loading is not None:
            await loading  # a thread cannot be cancelled; the probes close below
        for probe in (view.drops, view.sessions):
            if probe is not None:
                probe.close()
        graceful = gr_peers and graceful_stop is not None and graceful_stop.is_set()
        watch.stop(loop)
        # the kernel's learned routes are frozen from here: all kept (a restart) or all flushed
        speaker.rib_in.on_best = lambda prefix, hops: None
        await speaker.stop(graceful=graceful)
        if fib is not None:
            if not graceful:
                fib.flush()
            fib.close()
        if gr_peers and not graceful:
            restart.end(conf.state_file)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="moord", description="moor's node agent")
    ap.add_argument("--config", required=True)
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    try:
        with open(a.config) as f:
            conf = load(f.read())
    except (OSError, ConfigError) as e:
        print(f"moord: {a.config}: {e}", file=sys.stderr)
        return 2

    async def _main() -> None:
        stop, graceful = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def restart_stop() -> None:
            graceful.set()
            stop.set()
        # SIGTERM (a DaemonSet update, a restart): with graceful restart configured, peers keep our
        # routes and learned routes keep forwarding until we are back. SIGINT: a full shutdown.
        loop.add_signal_handler(signal.SIGTERM, restart_stop)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await run(conf, stop, graceful)
    asyncio.run(_main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
