"""moor's network configuration: its keys validated, every error naming its field (the generic
decoding is cni/spec/netconf.py)."""
from __future__ import annotations

import ipaddress

from .spec import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)
from .spec.record import record, field

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Any, Optional

from .netlink.wire import MACVLAN_MODES
from .spec import version
from .spec.errors import INVALID_CONFIG, UNSUPPORTED_FIELD, CNIError
from .spec.names import valid_id
from .spec.netconf import get
from .spec.result import Result

MODES = ("macvlan", "bgp")
DEVICES = ("auto", "netkit", "veth")  # routed mode's pod device (cni/routed.py)
DEFAULT_STATE_DIR = "/var/lib/moor"


@record
class HostShim:
    """`hostShim`: the node's macvlan on the parent, with one address per IP family that the
    node's packets to its pods carry as source, so pods answer on L2. `addresses` empty: the
    network's IPAM gives them (cni/shim.py)."""
    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = field(default_factory=list)


DEFAULT_GC_GRACE_S = 60.0


@record
class NetConf:
    cni_version: str
    name: str
    type: str
    mode: str = "macvlan"
    master: str = ""
    vlan: int = 0
    macvlan_mode: str = "bridge"
    mtu: int = 0
    # routed mode's pod device: "veth" (the default: moord's eBPF host routing forwards it), "auto"
    # (netkit where the kernel has it, else veth) or "netkit"
    device: str = "veth"
    mac_from_ip: bool = True
    host_shim: Optional[HostShim] = None  # None: no shim
    default_route: bool = True
    state_dir: str = DEFAULT_STATE_DIR
    agent_socket: str = "/run/moor/cni.sock"  # moord's CNI socket (cni/entry.py); "": none
    # GC leaves an attachment younger than this alone, and releases one only on a pass this long
    # after a pass first found it missing: a runtime's list may predate an ADD that just finished
    gc_grace_s: float = DEFAULT_GC_GRACE_S
    ipam: dict = field(default_factory=dict)
    dns: dict = field(default_factory=dict)
    runtime_config: dict = field(default_factory=dict)  # keys lower-cased (runtimes capitalise)
    args: dict = field(default_factory=dict)
    prev_result: Optional[Result] = None
    raw: dict = field(default_factory=dict, repr=False)  # the document as received, for IPAM

    @property
    def parent(self) -> str:
        """The link pods hang off: the master, or its VLAN sub-interface."""
        return f"{self.master}.{self.vlan}" if self.vlan else self.master

    def runtime(self, name: str, default: Any = None) -> Any:
        return self.runtime_config.get(name.lower(), default)


def _gc_grace(doc: dict, ipam: dict) -> float:
    """'gcGraceSeconds', else the IPAM section's (moor-ipam's, so both layers wait alike), else 60."""
    for where, d in (("gcGraceSeconds", doc), ("ipam.gcGraceSeconds", ipam)):
        v = d.get("gcGraceSeconds")
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            if d is ipam:
                break  # the IPAM plugin reports its own field
            raise CNIError(INVALID_CONFIG, f"invalid network config: {where!r} must be a number >= 0, "
                           f"got {json.dumps(v)}")
        return float(v)
    return DEFAULT_GC_GRACE_S


