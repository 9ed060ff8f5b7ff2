"""The routed (BGP) lab scenario: `python -m lab bgp` (and part of `demo`).

                      ┌──────────── tor: BIRD 2, eBGP AS 65000, exports what it learns to its kernel ─┐
                      │ tn1 192.0.2.1/25                                     tn2 192.0.2.129/25       │
                      └───┬──────────────────────────────────────────────────────┬────────────────────┘
        up0 192.0.2.2/25  │                                 up0 192.0.2.130/25   │
    n1: moord AS 65101 ───┘                            n2: moord AS 65102 ───────┘
        web-1, db-0 (moor, mode bgp)                       web-2, later db-0 again

Each node runs moord (`python -m dataplane.agent --config FILE`, private API socket, no metrics,
no probe, graceful restart with the ToR, learned routes installed). Pods are added by executing
the moor CNI plugin as kubelet does (env + stdin, inside the node's netns), routed mode, with
moor-ipam; both nodes use one moor-ipam store in the lab's temp dir, as a cluster shares etcd, so
no IP is handed out twice. Checks: the ToR learns every pod /32, pods on different nodes reach
each other through BGP-learned routes, a fixed-IP pod moves from n1 to n2 and keeps its IP, and a
numbered UDP stream survives `kill -9` of moord and its restart (graceful restart: the ToR keeps
forwarding to the node while its agent is away).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from cni.install import write_launcher

from dataplane.nslab import Lab

from .bird import Bird

REPO = Path(__file__).resolve().parent.parent
# the numbered UDP sender/receiver the interop tests use (send DST PORT PPS STOPFILE / recv PORT OUT)
UDPSTREAM = REPO / "tests" / "interop" / "udpstream.py"
PY = sys.executable

TOR_ASN = 65000
POOL = "203.0.113.0/24"
NODES = {  # name: (ToR's interface, ToR's address, node's address, node's AS)
    "n1": ("tn1", "192.0.2.1", "192.0.2.2", 65101),
    "n2": ("tn2", "192.0.2.129", "192.0.2.130", 65102),
}
DB_IP = "203.0.113.30"  # db-0's fixed IP (what the pod annotation moor.io/ips would ask for)
STREAM_PPS = 250

BIRD_CONF = """
router id 192.0.2.1;
protocol device {{ }}
protocol kernel {{ ipv4 {{ export all; }}; }}
template bgp node {{
  local as {tor_asn};
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  graceful restart on;
  ipv4 {{ import all; export where source = RTS_BGP; }};
}}
{peers}
"""


def wait(pred: Callable[[], Any], timeout: float = 20.0) -> Any:
    """pred()'s first truthy value, or its last value after `timeout` s (a guard against a hang,
    not a speed check)."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


