"""moord, the node agent: runs the BGP speaker and advertises the pod routes the CNI plugin
installs (routes with moor's protocol number), within milliseconds of their appearance.

    moord --config /etc/moor/moord.yaml

Every config value is checked at load, and every error is one line naming its field
(`bgp.peers[1].port 70000: must be 1..65535`); unknown keys are refused by name. At start the API
socket, the metrics listener and the BGP listen address are all bound before any BGP session
starts; a failure is one line naming the config key, whatever was started is undone, and moord
exits 2.
"""
from __future__ import annotations

import argparse
import asyncio
import difflib
import errno
import ipaddress
import logging
import math
import os
import re
import signal
import socket
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bgp.attribute.communities import parse as parse_community
from bgp.session import LocalConfig, PeerConfig
from bgp.speaker import Speaker, canonical
from bgp.wire import key_str

from . import logs
from . import metrics as metrics_server
from . import prereq, restart
from .api import server as api_server
from .cniserver import CNIServer
from .fib import Fib
from .hostrouting import HostRouting, HostRoutingConfig, remove_filters
from .routewatch import RouteWatch
from .view import AgentView, Component, ProbeConfig

log = logging.getLogger("moord")

class ConfigError(ValueError):
    pass


class StartError(RuntimeError):
    """The agent could not start (an address or path it cannot bind or write): one line naming
    the config key. Whatever had started is undone before it is raised out of run()."""


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
    cni_socket: str = "/run/moor/cni.sock"  # "": the CNI plugin always works in its own process
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 9653  # 0: no metrics
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    ipam_config: str = ""  # the CNI network config whose moor-ipam reservations the API shows
    node: prereq.NodeConfig = field(default_factory=prereq.NodeConfig)
    host_routing: HostRoutingConfig = field(default_factory=HostRoutingConfig)


# -- the schema: every key moord knows, per section -------------------------------------------------
KNOWN: dict[str, tuple[str, ...]] = {
    "": ("bgp", "api", "cni", "metrics", "probe", "ipam", "node", "dataplane"),
    "bgp": ("asn", "routerId", "listenAddress", "listenPort", "holdTime", "nextHopIPv6", "peers", "gracefulRestart",
            "installLearned", "advertise"),
    "bgp.peers[]": ("address", "asn", "passive", "port", "holdTime", "communities", "password", "ttlSecurity",
                    "gracefulRestart", "maxPrefixes"),
    "bgp.gracefulRestart": ("restartTime", "staleRoutesTime", "stateFile"),
    "bgp.advertise": ("podRoutes", "blocks"),
    "api": ("socket",),
    "cni": ("socket",),
    "metrics": ("address", "port"),
    "probe": ("enabled", "sessionLimit", "sessionAgingSeconds", "maxSessions"),
    "ipam": ("config",),
    "node": ("forwarding",),
    "dataplane": ("hostRouting", "uplinks"),
}
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with its NUL


def _show(val) -> str:
    """A value as the message shows it: plain words bare, anything odd (empty, spaces) quoted."""
    if isinstance(val, str):
        return val if val and val.isprintable() and not any(c.isspace() for c in val) else repr(val)
    if isinstance(val, bool):
        return "true" if val else "false"
    return repr(val)


def _got(val) -> str:
    """A value of the wrong type: strings quoted (`got '179'` is not `got 179`), long ones cut."""
    text = repr(val) if isinstance(val, str) else _show(val)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(typ) -> str:
    return {"number": "a number", list: "a list", dict: "a mapping"}.get(typ, getattr(typ, "__name__", str(typ)))


def _unknown(key, where: str, schema: str) -> str:
    name = f"{where}.{key}" if where else str(key)
    known = KNOWN[schema]
    if isinstance(key, str):
        lower = {k.lower(): k for k in known}
        close = difflib.get_close_matches(key.lower(), list(lower), n=1, cutoff=0.6)
        if close:
            return f"{name}: unknown key (did you mean {lower[close[0]]}?)"
        elsewhere = [s.replace("[]", "[*]") for s, keys in KNOWN.items() if s != schema and key in keys]
        if elsewhere:
            return f"{name}: unknown key here (it belongs in {' or '.join(s or 'the top level' for s in elsewhere)})"
    return f"{name}: unknown key (known: {', '.join(known)})"


