"""The CNI Result: parsed from any supported version, written in the version asked for."""
from __future__ import annotations

import ipaddress
from .record import record, field

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Any, Optional

from .errors import DECODE, CNIError
from .version import key


@record
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int = 0  # 1.1.0 only


@record
class IPConfig:
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = None
    interface: Optional[int] = None

    @property
    def version(self) -> int:
        return self.address.version


@record
class RouteConfig:
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    gw: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = None
    extra: dict = field(default_factory=dict)  # 1.1.0 keys (mtu, advmss, priority, table, scope)


@record
class Result:
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[RouteConfig] = field(default_factory=list)
    dns: dict = field(default_factory=dict)

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, doc: Any, what: str = "result") -> "Result":
        """Parse a result of any version (0.3.x keeps a per-IP "version"; 1.x drops it)."""
        if not isinstance(doc, dict):
            raise CNIError(DECODE, f"{what} is not a JSON object")
        try:
            res = cls(dns=dict(doc.get("dns") or {}))
            for i in doc.get("interfaces") or []:
                res.interfaces.append(Interface(name=str(i["name"]), mac=str(i.get("mac", "")),
                                                sandbox=str(i.get("sandbox", "")), mtu=int(i.get("mtu", 0))))
            for ip in doc.get("ips") or []:
                gw = ipaddress.ip_address(ip["gateway"]) if ip.get("gateway") else None
                idx = ip.get("interface")
                res.ips.append(IPConfig(address=ipaddress.ip_interface(ip["address"]), gateway=gw,
                                        interface=int(idx) if idx is not None else None))
            for r in doc.get("routes") or []:
                extra = {k: v for k, v in r.items() if k not in ("dst", "gw")}
                res.routes.append(RouteConfig(dst=ipaddress.ip_network(r["dst"], strict=False),
                                              gw=ipaddress.ip_address(r["gw"]) if r.get("gw") else None,
                                              extra=extra))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CNIError(DECODE, f"cannot decode {what}: {e}") from e
        return res

    # -- writing ---------------------------------------------------------------------------
    def to_dict(self, version: str) -> dict:
        v = key(version)
        doc: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            ifs = []
            for i in self.interfaces:
                d: dict[str, Any] = {"name": i.name}
                if i.mac:
                    d["mac"] = i.mac
                if i.mtu and v >= (1, 1, 0):
                    d["mtu"] = i.mtu
                if i.sandbox:
                    d["sandbox"] = i.sandbox
                ifs.append(d)
            doc["interfaces"] = ifs
        ips = []
        for ip in self.ips:
            d = {}
            if v < (1, 0, 0):
                d["version"] = str(ip.version)
            d["address"] = str(ip.address)
            if ip.gateway is not None:
                d["gateway"] = str(ip.gateway)
            if ip.interface is not None:
                d["interface"] = ip.interface
            ips.append(d)
        if ips or v < (1, 0, 0):
            doc["ips"] = ips
        if self.routes:
            rs = []
            for r in self.routes:
                d = {"dst": str(r.dst)}
                if r.gw is not None:
                    d["gw"] = str(r.gw)
                if v >= (1, 1, 0):
                    d.update(r.extra)
                rs.append(d)
            doc["routes"] = rs
        if self.dns:
            doc["dns"] = self.dns
        return doc
