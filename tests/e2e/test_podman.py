"""End to end with a real libcni client: podman (CNI backend) runs a container on a moor macvlan
network, the container pings a peer on the master's L2 segment, and removal leaves nothing behind.

    [podman netns] eth0 (macvlan) --> mreXXXX (root netns, master) ==veth== mreXXXXp (peer: 192.0.2.1)

podman gets private containers.conf/storage.conf in tmp_path and a busybox rootfs (--rootfs), so
nothing is pulled and the host's podman state is never used. podman runs moor in the root netns,
hence the master is a veth end there; its peer end lives in a Lab netns.
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from cni.state import digest
from dataplane.nslab import Lab, sh
from tests.helpers import REF_PLUGINS, cni_path, files, ipj

pytestmark = pytest.mark.e2e

BUSYBOX = "/bin/busybox"
GATEWAY = "192.0.2.1"
RANGE = (ipaddress.ip_address("192.0.2.100"), ipaddress.ip_address("192.0.2.120"))
TIMEOUT = 120  # seconds per podman call: a hang fails the test instead of blocking CI
LIBCNI_CACHE = Path("/var/lib/cni/results")  # libcni's default cache; podman 4.3 cannot move it


def _missing() -> Optional[str]:
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install podman runc)"
    if not os.path.exists(BUSYBOX):
        return f"{BUSYBOX} is missing (apt-get install busybox-static)"
    if not os.path.exists(os.path.join(REF_PLUGINS, "host-local")):
        return f"containernetworking-plugins not installed in {REF_PLUGINS}"
    return None


@dataclass
class Podman:
    tmp: Path
    net: str
    master: str
    peer: str
    env: dict[str, str]
    rootfs: Path
    sandboxes: list[str] = field(default_factory=list)  # podman netns paths seen, for teardown

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=TIMEOUT)
        if check:
            assert p.returncode == 0, f"podman {' '.join(args)} failed ({p.returncode}):\n{p.stderr}"
        return p

    def start(self, name: str, *opts: str) -> dict[str, Any]:
        """A detached container on the moor network; returns `podman inspect` of it."""
        self("run", "-d", "--name", name, "--network", self.net, *opts, "--rootfs", str(self.rootfs),
             "sleep", "300")
        info = json.loads(self("inspect", name).stdout)[0]
        self.sandboxes.append(info["NetworkSettings"]["SandboxKey"])
        return info

    def remove(self, name: str) -> None:
        # -t 0: sleep as PID 1 ignores SIGTERM, so do not wait for the 10 s stop timeout
        self("rm", "-f", "-t", "0", name)


def _write_configs(tmp: Path, master: str, net: str) -> tuple[dict[str, str], Path]:
    netd = tmp / "net.d"
    netd.mkdir()
    conflist = {"cniVersion": "1.0.0",  # podman's libcni rejects a 1.1.0 result
                "name": net,
                "plugins": [{"type": "moor", "mode": "macvlan", "master": master,
                             "stateDir": str(tmp / "state"),
                             "ipam": {"type": "host-local", "dataDir": str(tmp / "ipam"),
                                      "ranges": [[{"subnet": "192.0.2.0/24", "rangeStart": str(RANGE[0]),
                                                   "rangeEnd": str(RANGE[1]), "gateway": GATEWAY}]]}}]}
    (netd / f"{net}.conflist").write_text(json.dumps(conflist))
    containers_conf = tmp / "containers.conf"
    containers_conf.write_text(f"""\
[containers]
# the VM lacks CAP_SYS_RESOURCE: podman's default ulimits (raised nofile) would be refused
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
# crun 1.8 refuses this hybrid cgroup layout; no systemd runs here
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{tmp / 'podman-tmp'}"

[network]
network_backend = "cni"
network_config_dir = "{netd}"
cni_plugin_dirs = ["{cni_path(tmp)}"]
""")
    storage_conf = tmp / "storage.conf"
    storage_conf.write_text(f"""\
