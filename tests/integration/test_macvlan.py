"""MacVlan mode end to end in namespaces: real netlink, the real host-local IPAM plugin."""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from cni.state import Store, digest

from dataplane.nslab import sh
from tests.helpers import ipj, run_cni
from tests.integration.conftest import GATEWAY, MacvlanNet

pytestmark = pytest.mark.integration


def _addr(result: dict, version: int = 4) -> str:
    return next(ip["address"] for ip in result["ips"] if ipaddress.ip_interface(ip["address"]).version == version)


def _ip(result: dict, version: int = 4) -> str:
    return _addr(result, version).split("/")[0]


def test_two_pods_reach_each_other_and_the_physical_peer(net: MacvlanNet):
    r1, r2 = net.add("pod1"), net.add("pod2")
    ip1, ip2 = _ip(r1), _ip(r2)
    assert ip1 != ip2
    assert net.lab.ping(net.pods["pod1"], ip2)
    assert net.lab.ping(net.pods["pod2"], ip1)
    assert net.lab.ping(net.pods["pod1"], GATEWAY)
    # the pod's default route leaves through the physical peer
    routes = ipj(net.pods["pod1"], "route", "show", "default")
    assert routes and routes[0]["gateway"] == GATEWAY and routes[0]["dev"] == "eth0"
    link = ipj(net.pods["pod1"], "-d", "link", "show", "eth0")[0]
    assert link["linkinfo"]["info_kind"] == "macvlan"
    assert link["linkinfo"]["info_data"]["mode"] == "bridge"
    assert link["address"] == r1["interfaces"][0]["mac"]


def test_dual_stack_pod_reaches_peer_over_ipv6(net: MacvlanNet):
    res = net.add("pod1", net.conf(ipv6=True))
    v6 = _ip(res, 6)
    assert net.lab.ping(net.pods["pod1"], "2001:db8:1::1")
    assert net.lab.run(net.pods["pod1"], "ping", "-6", "-c1", "-W2", "2001:db8:1::1").returncode == 0
    addrs = [i["local"] for a in ipj(net.pods["pod1"], "addr", "show", "eth0") for i in a["addr_info"]]
    assert v6 in addrs
    sysctl = net.lab.run(net.pods["pod1"], "sysctl", "-n", "net.ipv6.conf.eth0.ndisc_notify").stdout.strip()
    assert sysctl == b"1"


def test_mac_is_derived_from_the_ip_so_a_fixed_ip_keeps_its_mac(net: MacvlanNet):
    res = net.add("pod1")
    octets = [int(o) for o in _ip(res).split(".")]
    assert res["interfaces"][0]["mac"] == "0a:58:" + ":".join(f"{o:02x}" for o in octets)
    assert net.lab.run(net.pods["pod1"], "sysctl", "-n", "net.ipv4.conf.eth0.arp_notify").stdout.strip() == b"1"


@pytest.mark.parametrize("how", ["runtimeConfig", "CNI_ARGS"])
def test_fixed_mac_and_ip_requested_by_the_runtime(net: MacvlanNet, how: str):
    mac = "02:aa:bb:cc:dd:0e"
    conf = net.conf(ipam={"type": "static", "addresses": [{"address": "192.0.2.77/24", "gateway": GATEWAY}]})
    if how == "runtimeConfig":
        conf["runtimeConfig"] = {"Mac": mac}  # runtimes capitalise keys: read them case-insensitively
        res = net.add("pod1", conf)
    else:
        res = net.add("pod1", conf, args=f"IgnoreUnknown=1;K8S_POD_NAME=web-0;MAC={mac}")
    assert res["interfaces"][0]["mac"] == mac
    assert _addr(res) == "192.0.2.77/24"
    assert ipj(net.pods["pod1"], "link", "show", "eth0")[0]["address"] == mac
    assert net.lab.ping(net.pods["pod1"], GATEWAY)


