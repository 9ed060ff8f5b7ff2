"""netdiag status: what netdiag can see before anyone trusts the doctor — the agent (reachable,
healthy, which probes are loaded and why not, its BGP sessions), the IPAM store, the versions of
moor, the kernel and bcc."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import Any

from .evidence import Source


def versions() -> dict[str, str]:
    out = {}
    try:
        from importlib.metadata import version
        out["moor"] = version("moor")
    except Exception:  # not installed as a distribution (a checkout on sys.path)
        out["moor"] = "unknown (not installed as a package)"
    out["kernel"] = platform.release()
    out["python"] = sys.version.split()[0]
    try:
        import bcc  # noqa: F401 - only to tell whether the probe could load here
        out["bcc"] = getattr(bcc, "__version__", "installed")
    except Exception as e:
        out["bcc"] = f"not usable: {e.__class__.__name__}"
    out["btf"] = "present" if os.path.exists("/sys/kernel/btf/vmlinux") else "missing (/sys/kernel/btf/vmlinux)"
    return out


def _agent(a: argparse.Namespace, src: Source) -> dict[str, Any]:
    doc: dict[str, Any] = {"socket": a.agent_socket, "reachable": False, "error": "", "ok": False,
                           "components": [], "peers": [], "started": 0.0, "restarted": False}
    agent = getattr(src, "agent", None)
    if agent is None:  # make_source fell back to the kernel: say why
        if not os.path.exists(a.agent_socket):
            doc["error"] = f"{a.agent_socket} does not exist (is moord running? --agent-socket)"
        else:
            doc["error"] = f"{a.agent_socket} exists but moord does not answer"
        return doc
    try:
        h = agent.client.health()
        peers = agent.client.call("BgpPeers").peers
    except Exception as e:  # it went away between the two calls
        doc["error"] = str(e)
        return doc
    doc.update(reachable=True, ok=bool(h.ok), started=h.started, restarted=bool(h.restarted),
               version=getattr(h, "version", ""),
               components=[{"name": c.name, "ok": bool(c.ok), "detail": c.detail} for c in h.components],
               peers=[{"address": p.address, "asn": p.asn, "state": p.state, "since": p.since,
                       "received": p.received, "stale": p.stale, "graceful_restart": bool(p.graceful_restart)}
                      for p in peers])
    return doc


def status(a: argparse.Namespace, src: Source) -> dict[str, Any]:
    doc: dict[str, Any] = {"command": "status", "versions": versions(), "agent": _agent(a, src)}
    ipam = src.ipam()
    doc["ipam"] = {"where": ipam.where, "error": ipam.error, "reservations": len(ipam.reservations),
                   "active": sum(r.state == "active" for r in ipam.reservations),
                   "corrupt": sum(r.state == "corrupt" for r in ipam.reservations)}
    comps = {c["name"]: c for c in doc["agent"]["components"]}
    sees = ["kernel counters per namespace: /proc/net/snmp, qdiscs, links, sockets (sock_diag), softnet, "
            "conntrack (read by netdiag itself)"]
    cannot = []
    drops, sessions = comps.get("probe.drops"), comps.get("probe.sessions")
    if drops and drops["ok"]:
        sees.append("per-flow drops with the kernel's reasons, fragment bytes, receive-buffer overflows per socket "
                    "(moord's drop probe)")
    else:
        cannot.append("per-flow drops, their reasons and fragment bytes: " +
                      (f"moord's drop probe is not loaded ({drops['detail']})" if drops else "needs moord's probe"))
    if sessions and sessions["ok"]:
        sees.append("sessions per pod and VPC session pressure (moord's session probe)")
    else:
        cannot.append("sessions and VPC session pressure: " +
                      (f"moord's session probe is not loaded ({sessions['detail']})" if sessions
                       else "needs moord's probe"))
    if not doc["agent"]["reachable"]:
        cannot.append("BGP sessions and routes as moord sees them")
    doc["sees"], doc["cannot"] = sees, cannot
    return doc