class _Section:
    """One mapping of the config: refuses keys it does not know, and reads typed values."""

    def __init__(self, doc, where: str, schema: str):
        if not isinstance(doc, dict):
            raise ConfigError(f"{where or 'the config'} must be a mapping, got {_got(doc)}")
        for key in doc:
            if key not in KNOWN[schema]:
                raise ConfigError(_unknown(key, where, schema))
        self.doc, self.where = doc, where

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, typ, default=None, required: bool = False):
        """The value of `key` checked against `typ` (int, bool, str, list, dict or "number");
        absent or null: `default` (or an error when required)."""
        val = self.doc.get(key)
        if val is None:
            if required:
                raise ConfigError(f"{self.name(key)} is missing")
            return default
        ok = (isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val)
              if typ == "number" else isinstance(val, typ) and not (typ is int and isinstance(val, bool)))
        if not ok:
            raise ConfigError(f"{self.name(key)} must be {_type_name(typ)}, got {_got(val)}")
        return val

    def section(self, key: str, schema: str | None = None) -> _Section:
        val = self.doc.get(key)
        return _Section({} if val is None else val, self.name(key), schema or self.name(key))

    def int_in(self, key: str, lo: int, hi: int, default=None, required: bool = False, what: str = "") -> int:
        val = self.get(key, int, default, required)
        if val is not None and not lo <= val <= hi:
            raise ConfigError(f"{self.name(key)} {val}: must be {lo}..{hi}{what}")
        return val

    def hold_time(self, key: str, default: int) -> int:
        val = self.get(key, int, default)
        if val != 0 and not 3 <= val <= 65535:
            raise ConfigError(f"{self.name(key)} {val}: must be 0 or 3..65535 seconds")
        return val

    def ip(self, key: str, default=None, required: bool = False, version: int | None = None):
        val = self.get(key, str, default, required)
        if val is None or val == default:
            return val
        try:
            ip = ipaddress.ip_address(val)
        except ValueError:
            raise ConfigError(f"{self.name(key)} {_show(val)}: not an IP{'v%d' % version if version else ''} "
                              "address") from None
        if version is not None and ip.version != version:
            raise ConfigError(f"{self.name(key)} {val}: not an IPv{version} address")
        return val

    def path(self, key: str, default: str, writes: bool, socket_file: bool = False, off: bool = False) -> str:
        """An absolute path (see _check_path); `off`: "" turns the feature off."""
        val = self.get(key, str, default)
        if val or not off:
            _check_path(self.name(key), val, writes, socket_file)
        return val


def _stat(name: str, val: str, path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise ConfigError(f"{name} {_show(val)}: {_show(path)}: {e.strerror}") from None


def _check_path(name: str, val: str, writes: bool, socket_file: bool) -> None:
    """An absolute path to a file, whose parent is a directory or can be created (missing parents
    are created at start: /run/moor does not exist on a fresh node); `writes`: the parent must be
    writable; `socket_file`: a unix socket (what exists there must be a socket, the path fits
    sun_path)."""
    v = _show(val)
    if "\0" in val:
        raise ConfigError(f"{name} {v}: contains a NUL byte")
    if not os.path.isabs(val):
        raise ConfigError(f"{name} {v}: must be an absolute path")
    if val.endswith("/"):
        raise ConfigError(f"{name} {v}: must name a file, not a directory")
    if socket_file and len(os.fsencode(val)) > UNIX_PATH_MAX:
        raise ConfigError(f"{name} {v}: longer than {UNIX_PATH_MAX} bytes (the limit of a unix socket path)")
    path = os.path.normpath(val)
    st = _stat(name, val, path)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{name} {v}: is a directory")
        if socket_file and not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{name} {v}: exists and is not a socket (moord replaces only a socket)")
        if not socket_file and not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{name} {v}: exists and is not a regular file")
    parent = anc = os.path.dirname(path)
    while (st := _stat(name, val, anc)) is None:
        anc = os.path.dirname(anc)
    # the parent itself, or the nearest existing directory above it, where start-up creates it
    how = f"parent {_show(parent)}" if anc == parent else f"parent {_show(parent)} cannot be created: {_show(anc)}"
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{name} {v}: {how} is not a directory")
    if writes and not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"{name} {v}: {how} is not writable")


def _missing_parent(path: str) -> str:
    """The parent directory start-up will create, or ''."""
    parent = os.path.dirname(os.path.normpath(path))
    return "" if os.path.isdir(parent) else parent


class _Loader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key, _val in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key.value!r}",
                                                            key.start_mark)
                seen.add(key.value)
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"not YAML: {where}{e.problem or e.context or 'syntax error'}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not YAML: {' '.join(str(e).split())}") from None


