"""Who a pod is, for stickiness, and which IPs it asks for.

- pod identity `pod:<ns>/<name>`: pods with stable names (StatefulSets, pods updated in place);
- workload identity `workload:<ns>/<key>`: pods whose names change (Deployment/ReplicaSet,
  DaemonSet, Job); the key is the annotation `moor.io/workload`, else the owner's name derived from
  the pod-name pattern: `<deployment>-<rs hash>-<5 chars>` or `<owner>-<5 chars>`; a name ending in
  `-<ordinal>` is a StatefulSet pod and keeps its own pod identity.
Explicit IPs come from runtimeConfig `ips`, `args.cni.ips`, `IP=` in CNI_ARGS, or the pod
annotation `moor.io/ips` (with the `io.kubernetes.cri.pod-annotations` capability, containerd
passes every annotation in runtimeConfig).
"""
from __future__ import annotations

import ipaddress
from cni.spec import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)
from cni.spec.record import record, field

from cni.spec.errors import INVALID_CONFIG, INVALID_ENV, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping

ANNOTATIONS_CAP = "io.kubernetes.cri.pod-annotations"
ANN_IPS = "moor.io/ips"
ANN_WORKLOAD = "moor.io/workload"

# the characters of Kubernetes' generated name suffixes (no vowels, no 0 1 3): plain string checks,
# since `re` would cost the plugin ~7 ms of start-up
_SUFFIX = frozenset("bcdfghjklmnpqrstvwxz2456789")


def _suffix(s: str, lo: int, hi: int) -> bool:
    return lo <= len(s) <= hi and all(c in _SUFFIX for c in s)


@record
class Identity:
    namespace: str = ""
    name: str = ""
    uid: str = ""
    key: str = ""  # the sticky key, "" when not sticky
    explicit: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = field(default_factory=list)

    @property
    def pod(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else ""


def workload_of(name: str) -> str:
    """The owner's name from a generated pod name; the name itself when it is not generated."""
    # generated names first: a random suffix may be all digits (web-7d4b9c8f6-24567)
    if "\n" in name:
        return name
    parts = name.rsplit("-", 2)
    # a Deployment's pod: OWNER-<replicaset hash, 6-10>-<5>
    if len(parts) == 3 and parts[0] and _suffix(parts[1], 6, 10) and _suffix(parts[2], 5, 5):
        return parts[0]
    head, _, tail = name.rpartition("-")
    if head and tail.isdecimal():
        return ""  # StatefulSet pod (OWNER-<ordinal>): its own name is stable, use the pod identity
    # a generated name (DaemonSet, Job, ...): OWNER-<5>
    return head if head and _suffix(tail, 5, 5) else name


def _ips(value, what: str, code: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise CNIError(code, f"invalid {what}: {value!r} is not a JSON list") from None
        else:
            value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise CNIError(code, f"invalid {what}: expected a list of IPs, got {value!r}")
    out = []
    for v in value:
        try:
            # runtimes send either 192.0.2.5 or 192.0.2.5/24 (the ips capability carries a prefix)
            out.append(ipaddress.ip_interface(str(v).strip()).ip)
        except ValueError:
            raise CNIError(code, f"invalid {what}: {v!r} is not an IP address") from None
    return out


def identify(args: Mapping[str, str], netconf: dict, sticky: str) -> Identity:
    ident = Identity(namespace=args.get("K8S_POD_NAMESPACE", ""), name=args.get("K8S_POD_NAME", ""),
                     uid=args.get("K8S_POD_UID", ""))
    rc_doc = netconf.get("runtimeConfig") or {}
    if not isinstance(rc_doc, dict):
        raise CNIError(INVALID_CONFIG, "invalid network config: 'runtimeConfig' must be an object")
    rc = {str(k).lower(): v for k, v in rc_doc.items()}
    annotations = rc.get(ANNOTATIONS_CAP) or {}
    if not isinstance(annotations, dict):
        annotations = {}
    # explicit IPs, first source wins
    if rc.get("ips"):
        ident.explicit = _ips(rc["ips"], "runtimeConfig.ips", INVALID_CONFIG)
    elif isinstance(netconf.get("args"), dict) and isinstance(netconf["args"].get("cni"), dict) \
            and netconf["args"]["cni"].get("ips"):
        ident.explicit = _ips(netconf["args"]["cni"]["ips"], "args.cni.ips", INVALID_CONFIG)
    elif args.get("IP"):
        ident.explicit = _ips(args["IP"], "CNI_ARGS IP", INVALID_ENV)
    elif annotations.get(ANN_IPS):
        ident.explicit = _ips(annotations[ANN_IPS], f"annotation {ANN_IPS}", INVALID_CONFIG)
    if len({ip.version for ip in ident.explicit}) != len(ident.explicit):
        raise CNIError(INVALID_CONFIG, "invalid explicit IPs: at most one address of each family",
                       ", ".join(map(str, ident.explicit)))
    if sticky == "none" or not ident.name:
        return ident
    ns = ident.namespace
    if sticky == "workload":
        owner = str(annotations.get(ANN_WORKLOAD) or workload_of(ident.name))
        ident.key = f"workload:{ns}/{owner}" if owner else f"pod:{ns}/{ident.name}"
    else:
        ident.key = f"pod:{ns}/{ident.name}"
    return ident
