"""MAC addresses: validation, and the MAC a fixed IP keeps (derived from the IP)."""
from __future__ import annotations

import ipaddress

from .spec.errors import CNIError
from .spec.names import valid_mac

def parse(mac: str, field: str, code: int) -> str:
    if not isinstance(mac, str) or not valid_mac(mac):
        raise CNIError(code, f"invalid {field}: {mac!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
    mac = mac.lower()
    if int(mac[:2], 16) & 1:
        raise CNIError(code, f"invalid {field}: {mac} is a multicast address")
    if mac == "00:00:00:00:00:00":
        raise CNIError(code, f"invalid {field}: the all-zero MAC")
    return mac


def from_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Locally administered unicast MAC from the IP's last four bytes: 0a:58 for IPv4 (the
    convention OVN-Kubernetes uses), 0a:59 for IPv6; a re-created pod keeps its IP *and* MAC."""
    tail = ip.packed[-4:]
    prefix = "0a:58" if ip.version == 4 else "0a:59"
    return prefix + "".join(f":{b:02x}" for b in tail)
