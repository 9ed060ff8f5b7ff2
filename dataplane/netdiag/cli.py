"""netdiag: where and why packets are dropped on this node.

    netdiag doctor                  ranked findings: cause, evidence with numbers, remedy
    netdiag drops                   every drop counter: UDP/IP per netns, qdiscs, links, CPU backlog
    netdiag udp                     UDP sockets: receive buffer, queued bytes, drops, process
    netdiag sessions                VPC session pressure (probe), long-lived sessions, conntrack
    netdiag bgp                     BGP peers and routes (agent); moor's routes in the kernel
    netdiag ipam                    IP reservations (the IPAM database, read-only)
    netdiag pod NAMESPACE/NAME      one pod: IPs, netns, interfaces, routes, neighbours, counters, and
                                    the doctor's findings about it
    netdiag status                  what netdiag can see: the agent, its probes and BGP sessions, the
                                    IPAM store, versions

Options (before or after the command): --json (a document for scripts), --watch [SECONDS] (redraw
until Ctrl-C), --interval SECONDS (sample twice: rates), --netns NAME (repeatable: "host", a name
in /run/netns or a path; default: this netns, every named netns and every pod netns of the CNI
records), --cni-state-dir, --ipam-dir, --ipam-config, --source auto|kernel|agent.
ipam also takes --node NAME (only that node's reservations; the store is read a page at a time).
doctor also takes --pod NAMESPACE/NAME (its namespaces, like --netns) and --since DURATION (only
drops the probe saw within it: 90, 90s, 5m, 2h). With --netns or --pod, findings about those
namespaces rank first; the rest are listed after them, marked "elsewhere".

With the agent (moord) running, per-flow drops, drop reasons, fragments and sessions come from its
eBPF probe; without it netdiag reads the kernel's counters and says what it cannot see.
Exit status: 0, or 2 for a bad argument, an unknown pod or namespace, or an unreachable agent.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Optional

from .evidence import Evidence, Source, gather
from .kernel import DEFAULT_CNI_STATE_DIR, DEFAULT_IPAM_DIR, KernelSource, NotFound

DEFAULT_AGENT_SOCKET = "/run/moor/moord.sock"  # moord's api.socket default
COMMANDS = ("drops", "udp", "sessions", "bgp", "ipam", "pod", "doctor", "status")


class UsageError(Exception):
    """A bad argument or a name that does not exist: exit status 2."""


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return v


def _nonneg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return v


def _duration(text: str) -> float:
    """90, 90s, 5m, 2h, 1d: seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    mult = units.get(t[-1:], None)
    try:
        v = float(t[:-1] if mult else t) * (mult or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (90, 90s, 5m, 2h)") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return v


def _node_ok(text: str) -> bool:
    """A node name as moor-ipam records it (a Kubernetes node name or a host name)."""
    return 0 < len(text) <= 253 and text[0].isalnum() and text[-1].isalnum() and \
        all(c.isascii() and (c.isalnum() or c in "-._") for c in text)


def _common(p: argparse.ArgumentParser, top: bool) -> None:
    """The shared options, on the main parser (real defaults) and on each command (SUPPRESS, so
    an option given before the command is not reset by the command's parser)."""
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", default=d(False), help="a JSON document instead of tables")
    p.add_argument("--watch", nargs="?", type=_positive, const=2.0, default=d(None), metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl-C; with --json one document per line")
    p.add_argument("--interval", type=_nonneg, default=d(None), metavar="SECONDS",
                   help="sample twice, SECONDS apart, to show rates (doctor: 1, others: 0)")
    p.add_argument("--netns", action="append", default=d(None), metavar="NAME",
                   help="a namespace to read: 'host', a name in /run/netns, or a path (repeatable)")
    p.add_argument("--cni-state-dir", default=d(DEFAULT_CNI_STATE_DIR), metavar="DIR",
                   help=f"the CNI plugin's stateDir (default {DEFAULT_CNI_STATE_DIR})")
    p.add_argument("--ipam-dir", default=d(DEFAULT_IPAM_DIR), metavar="DIR",
                   help=f"moor-ipam's dataDir (default {DEFAULT_IPAM_DIR})")
    p.add_argument("--ipam-config", default=d(None), metavar="FILE",
                   help="a network config using moor-ipam: its store (etcd too) and pools")
    p.add_argument("--source", choices=("auto", "kernel", "agent"), default=d("auto"),
                   help="auto: the agent when it answers, else the kernel")
    p.add_argument("--agent-socket", default=d(DEFAULT_AGENT_SOCKET), metavar="PATH",
                   help=f"moord's API socket (default {DEFAULT_AGENT_SOCKET})")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"netdiag: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="netdiag", description="Where and why packets are dropped on this node.",
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="Run `netdiag COMMAND --help` for a command's options.")
    _common(ap, True)
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    helps = {"drops": "every drop counter per netns, qdisc, link and CPU",
             "udp": "UDP sockets: receive buffers, queues, drops",
             "sessions": "VPC session pressure and long-lived sessions; conntrack",
             "bgp": "BGP peers and routes; moor's routes in the kernel",
             "ipam": "IP reservations", "pod": "everything about one pod",
             "doctor": "ranked findings: cause, evidence, remedy",
             "status": "what netdiag can see: the agent, its probes and sessions, the IPAM store, versions"}
    for name in COMMANDS:
        p = sub.add_parser(name, help=helps[name], description=helps[name])
        _common(p, False)
        if name == "pod":
            p.add_argument("pod", metavar="NAMESPACE/NAME")
        if name == "doctor":
            p.add_argument("--all", action="store_true", help="every finding (default: the top 10)")
            p.add_argument("--pod", metavar="NAMESPACE/NAME", help="the pod's namespaces, as with --netns")
        if name in ("doctor", "pod"):
            p.add_argument("--since", type=_duration, metavar="DURATION",
                           help="only drops the probe saw within DURATION (90, 90s, 5m, 2h)")
        if name == "ipam":
            p.add_argument("--node", metavar="NAME",
                           help="only this node's reservations (the name moor-ipam records: nodeName or NODE_NAME)")
        if name == "udp":
            p.add_argument("--all", action="store_true", help="every UDP socket, connected ones without drops too")
    return ap


# ---------------------------------------------------------------------------------------------
# sources


class CombinedSource:
    """The agent for what only its probe and speaker see, the kernel for counters and pods; a
    call the agent fails falls back to the kernel and says so."""

    name = "agent+kernel"

    def __init__(self, agent: Any, kernel: KernelSource):
        self.agent, self.kernel = agent, kernel
        self.notes: list[str] = []

    def _ask(self, method: str, fallback: Callable[..., Any], *args: Any) -> Any:
        try:
            return getattr(self.agent, method)(*args)
        except Exception as e:  # the agent went away mid-run: keep diagnosing from the kernel
            self.notes.append(f"the agent failed {method}: {e}; showing the kernel's view")
            return fallback(*args)

    def counters(self):
        return self.kernel.counters()

    def drops(self) -> list:
        return self._ask("drops", self.kernel.drops)

    def rcvbuf(self) -> list:
        return self._ask("rcvbuf", self.kernel.rcvbuf) or self.kernel.rcvbuf()

    def sessions(self) -> list:
        return self._ask("sessions", self.kernel.sessions)

    def pressure(self) -> Any:
        return self._ask("pressure", self.kernel.pressure)

    def bgp(self):
        view = self._ask("bgp", self.kernel.bgp)
        if not view.kernel_routes:
            view.kernel_routes = self.kernel.bgp().kernel_routes
        return view

    def ipam(self, node: str = ""):
        return self._ask("ipam", self.kernel.ipam, node) if hasattr(self.agent, "ipam") else self.kernel.ipam(node)

    def pod(self, namespace: str, name: str):
        return self.kernel.pod(namespace, name)

    def unavailable(self) -> list[str]:
        try:
            own = list(self.agent.unavailable())
        except Exception as e:
            own = [f"the agent: {e}"]
        return own + self.notes


def _agent_class() -> Optional[type]:
    """AgentSource (the gRPC client side of the Source protocol), wherever it is installed."""
    for mod in ("dataplane.netdiag.agent", "dataplane.api.client"):
        try:
            m = __import__(mod, fromlist=["AgentSource"])
        except ImportError:
            continue
        cls = getattr(m, "AgentSource", None)
        if cls is not None:
            return cls
    return None


def make_source(a: argparse.Namespace) -> Source:
    kernel = KernelSource(netns=a.netns, cni_state_dir=a.cni_state_dir, ipam_dir=a.ipam_dir,
                          ipam_config=a.ipam_config)
    if a.source == "kernel":
        return kernel
    why = ""
    cls = _agent_class() if os.path.exists(a.agent_socket) else None
    if not os.path.exists(a.agent_socket):
        why = f"moord's API socket {a.agent_socket} does not exist (is moord running?)"
    elif cls is None:
        why = "netdiag's agent client (AgentSource) is not installed"
    else:
        try:
            return CombinedSource(cls(a.agent_socket), kernel)
        except Exception as e:
            why = f"cannot reach moord at {a.agent_socket}: {e}"
    if a.source == "agent":
        raise UsageError(why)
    return kernel


# ---------------------------------------------------------------------------------------------
# commands


def _evidence(src: Source, a: argparse.Namespace, previous: Optional[Evidence], interval: float) -> Evidence:
    scoped = bool(a.netns)
    since = getattr(a, "since", None)
    if previous is None and interval > 0:
        previous = gather(src, scoped=scoped, since=since)
        time.sleep(interval)
    return gather(src, previous, scoped=scoped, since=since)


def _pod_netns(a: argparse.Namespace, key: str) -> list[str]:
    """The netns paths of a pod's attachments on this node (NotFound when it has none here)."""
    kernel = KernelSource(netns=None, cni_state_dir=a.cni_state_dir, ipam_dir=a.ipam_dir, ipam_config=a.ipam_config)
    ns, _, name = key.partition("/")
    view = kernel.pod(ns, name)
    paths = sorted({att.netns for att in view.attachments if att.netns and os.path.exists(att.netns)})
    if not paths:
        raise NotFound(f"pod {key} has no network namespace on this node" +
                       (f" ({'; '.join(view.notes)})" if view.notes else ""))
    return paths


def _render(a: argparse.Namespace, src: Source, previous: Optional[Evidence]) -> tuple[str, Optional[Evidence]]:
    """One frame of the command's output, and the evidence to compute the next frame's rates."""
    from . import render as r
    cmd = a.cmd
    if cmd == "status":
        from .status import status
        doc = status(a, src)
        return (r.to_json(doc) if a.json else r.status_text(doc)), None
    if cmd in ("bgp", "ipam", "pod"):
        if cmd == "bgp":
            view: Any = src.bgp()
            return (r.to_json({"command": "bgp", "source": src.name, **r._jsonable(view)}) if a.json
                    else r.bgp_text(view, src.name)), None
        if cmd == "ipam":
            node = getattr(a, "node", None)
            view = src.ipam(node) if node else src.ipam()
            return (r.to_json({"command": "ipam", "source": src.name, **r._jsonable(view)}) if a.json
                    else r.ipam_text(view, src.name)), None
        ns, _, name = a.pod.partition("/")
        view = src.pod(ns, name)
        findings: list = []
        if a.pod_netns:  # the doctor, scoped to the pod: what drops there and why
            from .doctor import diagnose
            ev = _evidence(src, a, None, a.interval or 0.0)
            findings = [f for f in diagnose(ev) if not f.elsewhere and f.cause != "noise"]
        if a.json:
            return r.to_json({"command": "pod", "source": src.name, **r._jsonable(view),
                              "findings": [r._jsonable(f) for f in findings]}), None
        return r.pod_text(view, src.name, findings), None
    interval = a.interval if a.interval is not None else (1.0 if cmd == "doctor" and not a.watch else 0.0)
    ev = _evidence(src, a, previous, interval)
    if cmd == "drops":
        return (r.to_json(r.drops_doc(ev, src.name)) if a.json else r.drops_text(ev, src.name, a.watch)), ev
    if cmd == "udp":
        return (r.to_json(r.udp_doc(ev, src.name)) if a.json
                else r.udp_text(ev, src.name, a.watch, getattr(a, "all", False))), ev
    if cmd == "sessions":
        return (r.to_json(r.sessions_doc(ev, src.name)) if a.json else r.sessions_text(ev, src.name, a.watch)), ev
    from .doctor import diagnose
    findings = diagnose(ev)
    if a.json:
        return r.to_json(r.doctor_doc(findings, ev, src.name)), ev
    return r.doctor_text(findings, ev, src.name, a.watch, 0 if getattr(a, "all", False) else 10), ev


def _check(a: argparse.Namespace) -> None:
    a.pod_netns = []
    pod = getattr(a, "pod", None)
    if pod is not None:
        ns, sep, name = pod.partition("/")
        if not sep or not ns or not name or "/" in name:
            raise UsageError(f"pod {pod!r} must be NAMESPACE/NAME")
        if a.netns and a.cmd == "doctor":
            raise UsageError("--pod and --netns choose the namespaces two ways: give one of them")
    for d, flag in ((a.cni_state_dir, "--cni-state-dir"), (a.ipam_dir, "--ipam-dir")):
        if d and os.path.exists(d) and not os.path.isdir(d):
            raise UsageError(f"{flag} {d!r} is not a directory")
    node = getattr(a, "node", None)
    if node is not None and not _node_ok(node):
        raise UsageError(f"--node {node!r} is not a node name (letters, digits, '-', '.', '_'; at most 253, "
                         f"starting and ending with a letter or digit)")
    if a.ipam_config and not os.path.isfile(a.ipam_config):
        raise UsageError(f"--ipam-config {a.ipam_config!r} does not exist")


def main(argv: Optional[list[str]] = None) -> int:
    a = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        _check(a)
        pod = getattr(a, "pod", None)
        if pod is not None:
            try:
                a.pod_netns = _pod_netns(a, pod)
            except NotFound:
                if a.cmd == "doctor":
                    raise
            if a.pod_netns:
                a.netns = a.pod_netns  # the doctor (and the pod's findings) read just these
        src = make_source(a)
        if not a.watch:
            text, _ = _render(a, src, None)
            print(text)
            return 0
        previous: Optional[Evidence] = None
        while True:
            text, previous = _render(a, src, previous)
            if a.json:
                print(_compact(text), flush=True)
            else:
                sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
                sys.stdout.flush()
            time.sleep(a.watch)
    except KeyboardInterrupt:
        return 0
    except (UsageError, NotFound) as e:
        print(f"netdiag: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"netdiag: {e} (netdiag reads other namespaces and netlink: run it as root)", file=sys.stderr)
        return 1
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


def _compact(text: str) -> str:
    """A pretty JSON document as one line (NDJSON under --watch)."""
    import json
    return json.dumps(json.loads(text), separators=(",", ":"))