def _capture(ns_path: str, ifname: str, out: list, ready: threading.Event, stop: threading.Event) -> None:
    from cni.netlink import netns as nsmod
    fd = nsmod.open_netns(ns_path)
    with nsmod.entered(fd):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    s.bind((ifname, 0))
    s.settimeout(0.2)
    ready.set()
    while not stop.is_set():
        try:
            out.append(s.recv(2048))
        except socket.timeout:
            pass
    s.close()


def _add_and_capture(net: MacvlanNet, conf: dict, match) -> tuple[dict, list[bytes]]:
    """ADD a pod while the physical peer captures; the frames `match(frame, result)` accepts."""
    frames: list[bytes] = []
    ready, stop = threading.Event(), threading.Event()
    t = threading.Thread(target=_capture, args=(f"/run/netns/{net.peer}", "pp0", frames, ready, stop))
    t.start()
    ready.wait(5)
    try:
        res = net.add("pod1", conf)
        deadline = time.time() + 3
        hits: list[bytes] = []
        while time.time() < deadline and not hits:
            time.sleep(0.1)
            hits = [f for f in list(frames) if match(f, res)]
    finally:
        stop.set()
        t.join()
    return res, hits


def test_add_announces_the_pod_with_a_gratuitous_arp_the_peer_sees(net: MacvlanNet):
    def garp(f: bytes, res: dict) -> bool:
        ip = ipaddress.ip_address(_ip(res)).packed
        return f[12:14] == b"\x08\x06" and f[28:32] == ip and f[38:42] == ip
    res, garps = _add_and_capture(net, net.conf(), garp)
    assert garps, "no gratuitous ARP for the pod's IP reached the physical peer"
    assert ":".join(f"{b:02x}" for b in garps[0][22:28]) == res["interfaces"][0]["mac"]


def test_add_sends_an_unsolicited_na_for_ipv6(net: MacvlanNet):
    def na(f: bytes, res: dict) -> bool:
        # Ethernet(14) + IPv6(40): next header ICMPv6, type 136, target = the pod's address
        return (f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 136
                and f[62:78] == ipaddress.ip_address(_ip(res, 6)).packed)
    res, nas = _add_and_capture(net, net.conf(ipv6=True), na)
    assert nas, "no unsolicited NA for the pod's IPv6 address reached the physical peer"
    assert nas[0][58] & 0x20  # the Override flag (ICMPv6 starts at 54: type, code, checksum, flags)
    assert ":".join(f"{b:02x}" for b in nas[0][80:86]) == res["interfaces"][0]["mac"]


@pytest.mark.parametrize("version", ["1.1.0", "1.0.0", "0.4.0", "0.3.1"])
def test_result_is_written_in_the_requested_version(net: MacvlanNet, version: str):
    r = net.cni("ADD", net.conf(version, mtu=1400))
    assert r.code == 0, r.stdout
    doc = r.json
    assert doc["cniVersion"] == version
    iface = doc["interfaces"][0]
    assert iface["name"] == "eth0" and iface["sandbox"] == net.pod("pod1")
    ip = doc["ips"][0]
    assert ip["interface"] == 0 and ip["gateway"] == GATEWAY
    if version.startswith("0."):
        assert ip["version"] == "4"
    else:
        assert "version" not in ip
    assert ("mtu" in iface) == (version == "1.1.0")
    assert ipj(net.pods["pod1"], "link", "show", "eth0")[0]["mtu"] == 1400
    if version != "0.3.1":
        assert net.cni("CHECK", dict(net.conf(version, mtu=1400), prevResult=doc)).code == 0
    assert net.cni("DEL", dict(net.conf(version, mtu=1400), prevResult=doc)).code == 0