[storage]
driver = "vfs"
graphroot = "{tmp / 'graph'}"
runroot = "{tmp / 'run'}"
""")
    rootfs = tmp / "rootfs"
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")  # statically linked: needs no libc in the rootfs
    for applet in ("sh", "ping", "ip", "ifconfig", "sleep", "cat"):
        os.symlink("busybox", rootfs / "bin" / applet)
    env = dict(os.environ, CONTAINERS_CONF=str(containers_conf), CONTAINERS_STORAGE_CONF=str(storage_conf))
    return env, rootfs


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    why = _missing()
    if why:
        pytest.skip(why)
    lab = Lab()
    master = "mre" + secrets.token_hex(2)
    pm: Optional[Podman] = None
    try:
        peer = lab.ns("peer")
        sh("ip", "link", "add", master, "type", "veth", "peer", "name", master + "p", "netns", peer)
        sh("ip", "link", "set", master, "up")
        sh("ip", "-n", peer, "link", "set", master + "p", "up")
        lab.addr(peer, master + "p", f"{GATEWAY}/24")
        net = "moore2e-" + secrets.token_hex(3)
        env, rootfs = _write_configs(tmp_path, master, net)
        pm = Podman(tmp=tmp_path, net=net, master=master, peer=peer, env=env, rootfs=rootfs)
        yield pm
    finally:
        try:
            if pm is not None:
                # only containers of this private store: stops their conmon/runc, runs CNI DEL
                pm("rm", "-a", "-f", "-t", "0", check=False)
                for sandbox in pm.sandboxes:  # should already be gone; never leak a netns on failure
                    if os.path.exists(sandbox):
                        sh("ip", "netns", "del", os.path.basename(sandbox), check=False)
        finally:  # even if podman hung: the wire and the peer netns go
            sh("ip", "link", "del", master, check=False)
            lab.close()


def _pod_eth0(sandbox: str) -> dict[str, Any]:
    """eth0 in podman's netns as iproute2 sees it (a netlink client independent of moor)."""
    (link,) = ipj(os.path.basename(sandbox), "-d", "addr", "show", "dev", "eth0")
    return link


def _assert_attached(pm: Podman, name: str, info: dict[str, Any]) -> tuple[str, str]:
    """The container got a moor macvlan with an address from the range and reaches the peer
    over L2; returns (ip, mac)."""
    sandbox = info["NetworkSettings"]["SandboxKey"]
    link = _pod_eth0(sandbox)
    assert link["linkinfo"]["info_kind"] == "macvlan"
    (v4,) = [a for a in link["addr_info"] if a["family"] == "inet"]
    ip, mac = v4["local"], link["address"]
    assert v4["prefixlen"] == 24 and RANGE[0] <= ipaddress.ip_address(ip) <= RANGE[1]
    # podman parsed moor's 1.0.0 result: what it reports is what the kernel holds
    reported = info["NetworkSettings"]["Networks"][pm.net]
    assert (reported["IPAddress"], reported["MacAddress"], reported["Gateway"]) == (ip, mac, GATEWAY)
    # moor recorded the attachment, host-local the lease
    assert [p for p, _ in files(pm.tmp / "state" / "networks")] == [f"{pm.net}/{digest(info['Id'], 'eth0')}.json"]
    assert [p for p, _ in files(pm.tmp / "ipam")] == [f"{pm.net}/{ip}"]

    ping = pm("exec", name, "ping", "-c", "1", "-W", "2", GATEWAY, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # they share the L2 segment: the peer holds the container's IP at the macvlan's MAC
    neigh = ipj(pm.peer, "neigh", "show", ip)
    assert [n.get("lladdr") for n in neigh] == [mac]
    return ip, mac


def _assert_gone(pm: Podman, info: dict[str, Any], mac: str) -> None:
    cid, sandbox = info["Id"], info["NetworkSettings"]["SandboxKey"]
    assert pm("ps", "-a", "-q").stdout.split() == []
    # podman's netns is gone, and with it the macvlan
    assert not os.path.exists(sandbox)
    assert os.path.basename(sandbox) not in sh("ip", "netns", "list").stdout.decode()
    # no attachment record, no lease (lock files and host-local's cursor are not allocations)
    assert files(pm.tmp / "state", pm.tmp / "ipam") == []
    # libcni dropped its cached result for this attachment
    if LIBCNI_CACHE.is_dir():
        assert not [p.name for p in LIBCNI_CACHE.iterdir() if cid in p.name]
    # the master is untouched and nothing hangs off it (or carries the pod's MAC) in the root netns
    root = json.loads(sh("ip", "-d", "-j", "link", "show").stdout)
    (master,) = [l for l in root if l["ifname"] == pm.master]
    assert "UP" in master["flags"]
    assert not [l["ifname"] for l in root if l.get("link") == pm.master or l.get("address") == mac]


def test_container_pings_peer_and_removal_leaves_nothing(podman: Podman) -> None:
    name = f"{podman.net}-a"
    info = podman.start(name)
    ip, mac = _assert_attached(podman, name, info)
    # no MAC asked for: moor derives it from the IP (a re-created pod keeps IP and MAC)
    assert mac == "0a:58:" + ":".join(f"{int(o):02x}" for o in ip.split("."))
    podman.remove(name)
    _assert_gone(podman, info, mac)


def test_fixed_ip_and_mac(podman: Podman) -> None:
    # podman passes these as CNI_ARGS IP=/MAC=; host-local honours IP=, moor honours MAC=
    name, want_ip, want_mac = f"{podman.net}-b", "192.0.2.110", "02:42:c0:00:02:6e"
    info = podman.start(name, "--ip", want_ip, "--mac-address", want_mac)
    assert _assert_attached(podman, name, info) == (want_ip, want_mac)
    podman.remove(name)
    _assert_gone(podman, info, want_mac)
