"""moor-ipam under moor and under the reference plugins, in namespaces."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from dataplane.nslab import sh
from tests import etcd_server
from tests.helpers import run_cni
from tests.integration.conftest import GATEWAY, MacvlanNet

pytestmark = pytest.mark.integration


def _ipam(net: MacvlanNet, **over) -> dict:
    ipam = {"type": "moor-ipam", "dataDir": str(net.tmp / "ipam"), "holdSeconds": 600,
            "pools": [{"cidr": "192.0.2.0/24", "rangeStart": "192.0.2.10", "rangeEnd": "192.0.2.60",
                       "gateway": GATEWAY},
                      {"cidr": "2001:db8:1::/64", "rangeStart": "2001:db8:1::10", "rangeEnd": "2001:db8:1::60",
                       "gateway": "2001:db8:1::1"}]}
    ipam.update(over)
    return ipam


def _moor_ipam_list(net: MacvlanNet, conf: dict) -> str:
    path = net.tmp / "net.conf"
    path.write_text(json.dumps(conf))
    p = subprocess.run([os.path.join(net.path, "moor-ipam"), "list", str(path), "--json"], capture_output=True,
                       text=True, check=True)
    return json.dumps({r["ip"]: r for r in json.loads(p.stdout)})


def _args(name: str, ns: str = "prod") -> str:
    return f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID=uid-{name}"


def test_statefulset_pod_keeps_ip_and_mac_through_recreation(net: MacvlanNet):
    conf = net.conf(ipam=_ipam(net))
    first = net.add("pod1", conf, args=_args("db-0"), container_id="c-old")
    net.add("pod2", conf, args=_args("db-1"), container_id="c-other")
    assert net.cni("DEL", dict(conf, prevResult=first), "pod1", container_id="c-old", args=_args("db-0")).code == 0
    # the pod comes back on a new sandbox with a new container ID: same IPs, same MAC
    again = net.add("pod3", conf, args=_args("db-0"), container_id="c-new")
    assert [i["address"] for i in again["ips"]] == [i["address"] for i in first["ips"]]
    assert again["interfaces"][0]["mac"] == first["interfaces"][0]["mac"]
    assert net.lab.ping(net.pods["pod3"], GATEWAY)
    assert net.lab.run(net.pods["pod3"], "ping", "-6", "-c1", "-W2", "2001:db8:1::1").returncode == 0


def test_late_del_of_the_old_container_does_not_free_the_new_pods_ip(net: MacvlanNet):
    conf = net.conf(ipam=_ipam(net))
    old = net.add("pod1", conf, args=_args("db-0"), container_id="c-old")
    sh("ip", "netns", "del", net.pods.pop("pod1"))  # the old sandbox is gone, its DEL not yet run
    net.lab.namespaces.remove(f"{net.lab.prefix}-pod1")
    new = net.add_after_netns_gone("pod2", conf, args=_args("db-0"), container_id="c-new")  # before DEL came
    assert new["ips"] == old["ips"]
    assert net.cni("DEL", conf, "pod1", container_id="c-old", args=_args("db-0"),
                   netns="/run/netns/gone").code == 0
    other = net.add("pod3", conf, args=_args("web-0"), container_id="c-web")
    assert other["ips"][0]["address"] != new["ips"][0]["address"]
    assert net.cni("CHECK", dict(conf, prevResult=new), "pod2", container_id="c-new").code == 0


def test_explicit_ip_conflict_names_the_holder_and_changes_nothing(net: MacvlanNet):
    conf = net.conf(ipam=_ipam(net))
    net.add("pod1", conf, args=_args("db-0") + ";IP=192.0.2.33", container_id="c1")
    net.pod("pod2")
    before = net.snapshot()
    r = net.cni("ADD", conf, "pod2", container_id="c2", args=_args("db-1") + ";IP=192.0.2.33")
    assert r.error_code == 111 and "prod/db-0" in r.json["msg"]
    assert net.snapshot() == before


def test_reference_macvlan_plugin_uses_moor_ipam(net: MacvlanNet):
    conf = {"cniVersion": "1.0.0", "name": "refnet", "type": "macvlan", "master": "up0", "mode": "bridge",
            "ipam": _ipam(net)}
    r = net.cni("ADD", conf, "pod1", args=_args("ref-0"))
    assert r.code == 0, r.stdout
    ip = r.json["ips"][0]["address"]
    assert ip == "192.0.2.10/24"
    assert net.lab.ping(net.pods["pod1"], GATEWAY)
    assert net.cni("DEL", dict(conf, prevResult=r.json), "pod1", args=_args("ref-0")).code == 0
    again = net.cni("ADD", conf, "pod2", container_id="cid-x", args=_args("ref-0"))
    assert again.json["ips"][0]["address"] == ip


def test_inventory_hook_learns_bindings_and_can_refuse(net: MacvlanNet):
    log = net.tmp / "inventory.jsonl"
    hook = net.tmp / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat >> {log}\necho >> {log}\n[ ! -e {net.tmp}/refuse ]\n")
    hook.chmod(0o755)
    conf = net.conf(ipam=_ipam(net, inventoryHook=[str(hook)]))
    res = net.add("pod1", conf, args=_args("auth-0"), container_id="c1")
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert events[0]["event"] == "allocate"
    assert {r["ip"] for r in events[0]["reservations"]} == {i["address"].split("/")[0] for i in res["ips"]}
    assert events[0]["reservations"][0]["pod"] == "prod/auth-0"
    (net.tmp / "refuse").touch()
    net.pod("pod2")
    before = net.snapshot()
    r = net.cni("ADD", conf, "pod2", container_id="c2", args=_args("auth-1"))
    assert r.error_code == 113 and "refused allocate" in r.json["msg"]
    assert net.snapshot() == before  # the allocation was rolled back with the rest of the ADD


def test_etcd_store_and_unreachable_etcd(net: MacvlanNet):
    try:
        etcd = etcd_server.start(net.tmp / "etcd", netns=net.node)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    try:
        conf = net.conf(ipam=_ipam(net, etcd={"endpoints": [etcd.endpoint]}))
        res = net.add("pod1", conf, args=_args("e-0"))
        assert res["ips"][0]["address"] == "192.0.2.10/24"
        assert net.lab.ping(net.pods["pod1"], GATEWAY)
    finally:
        etcd.stop()
    net.pod("pod2")
    before = net.snapshot()
    r = net.cni("ADD", conf, "pod2", container_id="c2", args=_args("e-1"))
    assert r.error_code == 11 and "etcd is unreachable" in r.json["msg"]
    assert net.snapshot() == before


def test_gc_with_moor_ipam_needs_two_passes(net: MacvlanNet):
    conf = net.conf("1.1.0", ipam=_ipam(net, gcGraceSeconds=0))
    net.add("pod1", conf, args=_args("a-0"), container_id="keep")
    leak = net.add("pod2", conf, args=_args("b-0"), container_id="leak")
    sh("ip", "netns", "del", net.pods.pop("pod2"))  # the runtime lost this sandbox
    net.lab.namespaces.remove(f"{net.lab.prefix}-pod2")
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    states = []
    for _ in range(2):
        assert run_cni(net.node, "GC", gc, path=net.path, container_id="", netns="", ifname="").code == 0
        states.append(json.loads(_moor_ipam_list(net, conf))[leak["ips"][0]["address"].split("/")[0]]["state"])
    assert states == ["active", "held"]  # marked on the first pass, released to its hold on the second
    r = net.cni("ADD", conf, "pod3", container_id="new", args=_args("c-0") + ";IP=" +
                leak["ips"][0]["address"].split("/")[0])
    assert r.error_code == 111  # released to b-0's hold, not to anyone else
    again = net.add("pod4", conf, args=_args("b-0"), container_id="b-again")
    assert again["ips"][0]["address"] == leak["ips"][0]["address"]