def test_check_passes_then_names_what_was_tampered_with(net: MacvlanNet):
    res = net.add("pod1")
    conf = dict(net.conf(), prevResult=res)
    ok = net.cni("CHECK", conf)
    assert ok.code == 0 and ok.stdout == b""
    pod = net.pods["pod1"]
    net.lab.run(pod, "ip", "link", "set", "eth0", "address", "02:00:00:00:00:99")
    net.lab.run(pod, "ip", "addr", "flush", "dev", "eth0")
    bad = net.cni("CHECK", conf)
    assert bad.code != 0 and bad.error_code == 103
    msg = bad.json["msg"]
    assert "MAC is 02:00:00:00:00:99" in msg
    assert f"address {_addr(res)} missing" in msg
    assert "route 0.0.0.0/0 via 192.0.2.1 missing" in msg
    net.lab.run(pod, "ip", "link", "del", "eth0")
    gone = net.cni("CHECK", conf)
    assert gone.error_code == 103 and "eth0 does not exist" in gone.json["msg"]


def test_del_twice_and_containerd_style_second_del_succeed(net: MacvlanNet):
    net.pod("pod1")
    before = net.snapshot()
    res = net.add("pod1")
    conf = dict(net.conf(), prevResult=res)
    assert net.cni("DEL", conf).code == 0
    assert net.cni("DEL", conf).code == 0
    # containerd: a further DEL with an empty CNI_NETNS and no prevResult
    assert net.cni("DEL", net.conf(), netns="").code == 0
    assert net.snapshot() == before


def test_del_after_the_netns_is_gone_releases_the_ip(net: MacvlanNet):
    res = net.add("pod1")
    sh("ip", "netns", "del", net.pods["pod1"])
    net.lab.namespaces.remove(net.pods["pod1"])
    del net.pods["pod1"]
    r = net.cni("DEL", dict(net.conf(), prevResult=res), netns="/run/netns/does-not-exist")
    assert r.code == 0, r.stdout
    assert not list((net.tmp / "ipam").rglob("192.0.2.*"))


def test_readd_with_the_same_interface_name_is_refused_and_changes_nothing(net: MacvlanNet):
    net.add("pod1")
    before = net.snapshot()
    r = net.cni("ADD", net.conf(), container_id="other")
    assert r.error_code == 104
    assert net.snapshot() == before


def test_host_shim_lets_the_node_reach_its_macvlan_pods(net: MacvlanNet):
    conf = net.conf(hostShim=True)
    res = net.add("pod1", conf)
    ip = _ip(res)
    # the classic macvlan limitation: without the shim, the node cannot reach its own pods
    assert net.lab.ping(net.node, ip)
    routes = ipj(net.node, "route", "show", f"{ip}/32")
    assert routes and routes[0]["dev"].startswith("mshim")
    res2 = net.add("pod2", conf)
    assert net.cni("DEL", dict(conf, prevResult=res), "pod1").code == 0
    assert ipj(net.node, "route", "show", f"{ip}/32") == []
    shim = routes[0]["dev"]
    assert ipj(net.node, "link", "show", shim), "shim removed while pod2 still uses it"
    assert net.cni("DEL", dict(conf, prevResult=res2), "pod2").code == 0
    links = [l["ifname"] for l in ipj(net.node, "link", "show")]
    assert shim not in links, "shim left behind after the last pod left"


def test_chained_add_appends_to_prev_result(net: MacvlanNet):
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "other0", "mac": "02:00:00:00:00:01"}],
            "ips": [{"address": "198.51.100.5/24", "interface": 0}]}
    res = net.add("pod1", dict(net.conf(), prevResult=prev))
    assert [i["name"] for i in res["interfaces"]] == ["other0", "eth0"]
    assert res["ips"][0]["address"] == "198.51.100.5/24"
    assert res["ips"][1]["interface"] == 1


