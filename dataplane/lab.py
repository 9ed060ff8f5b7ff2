"""The lab on network namespaces. `python -m dataplane.lab demo` (what `./run demo` runs):

    pod-a ─┐ macvlan (bridge)
           ├── up0 [node] ══ veth ══ pp0 [peer: the "physical" network, gateway 192.0.2.1]
    pod-b ─┘      └ host shim (node reaches its own macvlan pods)

moor is executed exactly as kubelet would execute it (env + stdin, inside the node's netns), with
the reference host-local IPAM; the demo pings pod to pod, pod to peer, node to pod, runs CHECK and
DEL and proves nothing is left behind. Exit status 0 only if every check held.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from cni.install import write_launcher

from .nslab import Lab, require_root

REF_PLUGINS = "/usr/lib/cni"


class Demo:
    def __init__(self, lab: Lab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        self.failures = 0
        self.bin = tmp / "cni-bin"
        self.bin.mkdir()
        self.moor = str(write_launcher(self.bin))
        for p in Path(REF_PLUGINS).iterdir():
            os.symlink(p, self.bin / p.name)

    def say(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        self.failures += 0 if ok else 1

    def cni(self, command: str, conf: dict, pod_ns: str, cid: str) -> tuple[int, Any]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": cid, "CNI_NETNS": Lab.path(pod_ns), "CNI_IFNAME": "eth0",
               "CNI_PATH": str(self.bin), "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={cid}"}
        p = self.lab.run(self.node, self.moor, input=json.dumps(conf).encode(), env=env, check=False)
        return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None

    def run(self) -> int:
        lab = self.lab
        print(f"moor macvlan demo (namespaces prefixed {lab.prefix})")
        self.node, peer = lab.ns("node"), lab.ns("peer")
        lab.veth(self.node, "up0", peer, "pp0")
        lab.addr(self.node, "up0", "192.0.2.2/24")
        lab.addr(peer, "pp0", "192.0.2.1/24")
        pods = {"pod-a": lab.ns("pod-a"), "pod-b": lab.ns("pod-b")}
        conf = {"cniVersion": "1.0.0", "name": "demo", "type": "moor", "mode": "macvlan", "master": "up0",
                "hostShim": True, "stateDir": str(self.tmp / "state"),
                "ipam": {"type": "host-local", "dataDir": str(self.tmp / "ipam"),
                         "ranges": [[{"subnet": "192.0.2.0/24", "rangeStart": "192.0.2.10",
                                      "rangeEnd": "192.0.2.99", "gateway": "192.0.2.1"}]]}}
        print("\nADD (kubelet -> moor -> host-local):")
        results, ips = {}, {}
        for name, ns in pods.items():
            code, res = self.cni("ADD", conf, ns, name)
            self.say(code == 0, f"{name}: {json.dumps(res)}")
            if code != 0:
                return 1
            results[name] = res
            ips[name] = res["ips"][0]["address"].split("/")[0]

        print("\nreachability:")
        self.say(lab.ping(pods["pod-a"], ips["pod-b"]), f"pod-a -> pod-b ({ips['pod-b']})")
        self.say(lab.ping(pods["pod-b"], ips["pod-a"]), f"pod-b -> pod-a ({ips['pod-a']})")
        for name, ns in pods.items():
            self.say(lab.ping(ns, "192.0.2.1"), f"{name} -> physical peer 192.0.2.1")
        self.say(lab.ping(peer, ips["pod-a"]), f"physical peer -> pod-a ({ips['pod-a']})")
        self.say(lab.ping(self.node, ips["pod-b"]), f"node -> pod-b through the host shim ({ips['pod-b']})")

        print("\nCHECK:")
        for name, ns in pods.items():
            code, err = self.cni("CHECK", dict(conf, prevResult=results[name]), ns, name)
            self.say(code == 0, f"{name} matches its ADD result")
        lab.run(pods["pod-a"], "ip", "link", "set", "eth0", "down")
        code, err = self.cni("CHECK", dict(conf, prevResult=results["pod-a"]), pods["pod-a"], "pod-a")
        self.say(code != 0, f"after 'ip link set eth0 down' in pod-a, CHECK says: {err and err.get('msg')}")

        print("\nDEL (twice each, as containerd does):")
        for name, ns in pods.items():
            c1, _ = self.cni("DEL", dict(conf, prevResult=results[name]), ns, name)
            c2, _ = self.cni("DEL", conf, ns, name)
            self.say(c1 == 0 and c2 == 0, f"{name} deleted")
        leftovers = [l for l in lab.run(self.node, "ip", "-o", "link").stdout.decode().splitlines()
                     if "mshim" in l]
        leases = [p.name for p in (self.tmp / "ipam").rglob("192.0.2.*")]
        self.say(not leftovers and not leases, "nothing left behind (no shim, no IP lease)")
        print(f"\n{'all checks passed' if not self.failures else f'{self.failures} check(s) failed'}")
        return 0 if not self.failures else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dataplane.lab")
    ap.add_argument("scenario", choices=["demo"], help="demo: two macvlan pods, a physical peer, a host shim")
    ap.parse_args(argv)
    why = require_root()
    if why:
        print(f"lab: {why}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="moor-lab-"))
    try:
        with Lab() as lab:
            return Demo(lab, tmp).run()
    except subprocess.SubprocessError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
