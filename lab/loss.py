"""The UDP loss cases of the design notes, reproduced on demand: what every case shares.

Every case (lab/cases/, `python -m lab list`) runs the same story in fresh namespaces:

    1. a busy background for the whole case (Background): another namespace sends UDP to a closed
       port at ~200 datagrams/s, and a loop creates and deletes namespaces and links (their IPv6
       MLD reports, router and neighbour solicitations are the noise every node has);
    2. moord with its eBPF probe (Agent), API on a private socket, no BGP peer;
    3. the case's topology, and its traffic, counted by the lab's own sender and receiver
       (lab/traffic.py): the loss before;
    4. while the loss goes on, `netdiag doctor --netns <the case's namespaces>` twice: through the
       agent's probe (--source agent) and through the kernel's counters (--source kernel); what
       each ranks first, and what each says it cannot see;
    5. the remedy the doctor printed, applied by the lab (each case maps the doctor's cause to the
       concrete action: a bigger SO_RCVBUF, a longer queue, datagrams that fit one packet, ...);
    6. the same traffic again: the loss after.

A case passes when the loss before is above its threshold, the agent's doctor ranks the case's
cause first (about the case's namespaces, despite the background), and the loss after is below
its threshold. Checks marked "soft" say what is not there yet without failing the case.

Only the lab's simulated buggy gateways write packet-filter rules (nftables, in their own
namespaces); moor never does.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from dataplane.nslab import Lab, LabError, sh

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
TRAFFIC = str(Path(__file__).with_name("traffic.py"))
NFT = "/usr/sbin/nft"
CONNTRACK = "/usr/sbin/conntrack"
BTF = "/sys/kernel/btf/vmlinux"
GUARD = 60.0  # seconds: hang guards only, never an expectation of speed


class ProbeUnavailable(LabError):
    """moord's eBPF probe cannot run here; the message says why."""


def probe_prerequisites() -> Optional[str]:
    """Why moord's probe cannot load on this machine (None: it should)."""
    if os.geteuid() != 0:
        return "needs root to load eBPF programs"
    if importlib.util.find_spec("bcc") is None:
        return "bcc is not installed (no module named 'bcc'): the Debian package python3-bpfcc (scripts/setup.sh installs it)"
    if not os.path.exists(BTF):
        return f"{BTF} is missing: the probe reads kernel-struct offsets from the running kernel's BTF"
    return None


def tool_missing(*tools: str) -> Optional[str]:
    for t in tools:
        if not (os.path.exists(t) or shutil.which(os.path.basename(t))):
            pkg = {"nft": "nftables", "conntrack": "conntrack", "tc": "iproute2"}.get(os.path.basename(t), t)
            return f"{t} is missing (Debian package {pkg}; scripts/setup.sh installs it)"
    return None


def pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def wait(pred: Callable[[], Any], timeout: float = GUARD, every: float = 0.2) -> Any:
    """pred()'s first truthy value, or its last value after `timeout` (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)


# ---------------------------------------------------------------------------------------------
# the lab's traffic programs


class Traffic:
    """One lab/traffic.py process in a namespace, driven line by line over stdin/stdout."""

    def __init__(self, lab: Lab, ns: str, what: str, mode: str, *args: Any, log_dir: Optional[Path] = None):
        self.what = what
        self.log = (log_dir / f"{re.sub(r'[^a-z0-9-]+', '-', what.lower())}.log") if log_dir else None
        err = open(self.log, "ab") if self.log else subprocess.DEVNULL
        try:
            self.p = lab.spawn(ns, [PY, TRAFFIC, mode, *map(str, args)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=err)
        finally:
            if self.log:
                err.close()
        self.buf = b""
        self.ready = self._line()
        if not self.ready.get("ready"):
            raise LabError(f"{what} did not start: {self.ready}")

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-400:].strip() if self.log else ""
        except OSError:
            return ""

    def _line(self, timeout: float = 20.0) -> dict:
        fd = self.p.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabError(f"{self.what} did not answer within {timeout:.0f} s")
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise LabError(f"{self.what} exited (status {self.p.wait(5)}): {self._tail() or 'no output'}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        try:
            self.p.stdin.write(cmd.encode() + b"\n")
            self.p.stdin.flush()
        except (BrokenPipeError, ValueError) as e:
            raise LabError(f"{self.what} is gone ({e}): {self._tail()}") from None
        return self._line()

    def stats(self) -> dict:
        return self.ask("stats")

    def stop(self) -> dict:
        """Its final counters; the process ends."""
        try:
            doc = self.ask("quit")
        except LabError:
            doc = {}
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        for f in (self.p.stdin, self.p.stdout):
            try:
                f.close()
            except OSError:
                pass
        return doc

    @property
    def alive(self) -> bool:
        return self.p.poll() is None


# ---------------------------------------------------------------------------------------------
# the busy background


class Background:
    """What a busy node always has, running for the whole case in namespaces of its own:
    UDP to a closed port at `rate` datagrams/s (no-listener drops elsewhere), and namespaces
    and veth links created and deleted in a loop (IPv6 MLD reports, router and neighbour
    solicitations: the ICMPv6 noise a node sees whenever a pod comes or goes)."""

    def __init__(self, lab: Lab, tmp: Path, rate: int = 200):
        self.lab, self.tmp, self.rate = lab, tmp, rate
        self.sender: Optional[Traffic] = None
        self.stop_ev = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.churned = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def start(self) -> "Background":
        lab = self.lab
        self.tx, self.rx = lab.ns("bg-tx"), lab.ns("bg-rx")
        lab.veth(self.tx, "bg-tx0", self.rx, "bg-rx0")
        lab.addr(self.tx, "bg-tx0", "203.0.113.201/24")
        lab.addr(self.rx, "bg-rx0", "203.0.113.202/24")
        self.sender = Traffic(lab, self.tx, "background sender", "send", "--dst", "203.0.113.202", "--port", 9,
                              "--rate", self.rate, "--burst", 4, "--size", 64, log_dir=self.tmp)
        self.thread = threading.Thread(target=self._churn, name="lab-background-churn", daemon=True)
        self.thread.start()
        return self

    def _churn(self) -> None:
        i = 0
        while not self.stop_ev.is_set():
            name = f"{self.lab.prefix}-bgc{i % 2}"
            link = f"bgc{i % 2}"
            i += 1
            with self.lock:
                if self.stop_ev.is_set():
                    return
                self.lab.namespaces.append(name)  # Lab.close() removes it if we never get to
            try:
                sh("ip", "netns", "add", name)
                sh("ip", "link", "add", link, "netns", self.rx, "type", "veth", "peer", "name", "eth0", "netns", name)
                sh("ip", "-n", self.rx, "link", "set", link, "up")
                sh("ip", "-n", name, "link", "set", "eth0", "up")
                self.stop_ev.wait(0.25)  # DAD, MLD reports and router solicitations go out meanwhile
                self.churned += 1
            except (LabError, subprocess.SubprocessError, OSError) as e:
                if len(self.errors) < 5:
                    self.errors.append(str(e))
                self.stop_ev.wait(0.5)
            finally:
                sh("ip", "netns", "del", name, check=False)
                with self.lock:
                    if name in self.lab.namespaces:
                        self.lab.namespaces.remove(name)

    def stop(self) -> dict:
        with self.lock:
            self.stop_ev.set()
        if self.thread is not None:
            self.thread.join(GUARD)
        sent = self.sender.stop() if self.sender is not None else {}
        return {"sent": sent.get("sent", 0), "churned": self.churned}

    def describe(self) -> str:
        return (f"busy background: {self.tx} sends UDP to a closed port in {self.rx} at {self.rate}/s; namespaces and "
                f"veth links created and deleted in a loop (MLD/ND noise)")


# ---------------------------------------------------------------------------------------------
# moord with its probe


class Agent:
    """moord in its own namespace of the lab: probe on, API on a private socket, no metrics, no
    BGP peer. Spawned first (bcc compiles its programs meanwhile), waited for before traffic."""

    def __init__(self, lab: Lab, tmp: Path, **probe: Any):
        self.lab, self.tmp = lab, tmp
        self.sock = tmp / "moord.sock"
        self.log = tmp / "moord.log"
        self.conf = {"bgp": {"asn": 65001, "routerId": "192.0.2.250"}, "api": {"socket": str(self.sock)}, "cni": {"socket": ""},
                     "metrics": {"port": 0}, "probe": {"enabled": True, **probe}}
        self.proc: Optional[subprocess.Popen] = None
        self.t0 = 0.0

    def spawn(self) -> "Agent":
        path = self.tmp / "moord.json"
        path.write_text(json.dumps(self.conf, indent=2))
        self.t0 = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = self.lab.spawn(self.lab.ns("agent"), [PY, "-m", "dataplane.agent", "--config", str(path), "-v"],
                                       cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        return self

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-800:]
        except OSError:
            return ""

    def wait(self) -> float:
        """Seconds until both probes answered; ProbeUnavailable when the drop probe cannot load."""
        from dataplane.api.client import AgentClient
        if not wait(lambda: self.sock.exists() or self.proc.poll() is not None, 30):
            raise LabError(f"moord did not open its API socket: {self.tail()}")
        if self.proc.poll() is not None:
            raise LabError(f"moord exited with status {self.proc.returncode}: {self.tail()}")

        def loaded():
            try:
                with AgentClient(str(self.sock)) as c:
                    comps = {x.name: x for x in c.health().components}
            except Exception:
                return None
            return comps if "probe.drops" in comps and "probe.sessions" in comps else None
        comps = wait(loaded, 120, 0.3)
        if not comps:
            raise LabError(f"moord's probes did not report within 120 s: {self.tail()}")
        bad = [f"{n}: {c.detail}" for n, c in comps.items() if n in ("probe.drops", "probe.sessions") and not c.ok]
        if bad:
            raise ProbeUnavailable("moord's probe cannot load here: " + "; ".join(bad))
        return time.monotonic() - self.t0

    def describe(self) -> str:
        p = ", ".join(f"{k} {v}" for k, v in self.conf["probe"].items() if k != "enabled")
        return f"moord (probe on{', ' + p if p else ''}; API {self.sock}; no BGP peer)"


# ---------------------------------------------------------------------------------------------
# netdiag doctor


SOURCES = ("agent", "kernel")


def doctor_argv(namespaces: list[str], source: str, sock: Optional[Path]) -> list[str]:
    args = ["doctor", *[a for ns in namespaces for a in ("--netns", ns)], "--json", "--all", "--source", source]
    if source == "agent" and sock is not None:
        args += ["--agent-socket", str(sock)]
    return args


def run_doctors(namespaces: list[str], sock: Optional[Path]) -> dict[str, dict]:
    """`netdiag doctor` through the agent and through the kernel, at the same time; each
    document, or {"error": ...} when netdiag failed."""
    procs = {src: subprocess.Popen([PY, "-m", "dataplane.netdiag", *doctor_argv(namespaces, src, sock)], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for src in SOURCES}
    out = {}
    for src, p in procs.items():
        try:
            so, se = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            so, se = p.communicate()
            out[src] = {"error": "netdiag did not finish within 120 s"}
            continue
        if p.returncode != 0:
            out[src] = {"error": f"netdiag exited {p.returncode}: {(se or so).strip()[-600:]}"}
            continue
        try:
            out[src] = json.loads(so)
        except ValueError:
            out[src] = {"error": f"netdiag printed no JSON: {so[:300]!r} {se.strip()[-300:]}"}
    return out


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class Check:
    ok: bool
    text: str
    soft: bool = False


@dataclass
class CaseResult:
    name: str
    cause: str
    loss_before: Optional[float] = None
    loss_after: Optional[float] = None
    first: dict = field(default_factory=dict)  # source -> the doctor's first finding (or None)
    named_at: dict = field(default_factory=dict)  # source -> rank of the first finding of the case's cause
    named_first: Optional[bool] = None  # the agent's doctor ranks the case's cause first, about its namespaces
    namespaces: list = field(default_factory=list)
    unavailable: dict = field(default_factory=dict)  # source -> what it says it cannot see
    remedy: str = ""
    extra: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    skipped: str = ""  # why the case could not run here (the probe cannot load, a tool is missing)
    error: str = ""

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and not c.soft]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.error and not self.skipped

    def first_cause(self, source: str = "agent") -> Optional[str]:
        f = self.first.get(source)
        return f.get("cause") if f else None


# ---------------------------------------------------------------------------------------------
# the case template


class Case:
    name = ""
    cause = ""  # the doctor's cause key this case must be named by
    title = ""
    design = ""  # which fact of the design notes it reproduces
    min_before = 0.2  # loss before the remedy must be at least this
    max_after = 0.01  # and after it at most this
    probe: dict = {}  # moord's probe config beyond enabled
    tools: tuple = ()
    kernel_sees = False  # whether the kernel's counters alone can name the cause

    def __init__(self, lab: Lab, tmp: Path, opts: argparse.Namespace):
        self.lab, self.tmp, self.o = lab, tmp, opts
        self.r = CaseResult(self.name, self.cause)
        self.names: list[str] = []  # the case's namespaces: what the doctor is asked about
        self.agent: Optional[Agent] = None
        self.bg: Optional[Background] = None
        self.procs: list[Traffic] = []

    # -- options (subclasses add theirs) ------------------------------------------------------
    @classmethod
    def add_options(cls, p: argparse.ArgumentParser) -> None:
        pass

    @classmethod
    def check_options(cls, o: argparse.Namespace) -> Optional[str]:
        return None

    # -- output ----------------------------------------------------------------------------
    def say(self, ok: bool, text: str, soft: bool = False) -> bool:
        tag = "ok" if ok else ("soft" if soft else "FAIL")
        print(f"  [{tag}] {text}", flush=True)
        self.r.checks.append(Check(ok, text, soft))
        return ok

    def info(self, text: str) -> None:
        print(f"  {text}", flush=True)

    def step(self, text: str) -> None:
        print(f"\n  -- {text}", flush=True)

    # -- pieces ----------------------------------------------------------------------------
    def ns(self, role: str) -> str:
        n = self.lab.ns(role)
        self.names.append(n)
        return n

    def traffic(self, ns: str, what: str, mode: str, *args: Any) -> Traffic:
        t = Traffic(self.lab, ns, what, mode, *args, log_dir=self.tmp)
        self.procs.append(t)
        return t

    @staticmethod
    def traffic_options(p: argparse.ArgumentParser, rate: int, burst: int = 0, size: int = 0,
                        rate_help: str = "datagrams per second") -> None:
        """--rate, --burst and --size of the case's sender (when given defaults), and --seconds."""
        p.add_argument("--rate", type=int, default=rate, help=f"{rate_help} (default {rate})")
        if burst:
            p.add_argument("--burst", type=int, default=burst, help=f"datagrams per burst (default {burst})")
        if size:
            p.add_argument("--size", type=int, default=size, help=f"datagram size in bytes (default {size})")
        p.add_argument("--seconds", type=float, default=4.0, help="traffic per measurement (default 4)")

    def pair(self, role: str, tx_addr: str, rx_addr: str, tx_dev: str = "") -> tuple[str, str]:
        """A sender and a receiver namespace joined by one veth (`<role>-tx0`, `<role>-rx0`), /24s."""
        tx, rx = self.ns(f"{role}-tx"), self.ns(f"{role}-rx")
        tx_dev = tx_dev or f"{role}-tx0"
        self.lab.veth(tx, tx_dev, rx, f"{role}-rx0")
        self.lab.addr(tx, tx_dev, f"{tx_addr}/24")
        self.lab.addr(rx, f"{role}-rx0", f"{rx_addr}/24")
        return tx, rx

    def run_for(self, seconds: float, diagnose: bool, after: float = 1.0) -> Optional[dict]:
        """Let the traffic that is running go on for `seconds`, asking the doctor `after` seconds
        in (the loss is going on then); the doctor's finding for the case, or None."""
        t0 = time.monotonic()
        f = None
        if diagnose:
            time.sleep(after)
            f = self.diagnose()
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        return f

    def forwarding(self, ns: str) -> None:
        self.lab.run(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                     "net.ipv4.conf.default.rp_filter=0")

    def settle(self, recv: Traffic, key: str = "received", quiet: float = 0.4) -> dict:
        """The receiver's counters once nothing more arrives (in-flight and queued datagrams)."""
        last = recv.stats()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = recv.stats()
            if now.get(key) == last.get(key):
                return now
            last = now
        return last

    # -- the doctor ---------------------------------------------------------------------------
    def diagnose(self) -> Optional[dict]:
        """Both doctors, while the loss goes on; prints what each sees; returns the agent's
        finding to act on (its first, when it names the case's cause)."""
        sock = self.agent.sock if self.agent else None
        docs = run_doctors(self.names, sock)
        self.r.extra["doctor"] = docs
        for src in SOURCES:
            doc = docs[src]
            print(f"  $ netdiag {' '.join(doctor_argv(self.names, src, sock))}", flush=True)
            if "error" in doc:
                self.info(f"  {doc['error']}")
                self.r.first[src] = None
                continue
            fs = doc.get("findings") or []
            f = fs[0] if fs else None
            self.r.first[src] = f
            self.r.unavailable[src] = list(doc.get("unavailable") or [])
            rank = next((i for i, x in enumerate(fs, 1) if x.get("cause") == self.cause), None)
            self.r.named_at[src] = rank
            if f is None:
                self.info("  no finding")
            for i, x in enumerate(fs[:3 if src == "agent" else 2], 1):
                mark = " (elsewhere)" if x.get("elsewhere") else ""
                self.info(f"  #{i} [{x.get('cause_text', x.get('cause'))}] {x.get('title')}  "
                          f"(cause {x.get('cause')}, {x.get('where')}, severity {x.get('severity')}, "
                          f"{x.get('volume', 0):,} {x.get('unit', 'packets')}){mark}")
                if i == 1:
                    for line in (x.get("remedy") or [])[:2]:
                        self.info(f"       remedy: {line}")
            if rank and rank > 3:
                x = fs[rank - 1]
                self.info(f"  #{rank} [{x.get('cause_text')}] {x.get('title')} ({x.get('where')}) is the first "
                          f"finding of cause {self.cause}")
            for u in self.r.unavailable[src]:
                self.info(f"  cannot see: {u}")
            if not self.r.unavailable[src]:
                self.info("  cannot see: nothing it reports missing (probe and kernel counters both read)")
        f = self.r.first.get("agent")
        if f and f.get("cause") == self.cause and self.about_case(f):
            return f
        return self._of_cause(docs.get("agent", {}))

    def _of_cause(self, doc: dict) -> Optional[dict]:
        """The doctor's first finding of the case's cause about the case (or, failing that, about
        what the case made, however the doctor attributed it): the remedy to apply."""
        fs = [x for x in doc.get("findings") or [] if x.get("cause") == self.cause]
        return next((x for x in fs if self.about_case(x)), None) or next((x for x in fs if self.own_finding(x)), None)

    def own_finding(self, f: dict) -> bool:
        """Whether a finding is about what this case made, whatever the doctor attributes it to
        (cases that can tell override this: the flow's 4-tuple in the title)."""
        return False

    def about_case(self, f: dict) -> bool:
        """Whether a finding is about this case's namespaces (not the background's): it names one
        of them, or it is node-wide (a session table counts every namespace's sessions) and the
        doctor does not mark it as elsewhere."""
        if f.get("elsewhere"):
            return False
        if str(f.get("where", "")) in ("node", "host"):
            return True
        text = " ".join([str(f.get("where", "")), str(f.get("title", ""))])
        return any(n in text for n in self.names)

    def judge_doctor(self, soft: bool = False, why_soft: str = "") -> None:
        f = self.r.first.get("agent")
        doc = self.r.extra.get("doctor", {}).get("agent", {})
        if "error" in doc:
            self.say(False, f"netdiag doctor (agent) failed: {doc['error']}", soft)
            return
        ok = bool(f) and f.get("cause") == self.cause and self.about_case(f)
        self.r.named_first = ok
        if ok:
            text = (f"the doctor (agent's probe) ranks {self.cause} first, about the case's namespaces "
                    f"({f.get('where')}), despite the background")
        else:
            fs = doc.get("findings") or []
            mine = next((i for i, x in enumerate(fs, 1) if x.get("cause") == self.cause and self.about_case(x)), None)
            other = next((i for i, x in enumerate(fs, 1) if x.get("cause") == self.cause and not self.about_case(x)),
                         None)
            got = (f"{f.get('cause')}: \"{f.get('title')}\" ({f.get('where')}"
                   + (", marked elsewhere" if f.get("elsewhere") else "") + ")") if f else "nothing"
            text = f"the doctor (agent's probe) ranks first {got}, not {self.cause} about the case's namespaces"
            own = next((i for i, x in enumerate(fs, 1) if x.get("cause") == self.cause and self.own_finding(x)), None)
            if mine:
                text += f"; that is #{mine}"
            elif own:
                x = fs[own - 1]
                text += (f"; it does find the case's own: #{own} \"{x.get('title')}\" ({x.get('where')}"
                         + (", marked elsewhere" if x.get("elsewhere") else "") + "), not attributed to the case's "
                         "namespaces")
            elif other:
                x = fs[other - 1]
                text += (f"; its {self.cause} finding #{other} is not attributed to them: \"{x.get('title')}\" "
                         f"({x.get('where')}" + (", marked elsewhere" if x.get("elsewhere") else "") + ")")
            else:
                text += f"; it has no {self.cause} finding"
            if soft and why_soft:
                text += f" [{why_soft}]"
        self.say(ok, text, soft)
        k = self.r.first.get("kernel")
        if self.kernel_sees:
            kok = bool(k) and k.get("cause") == self.cause
            self.say(kok, f"the kernel's counters alone rank {self.cause} first" if kok else
                     f"the kernel's counters alone rank {k.get('cause') if k else 'nothing'} first, not {self.cause}")

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> CaseResult:
        print(f"{self.name}: {self.title} (namespaces prefixed {self.lab.prefix})", flush=True)
        if self.design:
            print(f"  design notes: {self.design}")
        missing = tool_missing(*self.tools) if self.tools else None
        why = probe_prerequisites() or missing
        if why:
            self.r.skipped = why
            self.say(False, f"cannot run here: {why}")
            return self.r
        try:
            self.bg = Background(self.lab, self.tmp).start()
            self.info(self.bg.describe())
            self.agent = Agent(self.lab, self.tmp, **self.probe).spawn()
            self.build()
            self.r.namespaces = list(self.names)
            self.info(f"the case's namespaces: {', '.join(self.names)}")
            took = self.agent.wait()
            self.info(f"{self.agent.describe()}: probes loaded after {took:.1f} s")
            self.scenario()
        except ProbeUnavailable as e:
            self.r.skipped = str(e)
            self.say(False, str(e))
        except (LabError, subprocess.SubprocessError, OSError) as e:
            self.r.error = str(e)
            self.say(False, f"the case stopped: {e}")
        finally:
            for t in self.procs:
                if t.alive:
                    t.stop()
            if self.bg is not None:
                bg = self.bg.stop()
                self.r.extra["background"] = bg
                self.info(f"background: {bg['sent']:,} datagrams to the closed port, {bg['churned']} namespaces "
                          f"with links created and deleted" + (f"; errors: {self.bg.errors}" if self.bg.errors else ""))
        if not (self.r.skipped or self.r.error):
            self.verdict()
        return self.r

    def verdict(self) -> None:
        b, a = self.r.loss_before, self.r.loss_after
        self.step("verdict")
        if b is not None:
            self.say(b >= self.min_before, f"loss before the remedy {pct(b)} (at least {pct(self.min_before)} expected)")
        else:
            self.say(False, "the loss before the remedy was not measured")
        if a is not None:
            self.say(a <= self.max_after, f"loss after the remedy {pct(a)} (at most {pct(self.max_after)} expected)")
        else:
            self.say(False, "the loss after the remedy was not measured")

    # -- what each case provides ----------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def scenario(self) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# reading the doctor's remedy


def remedy_commands(f: dict, names: list[str]) -> list[tuple[str, list[str]]]:
    """The commands a remedy prints for one of the case's namespaces, as (netns, argv):
    "ip netns exec NS CMD ..." inside backquotes or up to the next '(' / ';' / ','."""
    out = []
    for line in f.get("remedy") or []:
        for m in re.finditer(r"ip netns exec (\S+) ([^`(;,]+)", line):
            ns, cmd = m.group(1), m.group(2).strip()
            if ns in names:
                out.append((ns, shlex.split(cmd)))
    return out


def pow2(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))