def test_gc_judges_no_young_attachment_and_waits_the_grace_after_marking(net: MacvlanNet):
    """A runtime's list can predate an ADD that finished since, and two overlapping GCs can both
    hold such a list: a record younger than gcGraceSeconds is not marked, and a marked one is
    released only by a pass gcGraceSeconds after the mark. Ages are set on the record itself
    (file time, mark time), so no clock in the test matters."""
    conf = net.conf("1.1.0", gcGraceSeconds=3600)
    net.add("pod1", conf)
    stale = dict(conf, **{"cni.dev/valid-attachments": []})  # as listed before pod1's ADD
    store = Store(str(net.tmp / "state"))
    path = store._path("mnet", "cid-pod1", "eth0")

    def gc() -> None:
        r = run_cni(net.node, "GC", stale, path=net.path, container_id="", netns="", ifname="")
        assert r.code == 0, r.stdout

    for _ in range(2):  # young: neither pass judges it
        gc()
    assert store.get("mnet", "cid-pod1", "eth0").gc_seen == 0
    old = time.time() - 7200
    os.utime(path, (old, old))  # written two hours ago
    gc()
    seen = store.get("mnet", "cid-pod1", "eth0").gc_seen
    assert seen > old
    gc()  # marked just now: not yet
    assert store.get("mnet", "cid-pod1", "eth0") is not None
    assert any(a["ifname"] == "eth0" for a in ipj(net.pods["pod1"], "link", "show"))
    rec = json.loads(Path(path).read_text())
    rec["gc_seen"] = seen - 3600  # the mark is a grace period old
    Path(path).write_text(json.dumps(rec))
    gc()
    assert store.get("mnet", "cid-pod1", "eth0") is None
    assert not any(a["ifname"] == "eth0" for a in ipj(net.pods["pod1"], "link", "show"))


def test_gc_releases_attachments_the_runtime_no_longer_lists(net: MacvlanNet):
    conf = net.conf("1.1.0", hostShim=True, gcGraceSeconds=0)
    r1, r2 = net.add("pod1", conf), net.add("pod2", conf)
    gc_conf = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "cid-pod2", "ifname": "eth0"}]})
    r = run_cni(net.node, "GC", gc_conf, path=net.path, container_id="", netns="", ifname="")
    assert r.code == 0, r.stdout
    records = sorted(p.name for p in (net.tmp / "state" / "networks" / "mnet").iterdir())
    assert len(records) == 2  # the first pass only marks: an ADD may be in flight
    assert ipj(net.node, "route", "show", f"{_ip(r1)}/32") != []
    # SPEC 1.1.0's own name for the key works too
    gc_conf = dict(conf, **{"cni.dev/attachments": [{"containerID": "cid-pod2", "ifname": "eth0"}]})
    r = run_cni(net.node, "GC", gc_conf, path=net.path, container_id="", netns="", ifname="")
    assert r.code == 0, r.stdout
    records = sorted(p.name for p in (net.tmp / "state" / "networks" / "mnet").iterdir())
    assert records == [digest("cid-pod2", "eth0") + ".json"]  # file names hash the container ID

    assert ipj(net.node, "route", "show", f"{_ip(r1)}/32") == []
    assert ipj(net.node, "route", "show", f"{_ip(r2)}/32") != []
    assert [l["ifname"] for l in ipj(net.pods["pod1"], "link", "show")] == ["lo"]  # leaked link removed
    # host-local's lease of pod1 released; pod2's and the shim's (pod2 still uses the shim) kept
    [shim_ips] = net.shims().values()
    assert sorted(p.name for p in (net.tmp / "ipam").rglob("192.0.2.*")) == sorted([_ip(r2), *shim_ips])


@pytest.mark.parametrize("extra", [
    {}, {"cni.dev/valid-attachments": None}, {"cni.dev/valid-attachments": {"containerID": "x"}},
    {"cni.dev/valid-attachments": [1, "x", None, {"containerID": 5}]},
    {"cni.dev/valid-attachments": [{"containerID": ["cid-pod1"], "ifname": "eth0"}]},
    {"cni.dev/valid-attachments": [{"containerID": "cid-pod1"}]},
    {"cni.dev/valid-attachments": [], "cni.dev/attachments": "all"},
], ids=["missing", "null", "object", "junk-entries", "list-as-id", "no-ifname", "second-key-junk"])
def test_gc_with_a_missing_or_malformed_attachment_list_is_refused_and_collects_nothing(net: MacvlanNet, extra):
    conf = net.conf("1.1.0", hostShim=True)
    net.add("pod1", conf)
    before = net.snapshot()
    for _ in range(2):  # two passes would release a leak: nothing may even be marked
        r = run_cni(net.node, "GC", dict(conf, **extra), path=net.path, container_id="", netns="", ifname="")
        assert r.error_code == 7 and "attachments" in r.json["msg"], r.stdout
    assert net.snapshot() == before


