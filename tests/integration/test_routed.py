"""Routed ("bgp") mode in namespaces: veth /32 pods, link-local gateway, host routes with moor's
protocol number, reachability without a bridge, rollback, and not one packet-filter rule."""
from __future__ import annotations

import os

import pytest

from dataplane.nslab import Lab, sh
from tests.helpers import ipj, run_cni
from tests.integration.conftest import MacvlanNet
from tests.interop.conftest import wait_for

pytestmark = pytest.mark.integration

ROUTED_STEPS = ["open-netns", "pending", "ipam", "record", "veth", "host-side", "addresses", "up", "pod-routes", "host-routes"]


def _conf(net: MacvlanNet, version: str = "1.0.0", **over) -> dict:
    conf = {"cniVersion": version, "name": "rnet", "type": "moor", "mode": "bgp", "stateDir": str(net.tmp / "state"),
            "ipam": {"type": "moor-ipam", "dataDir": str(net.tmp / "ipam"), "gcGraceSeconds": 0,
                     "pools": [{"cidr": "203.0.113.0/24"}, {"cidr": "2001:db8:9::/64"}]}}
    conf.update(over)
    return conf


def _args(name: str) -> str:
    return f"IgnoreUnknown=1;K8S_POD_NAMESPACE=r;K8S_POD_NAME={name};K8S_POD_UID=u-{name}"


def _ip(res: dict, v: int = 4) -> str:
    return next(i["address"].split("/")[0] for i in res["ips"] if (":" in i["address"]) == (v == 6))


def _ruleset(ns: str) -> tuple:
    """Every nftables table, chain and rule in a netns (iptables-nft lands there too), read over
    netfilter netlink with pyroute2, plus the legacy iptables tables in use."""
    from pyroute2.nftables.main import NFTables

    from cni.netlink import netns as nsmod
    fd = nsmod.open_netns(Lab.path(ns))
    try:
        with nsmod.entered(fd):
            nft = NFTables(nfgen_family=0)  # NFPROTO_UNSPEC: every family
            try:
                tables = sorted((t["nfgen_family"], t.get_attr("NFTA_TABLE_NAME")) for t in nft.get_tables())
                chains = sorted((c.get_attr("NFTA_CHAIN_TABLE"), c.get_attr("NFTA_CHAIN_NAME")) for c in nft.get_chains())
                rules = len(nft.get_rules())
            finally:
                nft.close()
            legacy = tuple(open(f"/proc/net/{n}").read() for n in ("ip_tables_names", "ip6_tables_names")
                           if os.path.exists(f"/proc/net/{n}"))
    finally:
        os.close(fd)
    return tables, chains, rules, legacy


