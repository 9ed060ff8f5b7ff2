"""A physical L2 segment in namespaces: node <-> peer over a veth 'uplink'.

    [pod netns]..macvlan..(node: up0 192.0.2.2) ==veth== (peer: pp0 192.0.2.1, 2001:db8:1::1)

The plugin runs inside the node netns (`ip netns exec node moor`), as kubelet would run it on a
node, so the host's real netns is never touched.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from dataplane.nslab import Lab
from tests.helpers import Reply, cni_path, files, ipj, ns_state, run_cni

GATEWAY = "192.0.2.1"
NODE_IP = "192.0.2.2"


@dataclass
class MacvlanNet:
    lab: Lab
    tmp: Path
    node: str
    peer: str
    path: str
    pods: dict[str, str] = field(default_factory=dict)

    def pod(self, name: str) -> str:
        """A pod netns; returns its path for CNI_NETNS."""
        if name not in self.pods:
            self.pods[name] = self.lab.ns(name)
        return Lab.path(self.pods[name])

    def conf(self, version: str = "1.0.0", ipv6: bool = False, **over: Any) -> dict:
        ranges = [[{"subnet": "192.0.2.0/24", "rangeStart": "192.0.2.10", "rangeEnd": "192.0.2.60",
                    "gateway": GATEWAY}]]
        if ipv6:
            ranges.append([{"subnet": "2001:db8:1::/64", "rangeStart": "2001:db8:1::10",
                            "rangeEnd": "2001:db8:1::60", "gateway": "2001:db8:1::1"}])
        conf = {"cniVersion": version, "name": "mnet", "type": "moor", "mode": "macvlan", "master": "up0",
                "stateDir": str(self.tmp / "state"),
                "ipam": {"type": "host-local", "dataDir": str(self.tmp / "ipam"), "ranges": ranges}}
        conf.update(copy.deepcopy(over))
        return {k: v for k, v in conf.items() if v is not None}

    def cni(self, command: str, conf: Any, pod: str = "pod1", container_id: Optional[str] = None,
            ifname: str = "eth0", netns: Optional[str] = None, **kw: Any) -> Reply:
        nspath = netns if netns is not None else self.pod(pod)
        return run_cni(self.node, command, conf, path=self.path, container_id=container_id or f"cid-{pod}",
                       netns=nspath, ifname=ifname, **kw)

    def add(self, pod: str = "pod1", conf: Optional[dict] = None, **kw: Any) -> dict:
        conf = conf or self.conf()
        r = self.cni("ADD", conf, pod, **kw)
        assert r.code == 0, (r.stdout, r.stderr)
        return r.json

    def shims(self) -> dict[str, list[str]]:
        """The node's host shims (mshim*) and the addresses each holds."""
        return {a["ifname"]: [i["local"] for i in a.get("addr_info", []) if i.get("scope") == "global"]
                for a in ipj(self.node, "addr", "show") if a["ifname"].startswith("mshim")}

    def add_after_netns_gone(self, pod: str, conf: dict, **kw: Any) -> dict:
        """ADD for a pod whose old sandbox's netns was just deleted: the kernel tears that netns's
        devices down asynchronously, and until its macvlan is gone the same MAC is still in use on
        the parent (code 11, "retry after its DEL"). Retried as kubelet retries; a hang guard."""
        deadline = time.monotonic() + 30
        while True:
            r = self.cni("ADD", conf, pod, **kw)
            if r.code == 0:
                return r.json
            if r.error_code != 11 or time.monotonic() > deadline:
                raise AssertionError((r.stdout, r.stderr))
            time.sleep(0.05)

    def snapshot(self) -> dict:
        """Everything a failed or rolled-back call must leave unchanged."""
        snap = {"node": ns_state(self.node), "files": files(self.tmp / "state", self.tmp / "ipam")}
        for name, ns in self.pods.items():
            snap[name] = ns_state(ns)
        return snap


@pytest.fixture
def net(tmp_path: Path):
    lab = Lab()
    try:
        node, peer = lab.ns("node"), lab.ns("peer")
        lab.veth(node, "up0", peer, "pp0")
        lab.addr(node, "up0", f"{NODE_IP}/24")
        lab.addr(peer, "pp0", f"{GATEWAY}/24")
        lab.addr(peer, "pp0", "2001:db8:1::1/64")
        yield MacvlanNet(lab=lab, tmp=tmp_path, node=node, peer=peer, path=cni_path(tmp_path))
    finally:
        lab.close()
