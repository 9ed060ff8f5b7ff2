"""A busy node for the CNI plugin: worker threads play kubelet and the runtime against the real
`moor` executable in a node network namespace — pods created and re-created while their old
sandbox still runs, ADD and DEL of one container overlapping, DEL before or after the netns is
gone, CHECK, GC with good and junk attachment lists, runtimes that crash and forget sandboxes,
plugin processes SIGKILLed mid-operation (and their DEL retried, as kubelet does), long container
IDs, and corrupt rows written into the IPAM store. After each round (all calls finished) the
invariant is checked against the kernel and the store:

- every IP on a live pod interface is recorded active for that pod's container;
- no IP is live in two pods;
- every pod whose ADD succeeded and that was not deleted has its interface and IPs;
- no host route (routed mode's /32 proto moor, the macvlan host shim's routes) points at a missing
  pod, except one of a sandbox whose runtime crashed and that no GC has run for yet;

and after the final DELs and GCs nothing is left: no pod link, route, record (nor a killed
writer's temp file), active IP or lock file.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from dataplane.nslab import Lab, sh
from tests.helpers import ipj

ETCD_ROWS = str(Path(__file__).with_name("etcd_rows.py"))  # the store as etcd holds it, either layout

NAMES = [f"p{i}" for i in range(8)]
POOL = ("192.0.2.0/24", "192.0.2.10", "192.0.2.40")  # 31 addresses for 8 pod names and their churn
OK_ADD = {0, 11, 112}  # done; try again later (old sandbox alive, or busy); pool exhausted
PLUGIN_TIMEOUT_S = 120  # a hang guard, not a speed check


class Violation(AssertionError):
    pass


@dataclass
class Sandbox:
    pod: str
    uid: str
    cid: str
    ns: str
    state: str = "adding"  # adding, added, failed, deleting, deleted, crashed
    result: Optional[dict] = None
    netns_alive: bool = True
    known: bool = True  # the runtime still lists it (GC's valid attachments)
    busy: bool = True  # an operation of the harness is on it

    @property
    def path(self) -> str:
        return Lab.path(self.ns)


@dataclass
class Reply:
    code: int
    out: bytes
    killed: bool = False

    @property
    def error(self) -> Optional[int]:
        if self.code == 0 or self.killed:
            return None
        try:
            return json.loads(self.out)["code"]
        except (ValueError, KeyError, TypeError):
            return -1  # not the spec's JSON: a defect of its own


@dataclass
class Harness:
    lab: Lab
    tmp: Path
    mode: str  # macvlan | bgp
    cni_path: str
    node: str
    etcd: Optional[str] = None  # endpoint (reachable from the node netns), else SQLite
    seed: int = 1
    kill_rate: float = 0.06
    rnd: random.Random = field(init=False)
    mu: threading.Lock = field(default_factory=threading.Lock)
    sandboxes: list = field(default_factory=list)
    uids: dict = field(default_factory=dict)  # pod -> current pod object UID
    stats: Counter = field(default_factory=Counter)
    errors: list = field(default_factory=list)
    prefix: str = field(default_factory=lambda: "/stress-" + secrets.token_hex(3))

    def __post_init__(self) -> None:
        self.rnd = random.Random(self.seed)

    # -- the network config --------------------------------------------------------------------
    def conf(self, version: str = "1.0.0") -> dict:
        ipam: dict[str, Any] = {"type": "moor-ipam", "dataDir": str(self.tmp / "ipam"), "sticky": "pod",
                                "holdSeconds": 1, "cooldownSeconds": 0, "gcGraceSeconds": 0.5,
                                "nodeName": "node-a",
                                "pools": [{"cidr": POOL[0], "rangeStart": POOL[1], "rangeEnd": POOL[2],
                                           "gateway": "192.0.2.1"}]}
        if self.etcd:
            ipam["etcd"] = {"endpoints": [self.etcd], "prefix": self.prefix}
        conf = {"cniVersion": version, "name": "stress", "type": "moor", "mode": self.mode,
                "stateDir": str(self.tmp / "state"), "ipam": ipam}
        if self.mode == "macvlan":  # an IP-derived MAC would turn a duplicate IP into a MAC clash: hide nothing
            conf.update(master="up0", hostShim=True, macFromIP=False)
        return conf

    # -- running the plugin --------------------------------------------------------------------
    def call(self, command: str, sb: Optional[Sandbox] = None, conf: Optional[dict] = None,
             kill: Optional[float] = None) -> Reply:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_PATH": self.cni_path, "CNI_CONTAINERID": sb.cid if sb else "",
               "CNI_NETNS": sb.path if sb else "", "CNI_IFNAME": "eth0" if sb else ""}
        if sb is not None:
            env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=stress;K8S_POD_NAME={sb.pod};K8S_POD_UID={sb.uid}"
        data = json.dumps(conf or self.conf()).encode()
        p = subprocess.Popen(["ip", "netns", "exec", self.node, os.path.join(self.cni_path, "moor")], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, _err = p.communicate(data, timeout=kill if kill is not None else PLUGIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)  # `ip netns exec` execs the plugin: this is the plugin's PID
            out, _err = p.communicate()
            if kill is None:
                raise Violation(f"{command} of {sb.cid if sb else '-'} hung for {PLUGIN_TIMEOUT_S} s")
            self.stats[f"{command} killed"] += 1
            return Reply(-9, out, killed=True)
        r = Reply(p.returncode, out)
        self.stats[f"{command} {r.error if r.code else 0}"] += 1
        return r

    def _maybe_kill(self) -> Optional[float]:
        return self.rnd.uniform(0.0, 0.15) if self.rnd.random() < self.kill_rate else None

    # -- sandboxes -----------------------------------------------------------------------------
    def new_sandbox(self, pod: str, recreate_uid: bool) -> Sandbox:
        with self.mu:
            if recreate_uid or pod not in self.uids:
                self.uids[pod] = "uid-" + secrets.token_hex(4)
            n = len(self.sandboxes)
            # libcni accepts container IDs longer than a file name may be
            cid = f"c{n}-" + (secrets.token_hex(125) if self.rnd.random() < 0.3 else secrets.token_hex(6))
            sb = Sandbox(pod=pod, uid=self.uids[pod], cid=cid, ns=f"{self.lab.prefix}-s{n}")
            self.sandboxes.append(sb)
            self.lab.namespaces.append(sb.ns)
        sh("ip", "netns", "add", sb.ns)
        return sb

    def drop_netns(self, sb: Sandbox) -> None:
        if sb.netns_alive:
            sh("ip", "netns", "del", sb.ns)
            sb.netns_alive = False
            with self.mu:
                self.lab.namespaces.remove(sb.ns)

    def pick(self, *states: str) -> Optional[Sandbox]:
        with self.mu:
            cands = [s for s in self.sandboxes if s.state in states and not s.busy]
            if not cands:
                return None
            sb = self.rnd.choice(cands)
            sb.busy = True
            return sb

    def delete(self, sb: Sandbox, netns_first: bool = False, drop: bool = True) -> None:
        """The runtime's DEL: retried until it succeeds (as kubelet does), then the netns goes."""
        sb.state = "deleting"
        if netns_first:
            self.drop_netns(sb)
        r = self.call("DEL", sb, kill=self._maybe_kill())
        while r.killed:
            r = self.call("DEL", sb)
        if r.code != 0:
            raise Violation(f"DEL of {sb.cid[:20]} failed: {r.out!r}")
        if drop:
            self.drop_netns(sb)
        sb.state, sb.known, sb.busy = "deleted", False, False

    # -- operations (each one kubelet or a runtime could do) --------------------------------------
    def op_create(self) -> None:
        """A pod's sandbox: new, or re-created while an old one may still run (force delete, a
        retried RunPodSandbox), with a new pod UID or the same one."""
        pod = self.rnd.choice(NAMES)
        sb = self.new_sandbox(pod, recreate_uid=self.rnd.random() < 0.5)
        r = self.call("ADD", sb, kill=self._maybe_kill())
        if r.code == 0:
            sb.state, sb.result, sb.busy = "added", json.loads(r.out), False
            return
        if not r.killed and r.error not in OK_ADD:
            raise Violation(f"ADD of {sb.pod} failed unexpectedly: {r.out!r}")
        sb.state = "failed"
        self.delete(sb)  # kubelet tears down a sandbox whose set-up failed

    def op_delete(self) -> None:
        sb = self.pick("added")
        if sb is not None:
            self.delete(sb, netns_first=self.rnd.random() < 0.25)

    def op_overlap(self) -> None:
        """kubelet gave up waiting for ADD and sent DEL while ADD still runs; the sandbox's netns
        lingers a while (until the round ends): whatever ADD did must be undone by then."""
        sb = self.new_sandbox(self.rnd.choice(NAMES), recreate_uid=self.rnd.random() < 0.5)
        got: dict = {}
        t = threading.Thread(target=lambda: got.setdefault("add", self.call("ADD", sb)))
        t.start()
        time.sleep(self.rnd.uniform(0.0, 0.2))
        self.delete(sb, drop=False)
        t.join()
        sb.state = "deleted"  # the runtime has forgotten it; its netns is removed at the round's end

    def op_check(self) -> None:
        sb = self.pick("added")
        if sb is None:
            return
        r = self.call("CHECK", sb, conf=dict(self.conf(), prevResult=sb.result))
        sb.busy = False
        if r.code != 0:
            raise Violation(f"CHECK of an untouched pod {sb.pod} failed: {r.out!r}")

    def op_gc(self) -> None:
        conf = self.conf("1.1.0")
        if self.rnd.random() < 0.2:  # a runtime sends junk: refused, nothing touched
            conf["cni.dev/valid-attachments"] = self.rnd.choice(
                [[1, "x", None, {"containerID": 5}], None, [{"containerID": ["x"], "ifname": "eth0"}], "all"])
            r = self.call("GC", conf=conf)
            if r.error != 7:
                raise Violation(f"GC with a junk list answered {r.code}: {r.out!r}")
            return
        with self.mu:
            conf["cni.dev/valid-attachments"] = [{"containerID": s.cid, "ifname": "eth0"}
                                                 for s in self.sandboxes if s.known]
        r = self.call("GC", conf=conf, kill=self._maybe_kill())
        if r.code != 0 and not r.killed:
            raise Violation(f"GC failed: {r.out!r}")

    def op_crash(self) -> None:
        """A runtime crashed: the sandbox's netns is gone, nobody will send its DEL, and the
        runtime no longer lists it. GC (or the pod's re-creation) must clean up."""
        sb = self.pick("added")
        if sb is None:
            return
        self.drop_netns(sb)
        sb.state, sb.known, sb.busy = "crashed", False, False

    def op_corrupt(self) -> None:
        """One reservation row that does not parse (a torn write, a bad hand edit)."""
        ip = f"192.0.2.{self.rnd.randint(10, 40)}"
        bad = '{"ip": "%s", "state": "active", "seq": "x"' % ip
        if self.etcd:
            sh("ip", "netns", "exec", self.node, "python3", ETCD_ROWS, "corrupt", self.etcd, self.prefix, "stress", ip)
        else:
            if not (self.tmp / "ipam" / "ipam.sqlite3").exists():
                return  # no pod yet: no database to spoil
            db = sqlite3.connect(self.tmp / "ipam" / "ipam.sqlite3", timeout=30)
            try:
                db.execute("INSERT OR IGNORE INTO reservations (network, ip, data) VALUES ('stress', ?, ?)", (ip, bad))
                db.commit()
            finally:
                db.close()
        self.stats["corrupt rows written"] += 1

    # -- the store, read independently -----------------------------------------------------------
    def records(self) -> dict:
        """ip -> reservation dict (or {"corrupt": raw}) as stored."""
        if self.etcd:
            got = json.loads(sh("ip", "netns", "exec", self.node, "python3", ETCD_ROWS, "read", self.etcd, self.prefix,
                                "stress").stdout)
            rows = list(got.items())
        else:
            path = self.tmp / "ipam" / "ipam.sqlite3"
            if not path.exists():
                return {}
            db = sqlite3.connect(path, timeout=30)
            try:
                rows = db.execute("SELECT ip, data FROM reservations WHERE network = 'stress'").fetchall()
            finally:
                db.close()
        out = {}
        for ip, data in rows:
            try:
                out[ip] = json.loads(data)
                out[ip]["seq"] + 0
            except (ValueError, TypeError, KeyError):
                out[ip] = {"corrupt": data}
        return out

    def repair(self) -> None:
        """An operator repairs the corrupt rows `moor-ipam list` names (release --force)."""
        cfg = self.tmp / "net.conf"
        cfg.write_text(json.dumps(self.conf()))
        exe = os.path.join(self.cni_path, "moor-ipam")
        listed = sh("ip", "netns", "exec", self.node, exe, "list", str(cfg), "--json").stdout
        for r in json.loads(listed):
            if r["state"] == "corrupt":
                sh("ip", "netns", "exec", self.node, exe, "release", str(cfg), r["ip"], "--force")
                self.stats["corrupt rows repaired"] += 1

    # -- the invariant -------------------------------------------------------------------------
    def check(self) -> None:
        recs = self.records()
        live_ips: dict[str, Sandbox] = {}
        for sb in [s for s in self.sandboxes if s.netns_alive]:
            addrs = [(a["ifname"], i["local"]) for a in ipj(sb.ns, "addr", "show") for i in a.get("addr_info", [])
                     if i.get("scope") == "global"]
            for ifname, ip in addrs:
                if ip in live_ips:
                    raise Violation(f"IP {ip} is live in two pods: {live_ips[ip].pod} ({live_ips[ip].cid[:16]}) "
                                    f"and {sb.pod} ({sb.cid[:16]})")
                live_ips[ip] = sb
                r = recs.get(ip)
                if r is None or r.get("state") != "active" or r.get("container_id") != sb.cid:
                    raise Violation(f"IP {ip} on {sb.pod} ({sb.cid[:16]}, {sb.state}) is not recorded active for it: "
                                    f"{r and {k: r.get(k) for k in ('state', 'container_id', 'pod', 'seq')}}")
            if sb.state == "added":
                want = {i["address"].split("/")[0] for i in sb.result["ips"]}
                if not want <= {ip for _, ip in addrs}:
                    raise Violation(f"pod {sb.pod} ({sb.cid[:16]}) lost its IPs {want}: has {addrs}")
        for fam in ("-4", "-6"):
            for rt in json.loads(sh("ip", "-n", self.node, "-j", fam, "route", "show", "table", "all").stdout or b"[]"):
                if rt.get("protocol") not in ("moor", "moor-shim", "109", "110"):
                    continue
                dst = rt["dst"].split("/")[0]
                if dst not in live_ips and not self._crashed_with(dst):
                    had = [(s.pod, s.cid[:16], s.state) for s in self.sandboxes
                           if s.result and dst in json.dumps(s.result["ips"])]
                    raise Violation(f"host route {rt['dst']} dev {rt.get('dev')} ({rt.get('protocol')}) points at "
                                    f"no live pod (pods that had it: {had})")

    def _crashed_with(self, ip: str) -> bool:
        """A crashed runtime's sandbox held this IP: nobody told the plugin yet (GC will)."""
        return any(s.state == "crashed" and s.result and any(i["address"].split("/")[0] == ip
                                                                for i in s.result["ips"]) for s in self.sandboxes)

    def check_empty(self) -> None:
        """After the final DELs and GCs: nothing of any pod is left."""
        links = [lk["ifname"] for lk in ipj(self.node, "link", "show")]
        if set(links) - {"lo", "up0"}:
            raise Violation(f"links left on the node: {links}")
        for fam in ("-4", "-6"):
            rts = [r for r in json.loads(sh("ip", "-n", self.node, "-j", fam, "route", "show", "table", "all").stdout
                                         or b"[]") if r.get("protocol") in ("moor", "moor-shim", "109", "110")]
            if rts:
                raise Violation(f"routes left: {rts}")
        active = {ip: r for ip, r in self.recs_active().items()}
        if active:
            raise Violation(f"active reservations left: {active}")
        records = list((self.tmp / "state" / "networks").rglob("*.json*"))  # killed writers' temp files too
        if records:
            raise Violation(f"attachment records left: {records}")
        locks = [p for d in (self.tmp / "state" / "locks", self.tmp / "ipam" / "locks") if d.exists()
                 for p in d.glob("att-*")]
        if locks:
            raise Violation(f"lock files left: {[(str(p.relative_to(self.tmp)), p.read_bytes()[:80]) for p in locks]}")

    def recs_active(self) -> dict:
        return {ip: r for ip, r in self.records().items() if r.get("state") == "active"}

    # -- driving it ------------------------------------------------------------------------------
    OPS = (("create", 30), ("delete", 22), ("overlap", 10), ("check", 10), ("gc", 10), ("crash", 4),
           ("corrupt", 1))

    def round(self, n_ops: int, workers: int = 6) -> None:
        kinds = [k for k, w in self.OPS for _ in range(w)]
        todo = [self.rnd.choice(kinds) for _ in range(n_ops)]
        todo_mu = threading.Lock()
        failures: list = []

        def work() -> None:
            while True:
                with todo_mu:
                    if not todo or failures:
                        return
                    kind = todo.pop()
                try:
                    getattr(self, f"op_{kind}")()
                    self.stats[f"op {kind}"] += 1
                except BaseException as e:  # noqa: BLE001 - reported by the round
                    failures.append(e)
                    return
        threads = [threading.Thread(target=work) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise failures[0]
        self.check()
        for sb in self.sandboxes:  # lingering sandboxes of overlapped ADD/DEL go now
            if sb.state == "deleted":
                self.drop_netns(sb)
        self.repair()

    def finish(self) -> None:
        """DEL every pod still there, then GC with an empty list until the leaks are released."""
        for sb in self.sandboxes:
            if sb.state == "added":
                sb.busy = True
                self.delete(sb)
            self.drop_netns(sb)
        conf = dict(self.conf("1.1.0"), **{"cni.dev/valid-attachments": []})
        deadline = time.monotonic() + 60  # a hang guard: two passes a grace period apart suffice
        while time.monotonic() < deadline:
            r = self.call("GC", conf=conf)
            if r.code != 0:
                raise Violation(f"GC failed: {r.out!r}")
            if not self.recs_active() and not list((self.tmp / "state" / "networks").rglob("*.json")):
                break
            time.sleep(0.6)  # gcGraceSeconds is 0.5
        self.check_empty()