@pytest.fixture
def routed(net: MacvlanNet) -> MacvlanNet:
    # the node forwards IPv6 globally (IPv4 forwarding is per ingress interface, set by moor)
    net.lab.run(net.node, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.up0.forwarding=1")
    return net


def test_pods_reach_each_other_the_node_and_a_router_through_host_routes(routed: MacvlanNet):
    net = routed
    a = net.add("pod1", _conf(net), args=_args("a-0"))
    b = net.add("pod2", _conf(net), args=_args("b-0"))
    assert a["ips"][0]["address"].endswith("/32") and a["ips"][1]["address"].endswith("/128")
    assert a["ips"][0]["gateway"] == "169.254.1.1" and a["ips"][1]["gateway"] == "fe80::1"
    host_if = a["interfaces"][0]["name"]
    assert host_if.startswith("moor") and len(host_if) == 15
    for v in (4, 6):
        assert net.lab.run(net.pods["pod1"], "ping", f"-{v}", "-c1", "-W2", _ip(b, v)).returncode == 0
        assert net.lab.run(net.node, "ping", f"-{v}", "-c1", "-W2", _ip(a, v)).returncode == 0
    # the node's host routes carry moor's protocol number: the contract with the BGP agent
    routes = ipj(net.node, "route", "show", "proto", "109")
    assert {r["dst"] for r in routes} == {_ip(a), _ip(b)} and {r["dev"] for r in routes} == {
        host_if, b["interfaces"][0]["name"]}
    assert {r["dst"] for r in ipj(net.node, "-6", "route", "show", "proto", "109")} == {_ip(a, 6), _ip(b, 6)}
    # a router beyond the uplink reaches a pod through the node (what BGP will tell it)
    net.lab.run(net.peer, "ip", "route", "add", f"{_ip(a)}/32", "via", "192.0.2.2")
    net.lab.run(net.node, "ip", "route", "replace", "default", "via", "192.0.2.1")
    assert net.lab.ping(net.peer, _ip(a))
    # the pod's gateway is a permanent neighbour: no proxy ARP needed on the host end
    neigh = ipj(net.pods["pod1"], "neigh", "show", "169.254.1.1")
    assert neigh and "PERMANENT" in neigh[0]["state"]
    assert net.cni("CHECK", dict(_conf(net), prevResult=a), "pod1").code == 0


def test_no_packet_filter_rule_is_ever_written(routed: MacvlanNet):
    net = routed
    net.pod("pod1")
    before = _ruleset(net.node), _ruleset(net.pods["pod1"])
    res = net.add("pod1", _conf(net), args=_args("a-0"))
    during = _ruleset(net.node), _ruleset(net.pods["pod1"])
    assert net.cni("DEL", dict(_conf(net), prevResult=res), "pod1", args=_args("a-0")).code == 0
    after = _ruleset(net.node), _ruleset(net.pods["pod1"])
    assert before == during == after
    assert during[0][:3] == ([], [], 0)  # and there were none to begin with


def test_the_ruleset_reader_sees_a_table(routed: MacvlanNet):
    """The check above is only as good as its reader: a table made here must show."""
    from pyroute2.nftables.main import NFTables

    from cni.netlink import netns as nsmod
    ns = routed.lab.ns("probe")
    fd = nsmod.open_netns(Lab.path(ns))
    try:
        with nsmod.entered(fd):
            nft = NFTables(nfgen_family=2)
            nft.table("add", name="probe")
            nft.close()
    finally:
        os.close(fd)
    assert _ruleset(ns)[0] == [(2, "probe")]


def test_check_names_a_missing_host_route_and_del_cleans_everything(routed: MacvlanNet):
    net = routed
    net.pod("pod1")
    before = net.snapshot()
    res = net.add("pod1", _conf(net), args=_args("a-0"))
    net.lab.run(net.node, "ip", "route", "del", f"{_ip(res)}/32")
    bad = net.cni("CHECK", dict(_conf(net), prevResult=res), "pod1")
    assert bad.error_code == 103 and f"host route {_ip(res)}/32" in bad.json["msg"]
    conf = dict(_conf(net), prevResult=res)
    assert net.cni("DEL", conf, "pod1", args=_args("a-0")).code == 0
    assert net.cni("DEL", conf, "pod1", args=_args("a-0"), netns="").code == 0
    after = net.snapshot()
    assert after["node"] == before["node"] and after["pod1"] == before["pod1"]


# run inside a pod's netns: a router advertisement to all nodes out of eth0, offering a default
# route via the pod for 1800 s (the kernel fills in the ICMPv6 checksum of a raw ICMPv6 socket)
RA_SENDER = """
import socket, struct
idx = socket.if_nametoindex("eth0")
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
s.sendto(struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0), ("ff02::1", 0, 0, idx))
"""


@pytest.mark.parametrize("pools", [["203.0.113.0/24"], ["203.0.113.0/24", "2001:db8:9::/64"]],
                         ids=["ipv4-only", "dual-stack"])
def test_the_node_takes_no_router_advertisement_from_a_pod(net: MacvlanNet, pools: list[str]):
    """The host end is no IPv6 router (IPv6 forwarding is the node's conf.all switch), yet a pod can
    never give the node a route: accept_ra 0 on the host end of an IPv6 pod, no IPv6 at all on that
    of an IPv4-only pod. The node here does not forward IPv6, where a plain link would take RAs."""
    import sys
    import time
    conf = _conf(net)
    conf["ipam"]["pools"] = [{"cidr": c} for c in pools]
    res = net.add("pod1", conf, args=_args("a-0"))
    host_if = res["interfaces"][0]["name"]
    if len(pools) == 1:
        assert ipj(net.node, "-6", "addr", "show", "dev", host_if) == []

    def ra_routes() -> list:
        return [r for r in ipj(net.node, "-6", "route", "show", "proto", "ra") if r.get("dev") == host_if]

    net.lab.run(net.pods["pod1"], sys.executable, "-c", RA_SENDER)
    time.sleep(0.5)  # a received RA is applied in softirq, long before this
    assert ra_routes() == []
    # the same RA on the same link, were the host end a plain IPv6 host: taken (the check above
    # is only as good as this advertisement)
    net.lab.run(net.node, "sysctl", "-q", "-w", f"net.ipv6.conf.{host_if}.disable_ipv6=0",
                f"net.ipv6.conf.{host_if}.accept_ra=1")
    def resent_and_taken() -> list:
        net.lab.run(net.pods["pod1"], sys.executable, "-c", RA_SENDER)
        return ra_routes()
    assert wait_for(resent_and_taken, what="the control RA to be taken")[0]["dst"] == "default"


def test_ipv6_pods_reach_each_other_once_the_node_forwards_ipv6_after_they_were_added(net: MacvlanNet):
    """IPv6 forwarding is the node's conf.all.forwarding alone, turned on by moord at the first IPv6
    pod route (dataplane/prereq.py), so after the pods' ADDs: their host ends need no bit of their own."""
    a = net.add("pod1", _conf(net), args=_args("a-0"))
    b = net.add("pod2", _conf(net), args=_args("b-0"))
    assert net.lab.run(net.pods["pod1"], "ping", "-6", "-c1", "-W1", _ip(b, 6), check=False).returncode != 0
    net.lab.run(net.node, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
    assert net.lab.run(net.pods["pod1"], "ping", "-6", "-c1", "-W2", _ip(b, 6)).returncode == 0
    assert net.lab.run(net.pods["pod2"], "ping", "-6", "-c1", "-W2", _ip(a, 6)).returncode == 0


@pytest.mark.parametrize("step", ROUTED_STEPS)
def test_failure_after_each_step_is_rolled_back(routed: MacvlanNet, step: str):
    net = routed
    net.pod("pod1")
    before = net.snapshot()
    r = net.cni("ADD", _conf(net), "pod1", args=_args("a-0"), env={"MOOR_FAILPOINT": step, "MOOR_TIMING": "1"})
    assert r.error_code == 199 and step in r.json["msg"]
    after = net.snapshot()
    # moor-ipam's DEL keeps the IP held for this pod (its retry gets the same IP); never active
    ipam_files = [f for f in after["files"] if f[0] == "ipam.sqlite3"]
    assert all('"state": "held"' in line and '"pod": "r/a-0"' in line
               for _, text in ipam_files for line in text.splitlines())
    after["files"] = [f for f in after["files"] if f[0] != "ipam.sqlite3"]
    assert after == before
    retry = net.add("pod1", _conf(net), args=_args("a-0"))
    held = [line.split()[1] for _, text in ipam_files for line in text.splitlines()]
    assert sorted(i["address"].split("/")[0] for i in retry["ips"]) == sorted(held) or not held


def test_the_step_list_is_complete(routed: MacvlanNet):
    r = routed.cni("ADD", _conf(routed), "pod1", args=_args("a-0"), env={"MOOR_TIMING": "1"})
    assert r.code == 0, r.stdout
    assert r.stderr.decode().split("steps: ")[1].strip().split(", ") == ROUTED_STEPS


def test_fixed_ip_pod_recreated_on_another_node_is_reachable_at_the_same_ip(routed: MacvlanNet, tmp_path):
    """The /32 moves with the pod: node B takes over the IP from a shared (here: the same) store
    once the pod object is new (new UID) *and* the old node says its sandbox is gone (its GC no
    longer finds it in the runtime's list); until then node B is told to retry (code 11)."""
    net = routed
    first = net.add("pod1", _conf(net), args=_args("db-0"))
    ip = _ip(first)
    net.lab.run(net.peer, "ip", "route", "replace", f"{ip}/32", "via", "192.0.2.2")
    net.lab.run(net.node, "ip", "route", "replace", "default", "via", "192.0.2.1")
    assert net.lab.ping(net.peer, ip)
    # node B on the same segment
    node_b = net.lab.ns("nodeb")
    net.lab.veth(node_b, "up0", net.peer, "pp1")  # the router's second port, node B's rack
    net.lab.addr(node_b, "up0", "198.51.100.3/24")
    net.lab.addr(net.peer, "pp1", "198.51.100.1/24")
    net.lab.run(node_b, "ip", "route", "add", "default", "via", "198.51.100.1")
    net.lab.run(node_b, "sysctl", "-q", "-w", "net.ipv4.conf.up0.forwarding=1")
    pod_b = net.lab.ns("podb")

    def add_on_b():
        return run_cni(node_b, "ADD", _conf(net), path=net.path, container_id="cid-b", netns=Lab.path(pod_b),
                       ifname="eth0", args="IgnoreUnknown=1;K8S_POD_NAMESPACE=r;K8S_POD_NAME=db-0;K8S_POD_UID=u-new",
                       env={"MOOR_NODE_NAME": "node-b"})
    # the pod is re-created on node B with a new UID while node A still runs the old sandbox
    r = add_on_b()
    assert r.error_code == 11 and "still attached" in r.json["msg"], r.stdout
    assert ipj(pod_b, "link", "show") == [ipj(pod_b, "link", "show")[0]]  # nothing but lo: rolled back
    assert net.lab.ping(net.peer, ip)  # the old pod never lost its IP
    # node A's runtime lost the old sandbox; node A's GC finds it missing from the runtime's list
    sh("ip", "netns", "del", net.pods.pop("pod1"))
    net.lab.namespaces.remove(f"{net.lab.prefix}-pod1")
    gc = dict(_conf(net, "1.1.0"), **{"cni.dev/valid-attachments": []})
    assert run_cni(net.node, "GC", gc, path=net.path, container_id="", netns="", ifname="").code == 0
    r = add_on_b()
    assert r.code == 0, r.stdout
    assert _ip(r.json) == ip
    net.lab.run(net.peer, "ip", "route", "replace", f"{ip}/32", "via", "198.51.100.3")  # BGP's job later
    assert net.lab.ping(net.peer, ip)


NO_NETKIT = ("kernel lacks CONFIG_NETKIT: EOPNOTSUPP creating a netkit link on {release} (netkit is Linux 6.7+; "
             "tests/vm/test_netkit_in_vm.py runs these tests in a VM with Debian's 6.12 cloud kernel)")


def _netkit_here(net: MacvlanNet) -> bool:
    """Whether this kernel can make a netkit pair (a probe pair in the node netns, removed)."""
    r = net.lab.run(net.node, "ip", "link", "add", "nkprobe0", "type", "netkit", check=False)
    if r.returncode == 0:
        net.lab.run(net.node, "ip", "link", "del", "nkprobe0")
    return r.returncode == 0


@pytest.mark.parametrize("device", [None, "auto", "veth"])
def test_device_auto_falls_back_to_veth_where_the_kernel_has_no_netkit(routed: MacvlanNet, device):
    net = routed
    if device == "auto" and _netkit_here(net):  # no device: veth, the default, on any kernel
        pytest.skip("this kernel has netkit: auto picks it (test_netkit_pod_auto_check_del_and_readd_keep_the_ip)")
    net.pod("pod1")
    net.pod("pod2")
    over = {"device": device} if device else {}
    r1, r2 = (net.add(p, _conf(net, **over), args=_args(p)) for p in ("pod1", "pod2"))
    host = ipj(net.node, "-d", "link", "show", r1["interfaces"][0]["name"])[0]
    pod = ipj(net.pods["pod1"], "-d", "link", "show", "eth0")[0]
    assert host["linkinfo"]["info_kind"] == pod["linkinfo"]["info_kind"] == "veth"
    assert net.lab.ping(net.pods["pod1"], _ip(r2)) and net.lab.ping(net.pods["pod1"], _ip(r2, 6))


def test_device_netkit_without_netkit_fails_naming_the_field_and_undoes_everything(routed: MacvlanNet):
    net = routed
    if _netkit_here(net):
        pytest.skip("this kernel has netkit")
    net.pod("pod1")
    before = net.snapshot()
    r = net.cni("ADD", _conf(net, device="netkit"), "pod1", args=_args("a-0"))
    assert r.error_code == 2, r.stdout
    assert r.json["msg"].startswith("unsupported field 'device': \"netkit\"") and "EOPNOTSUPP" in r.json["msg"], r.json
    assert "veth" in r.json["details"]
    after = net.snapshot()
    # as after any failed ADD, moor-ipam keeps the IP held for this pod's retry; nothing else stays
    after["files"] = [f for f in after["files"] if f[0] != "ipam.sqlite3"]
    assert after == before


def test_an_unknown_device_is_refused_by_name(routed: MacvlanNet):
    routed.pod("pod1")
    before = routed.snapshot()
    r = routed.cni("ADD", _conf(routed, device="tap"), "pod1", args=_args("a-0"))
    assert r.error_code == 2 and r.json["msg"] == "unsupported field 'device': 'tap'", r.json
    assert routed.snapshot() == before


def test_netkit_pods_reach_each_other(routed: MacvlanNet):
    """device "netkit" on a kernel that has it: L3 netkit pairs, the pod's default route dev eth0,
    pods reach each other and a router. Skips, naming why, where the kernel has no netkit."""
    net = routed
    net.pod("pod1")
    net.pod("pod2")
    r = net.cni("ADD", _conf(net, device="netkit"), "pod1", args=_args("pod1"))
    if r.error_code == 2 and "EOPNOTSUPP" in r.json["msg"]:
        pytest.skip(NO_NETKIT.format(release=os.uname().release))
    assert r.code == 0, r.stdout
    r1 = r.json
    r2 = net.add("pod2", _conf(net, device="netkit"), args=_args("pod2"))
    for res, pod in ((r1, "pod1"), (r2, "pod2")):
        assert ipj(net.node, "-d", "link", "show", res["interfaces"][0]["name"])[0]["linkinfo"]["info_kind"] == "netkit"
        assert ipj(net.pods[pod], "-d", "link", "show", "eth0")[0]["linkinfo"]["info_kind"] == "netkit"
    assert net.lab.ping(net.pods["pod1"], _ip(r2)) and net.lab.ping(net.pods["pod2"], _ip(r1, 6))


def test_netkit_pod_auto_check_del_and_readd_keep_the_ip(routed: MacvlanNet):
    """device "auto" on a kernel with netkit: a netkit pair; CHECK holds, and names a broken pod
    route; DEL removes the pair and the host routes (IPv4 and IPv6); a re-ADD gets the same IPs."""
    net = routed
    if not _netkit_here(net):
        pytest.skip(NO_NETKIT.format(release=os.uname().release))
    net.pod("pod1")
    net.pod("pod2")
    before = net.snapshot()
    conf = _conf(net, device="auto")
    r1 = net.add("pod1", conf, args=_args("pod1"))
    r2 = net.add("pod2", _conf(net, device="veth"), args=_args("pod2"))  # the kinds mix on one node
    host_if = r1["interfaces"][0]["name"]
    assert ipj(net.node, "-d", "link", "show", host_if)[0]["linkinfo"]["info_kind"] == "netkit"
    assert ipj(net.node, "-d", "link", "show", r2["interfaces"][0]["name"])[0]["linkinfo"]["info_kind"] == "veth"
    # L3: the pod's default routes leave by the device, no gateway neighbour
    assert {(r["dst"], r.get("gateway")) for r in ipj(net.pods["pod1"], "route", "show")} >= {("default", None)}
    assert not [n for n in ipj(net.pods["pod1"], "neigh", "show") if "PERMANENT" in n.get("state", [])]
    # no MAC on either end: the link-locals are random, not EUI-64 of 00:00:00:00:00:00 on both
    lls = [a["local"] for ns, dev in ((net.node, host_if), (net.pods["pod1"], "eth0"))
           for a in ipj(ns, "-6", "addr", "show", "dev", dev)[0]["addr_info"] if a["scope"] == "link"]
    assert len(lls) == 2 and lls[0] != lls[1] and "fe80::200:ff:fe00:0" not in lls, lls
    for v in (4, 6):
        assert net.lab.run(net.pods["pod1"], "ping", f"-{v}", "-c1", "-W2", _ip(r2, v)).returncode == 0
        assert net.lab.run(net.node, "ping", f"-{v}", "-c1", "-W2", _ip(r1, v)).returncode == 0
    assert {r["dev"] for r in ipj(net.node, "route", "show", "proto", "109") if r["dst"] == _ip(r1)} == {host_if}
    assert net.cni("CHECK", dict(conf, prevResult=r1), "pod1", args=_args("pod1")).code == 0
    net.lab.run(net.pods["pod1"], "ip", "-6", "route", "del", "default")
    bad = net.cni("CHECK", dict(conf, prevResult=r1), "pod1", args=_args("pod1"))
    assert bad.error_code == 103 and "default route dev eth0 missing" in bad.json["msg"], bad.json

    for pod, res, c in (("pod1", r1, conf), ("pod2", r2, _conf(net, device="veth"))):
        assert net.cni("DEL", dict(c, prevResult=res), pod, args=_args(pod)).code == 0
    after = net.snapshot()
    assert after["node"] == before["node"] and after["pod1"] == before["pod1"]
    again = net.add("pod1", conf, args=_args("pod1"))  # the same pod again: the same addresses
    assert (_ip(again), _ip(again, 6)) == (_ip(r1), _ip(r1, 6))
    assert ipj(net.node, "-d", "link", "show", again["interfaces"][0]["name"])[0]["linkinfo"]["info_kind"] == "netkit"