def test_status_reports_a_missing_master(net: MacvlanNet):
    ok = run_cni(net.node, "STATUS", net.conf("1.1.0"), path=net.path, container_id="", netns="", ifname="")
    assert ok.code == 0 and ok.stdout == b""
    bad = run_cni(net.node, "STATUS", net.conf("1.1.0", master="nope0"), path=net.path,
                  container_id="", netns="", ifname="")
    assert bad.error_code == 50 and "nope0" in bad.json["msg"]
    old = run_cni(net.node, "STATUS", net.conf("1.0.0"), path=net.path, container_id="", netns="", ifname="")
    assert old.error_code == 1


@pytest.mark.parametrize("mode", ["private", "vepa", "passthru"])
def test_other_macvlan_modes(net: MacvlanNet, mode: str):
    res = net.add("pod1", net.conf(macvlanMode=mode))
    link = ipj(net.pods["pod1"], "-d", "link", "show", "eth0")[0]
    assert link["linkinfo"]["info_data"]["mode"] == mode
    assert net.lab.ping(net.pods["pod1"], GATEWAY)
    assert net.cni("CHECK", dict(net.conf(macvlanMode=mode), prevResult=res)).code == 0


def test_version_reply(net: MacvlanNet):
    r = run_cni(None, "VERSION", {"cniVersion": "1.0.0"}, path=net.path)
    assert r.code == 0
    assert r.json == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    assert json.loads(run_cni(None, "VERSION", b"", path=net.path).stdout)["cniVersion"] == "1.1.0"


def test_second_network_keeps_the_pods_existing_default_route(net: MacvlanNet):
    pod = net.pod("pod1")
    ns = net.pods["pod1"]
    # the pod's primary network (eth0) came first and owns the default route
    sh("ip", "link", "add", "prim0", "netns", ns, "type", "veth", "peer", "name", "prim1", "netns", net.node)
    net.lab.run(ns, "ip", "link", "set", "prim0", "up")
    net.lab.run(ns, "ip", "addr", "add", "203.0.113.2/24", "dev", "prim0")
    net.lab.run(ns, "ip", "route", "add", "default", "via", "203.0.113.1")
    r = net.cni("ADD", net.conf(), ifname="net1", netns=pod)
    assert r.code == 0, r.stdout
    default = ipj(ns, "route", "show", "default")
    assert len(default) == 1 and default[0]["gateway"] == "203.0.113.1"
    assert all(rt["dst"] != "0.0.0.0/0" for rt in r.json.get("routes", []))
    assert net.lab.ping(ns, GATEWAY)  # on-link through net1
    assert net.cni("CHECK", dict(net.conf(), prevResult=r.json), ifname="net1").code == 0


def test_concurrent_adds_and_dels_share_the_host_shim_safely(net: MacvlanNet):
    """kubelet runs plugins in parallel: the shim is created once, survives while any pod uses it,
    and goes with the last one (the parent lock serialises create/delete)."""
    from concurrent.futures import ThreadPoolExecutor
    conf = net.conf(hostShim=True)
    first = [f"pod{i}" for i in range(6)]
    second = [f"pod{i}" for i in range(6, 10)]
    for p in first + second:
        net.pod(p)
    with ThreadPoolExecutor(6) as ex:
        assert all(r.code == 0 for r in ex.map(lambda p: net.cni("ADD", conf, p), first))
        # DELs of the first wave race ADDs of the second
        dels = ex.map(lambda p: net.cni("DEL", conf, p), first)
        adds = list(ex.map(lambda p: net.cni("ADD", conf, p), second))
        assert all(r.code == 0 for r in dels) and all(r.code == 0 for r in adds), [a.stdout for a in adds]
    shims = [l["ifname"] for l in ipj(net.node, "link", "show") if l["ifname"].startswith("mshim")]
    assert len(shims) == 1
    for r in adds:
        assert net.lab.ping(net.node, _ip(r.json))
    with ThreadPoolExecutor(4) as ex:
        assert all(r.code == 0 for r in ex.map(lambda p: net.cni("DEL", conf, p), second))
    assert not [l for l in ipj(net.node, "link", "show") if l["ifname"].startswith("mshim")]
    assert not list((net.tmp / "state" / "networks" / "mnet").iterdir())
    assert ipj(net.node, "route", "show", "proto", "110") == []