class BgpLab:
    def __init__(self, lab: Lab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        self.failures = 0
        self.bin = tmp / "cni-bin"
        self.bin.mkdir()
        self.moor = str(write_launcher(self.bin, "moor"))
        write_launcher(self.bin, "moor-ipam")
        self.nodes: dict[str, str] = {}
        self.agents: dict[str, subprocess.Popen] = {}
        self.pods: dict[str, tuple[str, str, str, dict]] = {}  # pod -> (node, netns, ip, conf with prevResult)
        self.files: list = []

    # -- output ---------------------------------------------------------------------------
    def say(self, ok: bool, what: str) -> bool:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        self.failures += 0 if ok else 1
        return ok

    # -- pieces -----------------------------------------------------------------------------
    def moord(self, node: str) -> subprocess.Popen:
        _, tor_ip, ip, asn = NODES[node]
        conf = {"bgp": {"asn": asn, "routerId": ip, "holdTime": 9, "installLearned": True,
                        "peers": [{"address": tor_ip, "asn": TOR_ASN, "gracefulRestart": True}],
                        "gracefulRestart": {"restartTime": 60, "stateFile": str(self.tmp / f"moord-{node}-gr.json")}},
                "api": {"socket": str(self.tmp / f"moord-{node}.sock")}, "metrics": {"port": 0},
                "cni": {"socket": self.cni_socket(node)}, "probe": {"enabled": False}}
        path = self.tmp / f"moord-{node}.yaml"
        path.write_text(json.dumps(conf, indent=2))  # JSON is YAML
        log = open(self.tmp / f"moord-{node}.log", "a")
        self.files.append(log)
        p = self.lab.spawn(self.nodes[node], [PY, "-m", "dataplane.agent", "--config", str(path), "-v"], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=log)
        self.agents[node] = p
        return p

    def cni_socket(self, node: str) -> str:
        return str(self.tmp / f"moord-{node}-cni.sock")

    def log(self, node: str) -> str:
        try:
            return (self.tmp / f"moord-{node}.log").read_text(errors="replace")
        except OSError:
            return ""

    def conf(self, node: str) -> dict:
        return {"cniVersion": "1.0.0", "name": "fabric", "type": "moor", "mode": "bgp",
                "agentSocket": self.cni_socket(node),  # the fast path while the node's moord runs
                "stateDir": str(self.tmp / f"{node}-state"),
                "ipam": {"type": "moor-ipam", "dataDir": str(self.tmp / "ipam"), "nodeName": node,
                         "pools": [{"cidr": POOL}]}}

    def cni(self, node: str, command: str, conf: dict, pod: str, netns: str, cid: str, uid: str) -> tuple[int, Any]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": cid, "CNI_NETNS": Lab.path(netns), "CNI_IFNAME": "eth0", "CNI_PATH": str(self.bin),
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={pod};K8S_POD_UID={uid}"}
        p = self.lab.run(self.nodes[node], self.moor, input=json.dumps(conf).encode(), env=env, check=False)
        try:
            doc = json.loads(p.stdout) if p.stdout.strip() else None
        except ValueError:
            doc = {"msg": p.stdout.decode(errors="replace")}
        return p.returncode, doc

    def add(self, node: str, pod: str, netns_role: str, ip: Optional[str] = None) -> Optional[str]:
        ns = self.lab.ns(netns_role)
        conf = self.conf(node)
        if ip:
            conf["runtimeConfig"] = {"ips": [ip]}
        code, res = self.cni(node, "ADD", conf, pod, ns, f"c-{netns_role}", f"uid-{netns_role}")
        got = res["ips"][0]["address"].split("/")[0] if code == 0 else None
        host_if = res["interfaces"][0]["name"] if code == 0 else "?"
        self.say(code == 0, f"ADD demo/{pod} on {node}: " + (f"{got}, host veth {host_if}, route {got}/32 dev "
                                                              f"{host_if} proto moor" if code == 0 else json.dumps(res)))
        if code == 0:
            self.pods[pod] = (node, ns, got, dict(conf, prevResult=res))
        return got

    def kernel_route(self, ns: str, dst: str) -> str:
        return self.lab.run(ns, "ip", "-4", "route", "show", dst, check=False).stdout.decode().strip()

    def learned(self, node: str, dst: str) -> list[str]:
        """Next hops of the learned route to dst that moord installed (protocol moor-bgp, 111)."""
        p = self.lab.run(self.nodes[node], "ip", "-j", "-4", "route", "show", dst, check=False)
        for r in json.loads(p.stdout or b"[]"):
            if str(r.get("protocol")) in ("111", "moor-bgp"):
                return sorted([h["gateway"] for h in r.get("nexthops", [])] or [r.get("gateway", "")])
        return []

    # -- the scenario -------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self._run()
        finally:
            for f in self.files:
                f.close()
        print(f"\nbgp: {'all checks passed' if not self.failures else f'{self.failures} check(s) failed'}")
        return 0 if not self.failures else 1

    def _run(self) -> None:
        lab = self.lab
        print(f"moor routed (BGP) lab: a BIRD ToR, two nodes running moord, pods in mode bgp "
              f"(namespaces prefixed {lab.prefix})")
        for tool in ("bird", "birdc"):
            if shutil.which(tool) is None:
                self.say(False, f"{tool} is not installed (Debian package bird2; scripts/setup.sh installs it)")
                return
        if not UDPSTREAM.exists():
            self.say(False, f"{UDPSTREAM} is missing (the numbered UDP stream this scenario uses)")
            return
        tor = lab.ns("tor")
        lab.run(tor, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        for node, (tor_if, tor_ip, ip, _) in NODES.items():
            ns = lab.ns(node)
            self.nodes[node] = ns
            lab.veth(tor, tor_if, ns, "up0")
            lab.addr(tor, tor_if, f"{tor_ip}/25")
            lab.addr(ns, "up0", f"{ip}/25")
            lab.run(ns, "sysctl", "-q", "-w", "net.ipv4.conf.up0.forwarding=1")  # the node's job, not moor's
        peers = "\n".join(f"protocol bgp {node} from node {{ neighbor {ip} as {asn}; }}"
                          for node, (_, _, ip, asn) in NODES.items())
        self.bird = Bird(lab, tor, self.tmp)
        self.bird.start(BIRD_CONF.format(tor_asn=TOR_ASN, peers=peers))
        for node in NODES:
            self.moord(node)

        print("\nBGP sessions (moord <-> BIRD, eBGP, graceful restart):")
        for node, (_, tor_ip, ip, asn) in NODES.items():
            up = wait(lambda: self.bird.state(node) == "Established", 30)
            if not self.say(bool(up), f"{node} (AS {asn}, {ip}) <-> ToR (AS {TOR_ASN}, {tor_ip}): "
                                      f"{self.bird.state(node) or 'no state'}"):
                print(self.log(node)[-1500:])
                return

        print("\nADD (kubelet -> moor (mode bgp) -> moor-ipam, one store for both nodes):")
        web1 = self.add("n1", "web-1", "web-1")
        web2 = self.add("n2", "web-2", "web-2")
        db = self.add("n1", "db-0", "db-0", DB_IP)
        if not (web1 and web2 and db):
            return

        print("\nthe ToR learns every pod /32 (BIRD's table and its kernel):")
        for pod, (node, _, ip, _) in self.pods.items():
            nh = NODES[node][2]
            ok = wait(lambda: self.bird.routes(node).get(f"{ip}/32") == nh and "proto bird" in
                      self.kernel_route(tor, ip), 20)
            self.say(bool(ok), f"{pod} {ip}/32 from {node}: {self.kernel_route(tor, ip) or 'no kernel route'}")

        print("\npods on different nodes reach each other through BGP-learned routes:")
        for node, dst in (("n1", web2), ("n2", web1), ("n2", db)):
            via = NODES[node][1]
            ok = wait(lambda: self.learned(node, dst) == [via], 20)
            self.say(bool(ok), f"{node} learned {dst}/32 from the ToR: {self.kernel_route(self.nodes[node], dst)}")
        web1_ns, web2_ns = self.pods["web-1"][1], self.pods["web-2"][1]
        self.say(lab.ping(web1_ns, web2, count=2), f"web-1 (n1) -> web-2 (n2) {web2}")
        self.say(lab.ping(web2_ns, web1, count=2), f"web-2 (n2) -> web-1 (n1) {web1}")
        self.say(lab.ping(web2_ns, db, count=2), f"web-2 (n2) -> db-0 (n1) {db}")

        self.move_db()
        self.graceful_restart(web1, web2)

    def move_db(self) -> None:
        lab = self.lab
        print(f"\na fixed-IP pod moves: db-0 ({DB_IP}) deleted on n1, re-created on n2 with the same IP:")
        node, ns, ip, conf = self.pods.pop("db-0")
        code, res = self.cni(node, "DEL", conf, "db-0", ns, "c-db-0", "uid-db-0")
        self.say(code == 0, "DEL demo/db-0 on n1" + ("" if code == 0 else f": {json.dumps(res)}"))
        gone = wait(lambda: not self.learned("n2", DB_IP) and f"{DB_IP}/32" not in self.bird.routes("n1"), 20)
        self.say(bool(gone), f"n1 withdrew {DB_IP}/32: gone from the ToR and from n2")
        moved = self.add("n2", "db-0", "db-0-new", DB_IP)
        if moved != DB_IP:
            self.say(False, f"db-0 came back as {moved}, not {DB_IP}")
            return
        ok = wait(lambda: self.bird.routes("n2").get(f"{DB_IP}/32") == NODES["n2"][2]
                  and self.learned("n1", DB_IP) == [NODES["n1"][1]], 20)
        self.say(bool(ok), f"the ToR now routes {DB_IP}/32 to n2; n1 learned it: "
                           f"{self.kernel_route(self.nodes['n1'], DB_IP)}")
        web1_ns = self.pods["web-1"][1]
        self.say(lab.ping(web1_ns, DB_IP, count=2), f"web-1 (n1) -> db-0 at the same IP {DB_IP}, now on n2")

    def graceful_restart(self, web1: str, web2: str) -> None:
        lab, bird = self.lab, self.bird
        print(f"\ngraceful restart: a numbered UDP stream web-2 (n2) -> web-1 (n1) at {STREAM_PPS}/s while "
              "moord on n1 is killed with SIGKILL and restarted:")
        out, stop = self.tmp / "stream.json", self.tmp / "stream.stop"
        web1_ns, web2_ns = self.pods["web-1"][1], self.pods["web-2"][1]
        recv = lab.spawn(web1_ns, [PY, str(UDPSTREAM), "recv", "5001", str(out)], stdout=subprocess.PIPE, text=True)
        send = None
        try:
            if recv.stdout.readline().strip() != "ready":
                self.say(False, f"the UDP receiver did not start (exit {recv.poll()})")
                return
            send = lab.spawn(web2_ns, [PY, str(UDPSTREAM), "send", web1, "5001", str(STREAM_PPS), str(stop)],
                             stdout=subprocess.PIPE, text=True)
            time.sleep(1)  # the stream runs before the kill (a pace, not a measurement)
            agent = self.agents["n1"]
            t0 = time.monotonic()
            agent.send_signal(signal.SIGKILL)  # no shutdown code runs at all
            agent.wait(10)
            down = wait(lambda: bird.state("n1") != "Established", 10)
            during = bird.cmd("show", "protocols", "all", "n1")
            kept = f"{web1}/32" in bird.routes("n1") and "graceful restart active" in during.lower()
            self.say(bool(down) and kept, f"moord on n1 killed; the ToR keeps n1's routes as stale "
                                          f"({'graceful restart active' if kept else 'NOT kept'}): "
                                          f"{self.kernel_route(self.bird_ns(), web1)}")
            time.sleep(1)  # the agent stays away a while
            self.moord("n1")
            back = wait(lambda: bird.state("n1") == "Established", 30)
            t_back = time.monotonic() - t0
            restarted = wait(lambda: "restarted" in self.log("n1"), 10)
            fwd = "forwarding state kept" in self.log("n1")
            self.say(bool(back) and bool(restarted) and fwd,
                     f"moord back on n1 after {t_back:.1f} s: session Established, it knows it restarted "
                     f"(Restart bit) with forwarding state kept (Forwarding bit)")
            # BIRD ends its wait on moord's End-of-RIB and refreshes the routes
            fresh = wait(lambda: "graceful restart active" not in bird.cmd("show", "protocols", "all", "n1").lower()
                         and f"{web1}/32" in bird.routes("n1")
                         and "stale" not in bird.cmd("show", "route", web1, "all").lower(), 30)
            adopted = [l.split("moord ", 1)[-1] for l in self.log("n1").splitlines() if "adopted" in l]
            self.say(bool(fresh), "End-of-RIB: the ToR's routes from n1 are fresh again"
                     + (f"; n1 {adopted[-1]}" if adopted else ""))
            time.sleep(1)
        finally:
            stop.touch()
            sent = 0
            if send is not None:
                try:
                    sent = int(send.communicate(timeout=10)[0].strip() or 0)
                except (subprocess.TimeoutExpired, ValueError):
                    sent = 0
            time.sleep(0.5)  # the last datagrams in flight
            if recv.poll() is None:
                recv.send_signal(signal.SIGTERM)
            try:
                recv.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            got = json.loads(out.read_text())
        except (OSError, ValueError):
            got = {"received": 0, "missing": ["?"]}
        print(f"  UDP stream: {sent} sent, {got['received']} received during the agent restart "
              f"({len(got['missing'])} missing)")
        self.say(sent > 0 and got["received"] == sent and not got["missing"],
                 "no datagram lost across moord's SIGKILL and restart")

    def bird_ns(self) -> str:
        return self.bird.ns


def run(lab: Lab, tmp: Path) -> int:
    return BgpLab(lab, tmp).run()