def _peer(p, where: str, local: LocalConfig) -> PeerConfig:
    s = _Section(p, where, "bgp.peers[]")
    address = s.ip("address", required=True)
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified or ip.is_multicast:
        raise ConfigError(f"{where}.address {address}: not a unicast address")
    comms = []
    for i, c in enumerate(s.get("communities", list, [])):
        if not isinstance(c, str):  # YAML reads 65000:42 unquoted as a base-60 number
            raise ConfigError(f"{where}.communities[{i}] {_show(c)}: must be a quoted string like '65000:42'")
        try:
            comms.append(parse_community(c))
        except ValueError as e:
            raise ConfigError(f"{where}.communities[{i}]: {e}") from None
    password = s.get("password", str, "")
    if len(password.encode()) > 80:
        raise ConfigError(f"{where}.password is longer than 80 bytes (the kernel's TCP MD5 limit)")
    return PeerConfig(address=address, asn=s.int_in("asn", 1, 0xFFFFFFFF, required=True, what=" (a 4-byte AS number)"),
                      passive=s.get("passive", bool, False), port=s.int_in("port", 1, 65535, 179),
                      hold_time=s.hold_time("holdTime", local.hold_time), communities=tuple(comms),
                      password=password, ttl_security=s.get("ttlSecurity", bool, False),
                      graceful_restart=s.get("gracefulRestart", bool, False),
                      max_prefixes=s.int_in("maxPrefixes", 0, 0xFFFFFFFF, 0, what=" (0: no limit)"))


_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """${NAME} from moord's environment: one config for every node of a DaemonSet, the node's own
    values (routerId: ${NODE_IP}, from the downward API) filled in on each. An unset name is an
    error: an empty router ID or address must not pass for a value."""
    def sub(m: re.Match) -> str:
        if m.group(1) not in environ:
            raise ConfigError(f"${{{m.group(1)}}}: not set in moord's environment")
        return environ[m.group(1)]
    return _ENV_VAR.sub(sub, text)