@pytest.mark.parametrize("how", ["runtimeConfig.ips", "CNI_ARGS IP=", "args.cni.ips"])
def test_explicit_ip_reaches_the_delegated_ipam(net: MacvlanNet, how: str):
    conf = net.conf()
    kw = {}
    if how == "runtimeConfig.ips":
        conf["capabilities"] = {"ips": True}
        conf["runtimeConfig"] = {"ips": ["192.0.2.42/24"]}
    elif how == "args.cni.ips":
        conf["args"] = {"cni": {"ips": ["192.0.2.42"]}}
    else:
        kw["args"] = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=db-0;IP=192.0.2.42"
    res = net.add("pod1", conf, **kw)
    assert _addr(res) == "192.0.2.42/24"
    assert res["interfaces"][0]["mac"] == "0a:58:c0:00:02:2a"  # and the MAC follows the fixed IP


def test_interface_names_with_dots_work(net: MacvlanNet):
    res = net.add("pod1", ifname="net1.5")
    assert res["interfaces"][0]["name"] == "net1.5"
    assert net.lab.run(net.pods["pod1"], "cat", "/proc/sys/net/ipv4/conf/net1.5/arp_notify").stdout.strip() == b"1"
    assert net.cni("DEL", dict(net.conf(), prevResult=res), ifname="net1.5").code == 0


def test_a_late_del_never_removes_the_route_of_the_pod_now_holding_the_ip(net: MacvlanNet):
    """With a one-address range, B gets A's IP after A's DEL; a repeated DEL of A must not touch B."""
    ipam = {"type": "host-local", "dataDir": str(net.tmp / "ipam"),
            "ranges": [[{"subnet": "192.0.2.0/24", "rangeStart": "192.0.2.10", "rangeEnd": "192.0.2.10",
                         "gateway": "192.0.2.1"}]]}
    # a static shim address: the one-address range is the pods' alone
    conf = net.conf(hostShim={"addresses": ["192.0.2.254/24"]}, ipam=ipam)
    a = net.add("pod1", conf)
    assert net.cni("DEL", dict(conf, prevResult=a), "pod1").code == 0
    b = net.add("pod2", conf)
    assert _ip(a) == _ip(b)
    assert net.cni("DEL", dict(conf, prevResult=a), "pod1").code == 0  # containerd's repeat
    assert ipj(net.node, "route", "show", f"{_ip(b)}/32") != []
    assert net.lab.ping(net.node, _ip(b))


def test_an_altname_master_shares_the_shim_with_the_kernel_name(net: MacvlanNet):
    sh("ip", "-n", net.node, "link", "property", "add", "dev", "up0", "altname", "uplink0")
    a = net.add("pod1", net.conf(hostShim=True))
    b = net.add("pod2", net.conf(hostShim=True, master="uplink0"))
    shims = [l["ifname"] for l in ipj(net.node, "link", "show") if l["ifname"].startswith("mshim")]
    assert len(shims) == 1
    assert net.cni("DEL", dict(net.conf(hostShim=True), prevResult=a), "pod1").code == 0
    assert net.lab.ping(net.node, _ip(b))  # pod2's route and the shim survive
    assert net.cni("DEL", dict(net.conf(hostShim=True, master="uplink0"), prevResult=b), "pod2").code == 0
    assert not [l for l in ipj(net.node, "link", "show") if l["ifname"].startswith("mshim")]