def parse(doc: dict) -> NetConf:
    ver = get(doc, "cniVersion", str, required=True)
    version.require_supported(ver)
    name = get(doc, "name", str, required=True)
    if not valid_id(name):  # as libcni validates network names
        raise CNIError(INVALID_CONFIG, f"invalid network config: 'name' {name!r} is not a valid network name")
    conf = NetConf(cni_version=ver, name=name, type=get(doc, "type", str, required=True), raw=doc)
    conf.mode = get(doc, "mode", str, "macvlan")
    if conf.mode not in MODES:
        raise CNIError(UNSUPPORTED_FIELD, f"unsupported field 'mode': {conf.mode!r}",
                       f"modes: {', '.join(MODES)}")
    conf.master = get(doc, "master", str, "", required=conf.mode == "macvlan")
    if conf.mode == "macvlan" and not 0 < len(conf.master) <= 15:
        raise CNIError(INVALID_CONFIG, f"invalid network config: 'master' {conf.master!r} is not an interface name")
    conf.vlan = get(doc, "vlan", int, 0)
    if conf.vlan and not 1 <= conf.vlan <= 4094:
        raise CNIError(INVALID_CONFIG, f"invalid network config: 'vlan' {conf.vlan} is outside 1-4094")
    if len(conf.parent) > 15:
        raise CNIError(INVALID_CONFIG, f"invalid network config: VLAN parent {conf.parent!r} is longer than 15 bytes",
                       "use a shorter master name (an interface altname) or no 'vlan'")
    conf.macvlan_mode = get(doc, "macvlanMode", str, "bridge")
    if conf.macvlan_mode not in MACVLAN_MODES:
        raise CNIError(UNSUPPORTED_FIELD, f"unsupported field 'macvlanMode': {conf.macvlan_mode!r}",
                       f"modes: {', '.join(MACVLAN_MODES)}")
    conf.mtu = get(doc, "mtu", int, 0)
    if conf.mtu and not 68 <= conf.mtu <= 65535:
        raise CNIError(INVALID_CONFIG, f"invalid network config: 'mtu' {conf.mtu} is outside 68-65535")
    conf.device = get(doc, "device", str, "veth")
    if conf.device not in DEVICES:
        raise CNIError(UNSUPPORTED_FIELD, f"unsupported field 'device': {conf.device!r}", f"devices: {', '.join(DEVICES)}")
    conf.mac_from_ip = get(doc, "macFromIP", bool, True)
    conf.host_shim = _host_shim(doc)
    conf.default_route = get(doc, "defaultRoute", bool, True)
    conf.state_dir = get(doc, "stateDir", str, DEFAULT_STATE_DIR)
    if not conf.state_dir.startswith("/"):
        # a relative directory would follow the runtime's working directory: DEL from another
        # one would find nothing to undo
        raise CNIError(INVALID_CONFIG, f"invalid network config: 'stateDir' {conf.state_dir!r} is not an absolute path")
    conf.agent_socket = get(doc, "agentSocket", str, conf.agent_socket)
    if conf.agent_socket and not conf.agent_socket.startswith("/"):
        raise CNIError(INVALID_CONFIG, f"invalid network config: 'agentSocket' {conf.agent_socket!r} is not an "
                       "absolute path (\"\" turns the agent off)")
    conf.ipam = get(doc, "ipam", dict, {})
    conf.gc_grace_s = _gc_grace(doc, conf.ipam)
    if doc.get("ipam") is not None:
        t = get(conf.ipam, "type", str, required=True)
        if not t or "/" in t:
            raise CNIError(INVALID_CONFIG, f"invalid network config: 'ipam.type' {t!r} is not a plugin name")
    conf.dns = get(doc, "dns", dict, {})
    conf.runtime_config = {str(k).lower(): v for k, v in get(doc, "runtimeConfig", dict, {}).items()}
    conf.args = get(doc, "args", dict, {})
    prev = doc.get("prevResult")
    if prev is not None:
        conf.prev_result = Result.parse(prev, "prevResult")
    return conf


def _host_shim(doc: dict) -> Optional[HostShim]:
    """`hostShim`: true (addresses from the IPAM), false, or {"addresses": ["192.0.2.254/24"]}."""
    val = get(doc, "hostShim", (bool, dict), False)
    if val is True:
        return HostShim()
    if val is False:
        return None
    unknown = sorted(set(val) - {"addresses"})
    if unknown:
        raise CNIError(INVALID_CONFIG, f"invalid network config: unknown key 'hostShim.{unknown[0]}'",
                       "hostShim is true, false or {\"addresses\": [CIDR, ...]}")
    if "addresses" not in val:
        return HostShim()
    lst = val["addresses"]
    if not isinstance(lst, list) or not lst:
        raise CNIError(INVALID_CONFIG, "invalid network config: 'hostShim.addresses' must be a non-empty list "
                       f"of CIDRs, got {json.dumps(lst)[:80]}", "omit it to take the addresses from the IPAM")
    shim = HostShim()
    for i, a in enumerate(lst):
        field_name = f"'hostShim.addresses[{i}]'"
        try:
            if not isinstance(a, str) or "/" not in a:
                raise ValueError
            iface = ipaddress.ip_interface(a)
        except ValueError:
            raise CNIError(INVALID_CONFIG, f"invalid network config: {field_name} {json.dumps(a)[:80]} is not an "
                           "address in CIDR form (192.0.2.254/24)") from None
        ip, net = iface.ip, iface.network
        # the subnet's own address (and IPv4's broadcast) is no host's; /31, /32, /127, /128 have no such
        edges = [] if net.prefixlen >= net.max_prefixlen - 1 else [net.network_address] + (
            [net.broadcast_address] if iface.version == 4 else [])
        if ip in edges or ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
            raise CNIError(INVALID_CONFIG, f"invalid network config: {field_name} {a} is not a unicast host "
                           "address of its subnet")
        if any(b.version == iface.version for b in shim.addresses):
            raise CNIError(INVALID_CONFIG, f"invalid network config: {field_name} {a} is a second IPv"
                           f"{iface.version} address", "the shim takes one address per IP family")
        shim.addresses.append(iface)
    return shim