def load(text: str) -> AgentConfig:
    doc = _parse_yaml(text)
    top = _Section({} if doc is None else doc, "", "")
    if top.doc.get("bgp") is None:
        raise ConfigError("bgp is missing: the config needs a 'bgp' mapping")
    b = top.section("bgp")
    gr = b.section("gracefulRestart")
    local = LocalConfig(asn=b.int_in("asn", 1, 0xFFFFFFFF, required=True, what=" (a 4-byte AS number)"),
                        router_id=b.ip("routerId", required=True, version=4),
                        hold_time=b.hold_time("holdTime", 90),
                        restart_time=gr.int_in("restartTime", 0, 4095, 120,
                                               what=" seconds (12 bits in the capability)"),
                        next_hop6=b.ip("nextHopIPv6", "", version=6))
    if ipaddress.ip_address(local.router_id) == ipaddress.IPv4Address(0):
        raise ConfigError(f"bgp.routerId {local.router_id}: must not be zero (RFC 6286)")
    if local.next_hop6 and (ipaddress.ip_address(local.next_hop6).is_unspecified
                            or ipaddress.ip_address(local.next_hop6).is_multicast):
        raise ConfigError(f"bgp.nextHopIPv6 {local.next_hop6}: not a unicast address")
    listen = b.ip("listenAddress", "0.0.0.0")
    listen_port = b.int_in("listenPort", 1, 65535, 179)
    peers_doc = b.get("peers", list, [])
    peers = [_peer(p, f"bgp.peers[{i}]", local) for i, p in enumerate(peers_doc)]
    seen: dict = {}
    listen_ip = ipaddress.ip_address(listen)
    # a passive peer must reach the listener: an IPv4 socket takes no IPv6 connection, and an
    # IPv6 address other than :: takes no IPv4 one
    accepts = {4} if listen_ip.version == 4 else {4, 6} if listen_ip.is_unspecified else {6}
    for i, p in enumerate(peers):
        ip = ipaddress.ip_address(canonical(p.address))  # the speaker's own spelling of a peer
        if ip in seen:
            raise ConfigError(f"bgp.peers[{i}].address {p.address}: appears twice (also bgp.peers[{seen[ip]}])")
        seen[ip] = i
        if p.passive and ip.version not in accepts:
            raise ConfigError(f"bgp.peers[{i}].passive: the peer must connect to us over IPv{ip.version}, but "
                              f"bgp.listenAddress {listen} takes IPv{listen_ip.version} connections only")
    adv = b.section("advertise")
    blocks = []
    for i, c in enumerate(adv.get("blocks", list, [])):
        if not isinstance(c, str):
            raise ConfigError(f"bgp.advertise.blocks[{i}] {_show(c)}: must be a prefix like 203.0.113.0/26")
        try:
            blocks.append(ipaddress.ip_network(c))
        except ValueError as e:
            raise ConfigError(f"bgp.advertise.blocks[{i}]: {e}") from None
    stale_time = gr.get("staleRoutesTime", "number", 360)
    if stale_time < 0:
        raise ConfigError(f"bgp.gracefulRestart.staleRoutesTime {stale_time}: must be >= 0 seconds")
    api, cni, met, pr, ipam, node = (top.section(k) for k in ("api", "cni", "metrics", "probe", "ipam", "node"))
    aging = pr.get("sessionAgingSeconds", "number", 300)
    if aging <= 0:
        raise ConfigError(f"probe.sessionAgingSeconds {aging}: must be > 0 seconds")
    probe = ProbeConfig(enabled=pr.get("enabled", bool, True),
                        session_limit=pr.int_in("sessionLimit", 0, 0xFFFFFFFF, 0, what=" (0: unknown)"),
                        session_aging_s=float(aging),
                        max_sessions=pr.int_in("maxSessions", 1024, 0xFFFFFFFF, 262144))
    return AgentConfig(local=local, peers=peers, listen_address=listen, listen_port=listen_port,
                       advertise_pod_routes=adv.get("podRoutes", bool, True), advertise_blocks=blocks,
                       install_learned=b.get("installLearned", bool, False), stale_time=stale_time,
                       state_file=gr.path("stateFile", "/run/moor/moord-gr.json", writes=True),
                       api_socket=api.path("socket", "/run/moor/moord.sock", writes=True, socket_file=True, off=True),
                       cni_socket=cni.path("socket", "/run/moor/cni.sock", writes=True, socket_file=True, off=True),
                       metrics_address=met.ip("address", "0.0.0.0"),
                       metrics_port=met.int_in("port", 0, 65535, 9653, what=" (0 turns metrics off)"),
                       probe=probe, ipam_config=ipam.path("config", "", writes=False, off=True),
                       node=prereq.NodeConfig(forwarding=_forwarding(node)),
                       host_routing=_host_routing(top.section("dataplane")))


def _host_routing(dp: _Section) -> HostRoutingConfig:
    uplinks = dp.get("uplinks", list, [])
    for i, name in enumerate(uplinks):
        if not isinstance(name, str) or not name or len(name.encode()) > 15 or "/" in name or any(
                c.isspace() for c in name):
            raise ConfigError(f"dataplane.uplinks[{i}] {_show(name)}: not an interface name")
    return HostRoutingConfig(enabled=dp.get("hostRouting", bool, True), uplinks=list(uplinks))


def _forwarding(node: _Section) -> str:
    val = node.doc.get("forwarding")
    if val is None:
        return "auto"
    if isinstance(val, bool):  # YAML 1.1 reads on and off unquoted as booleans
        return "on" if val else "off"
    modes = ", ".join(prereq.FORWARDING_MODES[:-1]) + " or " + prereq.FORWARDING_MODES[-1]
    if not isinstance(val, str):
        raise ConfigError(f"node.forwarding must be {modes}, got {_got(val)}")
    if val not in prereq.FORWARDING_MODES:
        raise ConfigError(f"node.forwarding {_show(val)}: must be {modes}")
    return val


# -- start-up: bind everything, then BGP ----------------------------------------------------------
def _bind_error(key_addr: str, key_port: str, address: str, port: int, e: OSError) -> StartError:
    why = e.strerror or str(e)
    if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL, errno.ENODEV):
        return StartError(f"{key_addr} {address}: cannot bind: {why}")
    if e.errno in (errno.EADDRINUSE, errno.EACCES):
        return StartError(f"{key_port} {port}: cannot bind on {address}: {why}")
    return StartError(f"{key_addr} {address} ({key_port} {port}): cannot bind: {why}")


def _check_bgp_bind(address: str, port: int) -> None:
    """Bind (and release) the BGP listen address the way the speaker will (SO_REUSEADDR), so a
    busy port or an address not on the node is reported before anything else starts."""
    version = ipaddress.ip_address(address).version
    try:
        with socket.socket(socket.AF_INET6 if version == 6 else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
    except OSError as e:  # an address family the kernel lacks fails at socket()
        raise _bind_error("bgp.listenAddress", "bgp.listenPort", address, port, e) from None


def _read_state(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _restore_state(path: str, previous: bytes | None) -> None:
    """A start that failed leaves the graceful-restart state as the previous agent left it."""
    if previous is None:
        restart.end(path)
        return
    tmp = path + ".tmp"
    Path(tmp).write_bytes(previous)
    os.replace(tmp, path)


def _load_probes(view: AgentView, conf: ProbeConfig, stop: asyncio.Event) -> None:
    """Load the eBPF probes (compiling takes seconds: run off the event loop, after BGP is up).
    A probe that cannot load is reported by the API and metrics; the agent runs on without it.
    Once moord is stopping, no further probe is compiled (the shutdown waits for this thread)."""
    from .probe.drops import DropProbe
    from .probe.sessions import SessionProbe
    for name, attr, make, what in (
            ("probe.drops", "drops", DropProbe, "kfree_skb and UDP receive-buffer drops"),
            ("probe.sessions", "sessions", lambda: SessionProbe(max_sessions=conf.max_sessions),
             "UDP/TCP sessions per pod")):
        if stop.is_set():
            return
        try:
            probe = make()
            probe.start()
            setattr(view, attr, probe)
            view.components[name] = Component(name, True, what)
            # a compile that ends after the shutdown began is closed below, unsaid
            log.log(logging.DEBUG if stop.is_set() else logging.INFO, "%s loaded: %s", name, what,
                    extra={"probe": name})
        except Exception as e:  # ProbeUnavailable, or bcc failing in its own ways
            view.components[name] = Component(name, False, str(e))
            log.warning("%s not loaded: %s", name, e, extra={"probe": name})


async def _after(first, fn, *args):
    if first is not None:
        await first  # never raises: _load_host_routing reports its own failure
    return await fn(*args)


async def _load_host_routing(view: AgentView, hr: HostRouting, stop: asyncio.Event) -> None:
    """Compile and load off the loop (seconds), then attach on the loop: the route watch calls
    pod_route() there too, so no pod falls between what was known and what comes next. A compile
    that ends after the shutdown began attaches nothing: the shutdown closes it (run())."""
    try:
        await asyncio.to_thread(hr.start)
        if stop.is_set():
            view.components["hostRouting"] = Component("hostRouting", False, "not attached: moord is stopping")
            return
        log.info("host routing: %s", hr.loaded())
        hr.attach_all()
        hr.follow_route_mtus(asyncio.get_running_loop())
    except Exception as e:  # HostRoutingUnavailable, netlink, or bcc failing in its own ways
        hr.close(detach=True)
        view.components["hostRouting"] = Component("hostRouting", False, str(e))
        log.warning("host routing off: %s; pods are forwarded by the normal stack", e)
        return
    what = f"eBPF fast path on {len(hr.attached)} device(s)"
    view.components["hostRouting"] = Component("hostRouting", True, what)
    log.info("host routing on: %s", what)


def _host_routing_off(view: AgentView, conf: AgentConfig, pod_devices: set[int]) -> None:
    why = ("disabled in moord's config (dataplane.hostRouting)" if not conf.host_routing.enabled
           else "pod routes are not followed (bgp.advertise.podRoutes false)")
    view.components["hostRouting"] = Component("hostRouting", True, f"off: {why}")
    log.info("host routing off: %s; pods are forwarded by the normal stack", why)
    try:  # a previous moord, stopped for a restart with it on, left its filters
        if n := remove_filters(pod_devices):
            log.info("host routing: removed the filters a previous moord left on %d pod veth(s)", n)
    except OSError as e:
        log.warning("host routing: cannot remove a previous moord's filters: %s", e)


def _prerequisites(conf: AgentConfig, fwd: prereq.Forwarding, present: list) -> None:
    """Forwarding for the families the pods use: IPv4 always, IPv6 when the config or a pod route
    already in the table uses it (a later IPv6 pod route turns it on then, see run()). Not both
    always: IPv6 forwarding changes how the node treats router advertisements (see prereq), a
    change no IPv4-only node should get. Then the checks that only warn."""
    if conf.node.forwarding == "on":
        fwd.need(4, "node.forwarding on")
        fwd.need(6, "node.forwarding on")
    else:
        fwd.need(4, "pods are routed through the node")
        why6 = prereq.ipv6_in_config(conf.peers, conf.advertise_blocks, conf.local.next_hop6)
        why6 = why6 or next((f"IPv6 pod route {key_str(dst)}" for dst in present if dst[0] == 6), "")
        if why6:
            fwd.need(6, why6)
    try:
        fwd.missing += prereq.check_rp_filter(conf.peers)
    except OSError as e:
        log.warning("cannot check reverse-path filtering on the uplinks: %s", e.strerror or e)


def _node_component(view: AgentView, fwd: prereq.Forwarding) -> None:
    on = [f"IPv{v}" for v, ok in sorted(fwd.handled.items()) if ok]
    detail = f"forwarding {', '.join(on) or 'off'}" + (f"; not as routed mode needs: {', '.join(fwd.missing)}"
                                                       if fwd.missing else "")
    view.components["node"] = Component("node", not fwd.missing, detail)


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class NodeAddresses:
    """Whether an address is one of this node's (a learned route via it would loop back to us),
    from the kernel, re-read at most every few seconds: the speaker asks once per UPDATE."""

    def __init__(self, ttl_s: float = 5.0):
        self.ttl_s = ttl_s
        self._at = -ttl_s
        self._addrs: frozenset[str] = frozenset()

    def __call__(self, addr: str) -> bool:
        now = time.monotonic()
        if now - self._at >= self.ttl_s:
            from cni.netlink.rtnl import RTNL
            with RTNL() as nl:
                self._addrs = frozenset(str(a.ip) for a in nl.addrs())
            self._at = now
        return addr in self._addrs


async def run(conf: AgentConfig, stop: asyncio.Event, graceful_stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set. With `graceful_stop` also set, stop for a restart: peers that do
    graceful restart keep our routes, and the learned routes stay in the kernel, forwarding.

    Start-up binds the API socket, the metrics listener and (a probe of) the BGP listen address
    before anything else, and starts the speaker, whose sessions connect at once, last. A failure
    raises StartError naming the config key, after undoing what had started."""
    loop = asyncio.get_running_loop()
    gr_peers = any(p.graceful_restart for p in conf.peers)
    view = AgentView(ipam_config=conf.ipam_config, probe_conf=conf.probe, cni_socket=conf.cni_socket)
    api = cni = metrics = fib = watch = speaker = settling = loading = hr_loading = None
    hr = HostRouting(conf.host_routing) if conf.host_routing.enabled and conf.advertise_pod_routes else None
    fwd = prereq.Forwarding(conf.node.forwarding)
    api_ino = 0
    state_began, previous_state = False, None
    serving = False  # start-up done: from here a stop is a stop, not an undo

    try:
        # 1. every endpoint, before any BGP session can come up
        if conf.api_socket:
            if parent := _missing_parent(conf.api_socket):
                log.info("creating %s for api.socket", parent)
            try:
                api = await api_server.serve(view, conf.api_socket)
            except api_server.ServeError as e:
                raise StartError(f"api.socket {conf.api_socket}: {e}") from None
            api_ino = os.stat(conf.api_socket).st_ino if os.path.exists(conf.api_socket) else 0
            log.info("API on unix:%s", conf.api_socket, extra={"endpoint": f"unix:{conf.api_socket}"})
        if conf.cni_socket:
            cni = CNIServer(conf.cni_socket)
            try:
                await cni.start()
            except api_server.ServeError as e:
                cni = None
                raise StartError(f"cni.socket {conf.cni_socket}: {e}") from None
            view.cni = cni
            log.info("CNI calls served on unix:%s", conf.cni_socket, extra={"endpoint": f"unix:{conf.cni_socket}"})
        if conf.metrics_port:
            try:
                metrics = await metrics_server.serve(view, conf.metrics_address, conf.metrics_port)
            except OSError as e:
                raise _bind_error("metrics.address", "metrics.port", conf.metrics_address, conf.metrics_port,
                                  e) from None
            where = _endpoint(conf.metrics_address, conf.metrics_port)
            log.info("metrics on http://%s/metrics, health on /healthz and /readyz", where,
                     extra={"endpoint": f"http://{where}"})
        _check_bgp_bind(conf.listen_address, conf.listen_port)

        # 2. graceful-restart state, learned routes, the kernel table
        st = restart.RestartState(False, False)
        if gr_peers:
            if parent := _missing_parent(conf.state_file):
                log.info("creating %s for bgp.gracefulRestart.stateFile", parent)
            previous_state = _read_state(conf.state_file)
            try:
                st = restart.begin(conf.state_file)
            except OSError as e:
                raise StartError(f"bgp.gracefulRestart.stateFile {conf.state_file}: {e.strerror or e}") from None
            state_began = True
        conf.local.restarted, conf.local.forwarding = st.restarted, st.forwarding
        if conf.local.is_local is None:  # routes via an address of this node are treat-as-withdraw
            conf.local.is_local = NodeAddresses()
        view.restarted, view.forwarding = st.restarted, st.forwarding
        if st.restarted:
            log.info("restarted (previous pid %d); forwarding state %s", st.previous_pid,
                     "kept" if st.forwarding else "lost")
        if conf.install_learned:
            try:
                fib = Fib()
                n = fib.adopt()
            except OSError as e:
                raise StartError(f"bgp.installLearned: cannot read the kernel routing table: {e}") from None
            view.fib = fib
            if n:
                log.info("adopted %d learned routes left by the previous agent", n)
        speaker = Speaker(conf.local, conf.peers, conf.listen_address, conf.listen_port,
                          on_best=fib.set if fib is not None else None, stale_time=conf.stale_time,
                          on_state=view.peer_state)
        view.speaker = speaker

        def changed(route, present: bool) -> None:
            if present and route.dst.version == 6 and 6 not in fwd.handled:  # the first IPv6 pod
                fwd.need(6, f"IPv6 pod route {route.dst}")
                _node_component(view, fwd)
            if present:
                speaker.announce(route.dst)
            else:
                speaker.withdraw(route.dst)
            if hr is not None:  # remembered until it is loaded, attached at once after
                hr.pod_route(route.dst, route.oif, present)
            log.debug("%s %s", "advertise" if present else "withdraw", route.dst)  # a burst is 100k lines

        for block in conf.advertise_blocks:
            speaker.announce(block)
        # a re-read after lost events reconciles the adj-RIB-out too (announce what is missing)
        watch = RouteWatch(changed, rib_out=speaker.rib_out)
        view.watch = watch
        if conf.advertise_pod_routes:
            try:
                present = watch.start(loop)  # the table first: the agent can restart at any time
            except OSError as e:
                raise StartError(f"bgp.advertise.podRoutes: cannot follow the kernel routing table: {e}") from None
            for dst in present:  # bgp.wire.Key: the adj-RIB-out shares the watch's bytes
                speaker.announce(dst)
            # the pod veths: host routing attaches to them, or (off) cleans what a predecessor left
            pod_devices = {oif for oif in watch.routes.values() if oif}
            if hr is not None:  # the watch's own key bytes: no object per route (100k routes)
                for k, oif in watch.routes.items():
                    hr.pod_route(k[0], oif, True)
        else:
            present, pod_devices = [], set()

        # forwarding before BGP: once peers learn our routes, packets for the pods arrive
        _prerequisites(conf, fwd, present)
        _node_component(view, fwd)

        # 3. BGP, last: its sessions start connecting as soon as it listens
        try:
            await speaker.start()
        except OSError as e:
            speaker = None  # nothing of it runs: the listener is what failed
            if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES, errno.EAFNOSUPPORT, errno.EINVAL):
                raise _bind_error("bgp.listenAddress", "bgp.listenPort", conf.listen_address, conf.listen_port,
                                  e) from None
            # the bind was checked: what else the listener sets is the peers' TCP MD5 and GTSM
            secured = [f"bgp.peers[{i}]" for i, p in enumerate(conf.peers) if p.password or p.ttl_security]
            raise StartError(f"bgp.listenAddress {conf.listen_address}: cannot listen on port {conf.listen_port}: "
                             f"{e.strerror or e}" + (f" (TCP MD5 or GTSM of {', '.join(secured)})" if secured
                                                     else "")) from None
        log.info("BGP on %s, %d peer(s)", _endpoint(conf.listen_address, conf.listen_port), len(conf.peers),
                 extra={"endpoint": _endpoint(conf.listen_address, conf.listen_port)})

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
        # bcc (LLVM) compiles one program at a time: host routing first (the pods' dataplane),
        # then the probes, one worker thread after the other
        if hr is not None:
            hr_loading = asyncio.ensure_future(_load_host_routing(view, hr, stop))
        else:
            _host_routing_off(view, conf, pod_devices)
        if conf.probe.enabled:
            loading = asyncio.ensure_future(_after(hr_loading, asyncio.to_thread, _load_probes, view, conf.probe, stop))
        else:
            view.components["probe"] = Component("probe", True, "disabled in moord's config")
            log.info("probes not loaded: disabled in moord's config (probe.enabled)")
        serving = view.serving = True
        log.info("ready: start-up done")
        await stop.wait()
    finally:
        view.serving = False  # /readyz says so while the rest stops
        graceful = serving and gr_peers and graceful_stop is not None and graceful_stop.is_set()
        if settling is not None:
            settling.cancel()
        if cni is not None:  # first: new calls go to the executables, calls in flight finish
            await _quietly("stopping the CNI server", cni.stop())
        if api is not None:
            await _quietly("stopping the API", api.stop(0.5))
            _quietly_sync("removing the API socket", _remove_socket, conf.api_socket, api_ino)
        if metrics is not None:
            metrics.close()
        if loading is not None:
            await loading  # a thread cannot be cancelled; the probes close below
        for probe in (view.drops, view.sessions):
            if probe is not None:
                _quietly_sync("closing a probe", probe.close)
        if hr_loading is not None:
            await hr_loading
        if hr is not None:
            # a restart stop (SIGTERM) leaves the filters: pods keep the fast path while moord is
            # away and the next moord replaces them in place; a full shutdown removes them
            restart_stop = serving and graceful_stop is not None and graceful_stop.is_set()
            _quietly_sync("closing host routing", hr.close, not restart_stop)
        if watch is not None:
            watch.stop(loop)
        if speaker is not None:
            # the kernel's learned routes are frozen from here: all kept (a restart) or all flushed
            speaker.rib_in.on_best = lambda prefix, hops: None
            if serving:
                await _quietly("stopping BGP", speaker.stop(graceful=graceful))
        if fib is not None:
            if serving and not graceful:
                _quietly_sync("removing learned routes", fib.flush)
            # a start that failed leaves the previous agent's routes forwarding, for the next one
            fib.close()
        if not serving:
            fwd.undo()
        if state_began and not serving:
            _quietly_sync("restoring the graceful-restart state", _restore_state, conf.state_file, previous_state)
        elif gr_peers and serving and not graceful:
            restart.end(conf.state_file)


def _remove_socket(path: str, ino: int) -> None:
    """The API socket goes with the agent (grpc removes it too; never a successor's socket)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode) and st.st_ino == ino:
        os.unlink(path)


async def _quietly(what: str, aw) -> None:
    try:
        await aw
    except Exception as e:
        log.warning("%s: %s", what, e)


def _quietly_sync(what: str, fn, *args) -> None:
    try:
        fn(*args)
    except Exception as e:
        log.warning("%s: %s", what, e)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="moord", description="moor's node agent")
    ap.add_argument("--config", required=True)
    ap.add_argument("-v", "--verbose", action="store_true", help="DEBUG lines too (INFO and up without it)")
    ap.add_argument("--log-format", choices=("text", "json"), default="text",
                    help="json: one JSON object per line (ts, level, logger, msg and the line's fields)")
    a = ap.parse_args(argv)
    logs.setup(sys.stderr, a.log_format, a.verbose)

    def fail(message: str) -> int:
        if a.log_format == "json":  # every line of a JSON log parses, the last one too
            log.error(message)
        else:
            print(f"moord: {message}", file=sys.stderr)
        return 2
    try:
        with open(a.config, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode()
        except UnicodeDecodeError as e:
            raise ConfigError(f"not UTF-8 text (byte {e.start})") from None
        conf = load(expand_env(text, os.environ))
    except OSError as e:
        return fail(f"{a.config}: {e.strerror or e}")
    except ConfigError as e:
        return fail(f"{a.config}: {e}")
    gr_peers = any(p.graceful_restart for p in conf.peers)

    async def _main() -> None:
        stop, graceful = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            restart_stop = sig == signal.SIGTERM and gr_peers
            log.info("shutting down on %s: %s", sig.name, "a restart stop (graceful-restart peers keep our routes, "
                     "learned routes stay in the kernel)" if restart_stop else "a full shutdown",
                     extra={"signal": sig.name, "graceful": restart_stop})
            if sig == signal.SIGTERM:
                graceful.set()
            stop.set()
        # SIGTERM (a DaemonSet update, a restart): with graceful restart configured, peers keep our
        # routes and learned routes keep forwarding until we are back. SIGINT: a full shutdown.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        await run(conf, stop, graceful)
    try:
        asyncio.run(_main())
    except StartError as e:
        return fail(str(e))
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
