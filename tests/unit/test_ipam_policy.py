"""The allocation policy, pure: fixed IPs through updates, workloads, holds, explicit IPs, GC."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from cni.spec.errors import CNIError
from ipam import config, policy
from ipam.identity import Identity, identify, workload_of
from ipam.reservation import ACTIVE, COOLING, HELD


def _conf(**over) -> config.IPAMConf:
    ipam = {"type": "moor-ipam", "pools": [{"cidr": "192.0.2.0/24", "rangeStart": "192.0.2.10",
                                           "rangeEnd": "192.0.2.14", "gateway": "192.0.2.1",
                                           "exclude": ["192.0.2.12/32"]}],
            "holdSeconds": 300, "cooldownSeconds": 30, "gcGraceSeconds": 0}
    ipam.update(over)
    return config.parse({"name": "net", "ipam": ipam})


class Net:
    """A network's reservations held in memory, changed only through the policy, as a store would."""

    def __init__(self, conf: config.IPAMConf):
        self.conf = conf
        self.records: dict = {}
        self.now = 1000.0

    def _tx(self, fn):
        view = policy.View(dict(self.records))
        out = fn(view)
        for ip, r in view.changes.items():
            if r is None:
                self.records.pop(ip, None)
            else:
                self.records[ip] = r
        return out

    def add(self, cid: str, name: str = "", ns: str = "ns", ips=(), key: str | None = None, sticky: str = "pod",
            uid: str = "", node: str = "n1", gone: bool = False):
        args = {"K8S_POD_NAMESPACE": ns, "K8S_POD_NAME": name, "K8S_POD_UID": uid} if name else {}
        ident = identify(args, {}, sticky)
        if key is not None:
            ident.key = key
        ident.explicit = [ipaddress.ip_address(i) for i in ips]
        req = policy.Request(container_id=cid, ifname="eth0", ident=ident, node=node, now=self.now,
                             sandbox_gone=lambda r: gone)
        return [r.ip for r in self._tx(lambda v: policy.allocate(v, self.conf, req))]

    def delete(self, cid: str):
        return self._tx(lambda v: policy.release(v, self.conf, cid, "eth0", self.now))

    def gc(self, live_cids: set):
        return self._tx(lambda v: policy.collect(v, self.conf, "n1", lambda r: r.container_id in live_cids, self.now))


def test_statefulset_pod_keeps_its_ip_through_delete_and_recreate():
    n = Net(_conf())
    ip = n.add("c1", "web-0")
    n.add("other", "web-1")
    n.delete("c1")
    assert n.records[ip[0]].state == HELD
    assert n.add("c2", "web-0") == ip  # new container ID, same identity
    assert n.records[ip[0]].container_id == "c2"


def test_recreated_pod_takes_its_ip_and_the_old_containers_late_del_frees_nothing():
    """The garbage-collection bug Spiderpool/Whereabouts/Calico shipped: same name, new UID."""
    n = Net(_conf())
    ip = n.add("old", "db-0", uid="u1")
    with pytest.raises(CNIError) as e:  # a new pod object while the old sandbox still runs: one IP, one pod
        n.add("new", "db-0", uid="u2")
    assert e.value.code == 11 and n.records[ip[0]].container_id == "old"
    assert n.add("new", "db-0", uid="u2", gone=True) == ip  # its netns is gone on this node: proof
    seq = n.records[ip[0]].seq
    assert n.delete("old") == []  # the late DEL of the old container
    r = n.records[ip[0]]
    assert r.state == ACTIVE and r.container_id == "new" and r.seq == seq
    n.gc({"new"})
    n.gc({"new"})
    assert n.records[ip[0]].state == ACTIVE


def test_takeover_from_another_node_needs_that_nodes_gc_to_say_the_old_pod_is_gone():
    n = Net(_conf())
    ip = n.add("old", "db-0", uid="u1", node="n1")
    with pytest.raises(CNIError) as e:  # re-created on n2 (earlier UID), n1 has said nothing
        n.add("new", "db-0", uid="u2", node="n2", gone=True)
    assert e.value.code == 11 and "GC of n1" in e.value.details
    n.gc(set())  # n1's GC finds the old attachment missing from its runtime's list: marked
    assert n.records[ip[0]].gc_mark == n.records[ip[0]].seq
    with pytest.raises(CNIError):  # the same pod object (same UID) never runs on two nodes: no proof
        n.add("new", "db-0", uid="u1", node="n2")
    assert n.add("new", "db-0", uid="u2", node="n2") == ip
    assert n.records[ip[0]].node == "n2"


def test_a_rolled_back_add_puts_the_previous_holder_back_exactly():
    n = Net(_conf())
    ip = n.add("old", "db-0", uid="u1")
    n.delete("old")
    before = n.records[ip[0]]
    assert n.add("new", "db-0", uid="u2") == ip  # sticky: takes its held IP back
    assert n.records[ip[0]].container_id == "new" and n.records[ip[0]].prev is not None
    n._tx(lambda v: policy.undo(v, "new", "eth0"))  # the CNI plugin's ADD failed later: rollback
    assert n.records[ip[0]] == before  # state, holder and seq as they were
    fresh = n.add("c9", "web-9")
    n._tx(lambda v: policy.undo(v, "c9", "eth0"))
    assert fresh[0] not in n.records  # nobody had it: it is simply free again
    ip2 = n.add("a", "db-1", uid="u1")
    n._tx(lambda v: policy.undo(v, "a", "eth0", {ip2[0]: 999}))  # another seq: not what was taken
    assert n.records[ip2[0]].container_id == "a"


def test_a_corrupt_record_is_never_handed_out_and_blocks_nothing_else():
    from ipam.reservation import CORRUPT, Reservation
    n = Net(_conf())
    n.records["192.0.2.10"] = Reservation.decode("192.0.2.10", '{"ip": "192.0.2.10", "pool": "p", "state": "active"')
    n.records["192.0.2.11"] = Reservation.decode("192.0.2.11", '{"ip": "192.0.2.11", "pool": "p", "state": "active", "seq": "x"}')
    assert {r.state for r in n.records.values()} == {CORRUPT}
    assert n.add("c1", "web-0") == ["192.0.2.13"]  # .12 is excluded; the corrupt ones are in use
    with pytest.raises(CNIError) as e:
        n.add("c2", "web-1", ips=["192.0.2.10"])
    assert e.value.code == policy.HELD_BY_OTHER and "corrupt" in e.value.msg
    assert n.delete("c1")
    with pytest.raises(CNIError):  # repair needs --force
        n._tx(lambda v: policy.release_ip(v, n.conf, "192.0.2.10", n.now))
    n._tx(lambda v: policy.release_ip(v, n.conf, "192.0.2.10", n.now, force=True))
    assert n.records["192.0.2.10"].state == COOLING


@pytest.mark.parametrize("key,data,why", [
    ("192.0.2.5", "not json", "Expecting value"),
    ("192.0.2.5", "[1]", "not a JSON object"),
    ("192.0.2.5", '{"ip": "192.0.2.6", "pool": "p", "state": "active"}', "names 192.0.2.6"),
    ("192.0.2.5", '{"ip": "192.0.2.5", "state": "active"}', "no 'pool'"),
    ("192.0.2.5", '{"ip": "192.0.2.5", "pool": "p", "state": "gone"}', "unknown state"),
    ("192.0.2.5", '{"ip": "192.0.2.5", "pool": "p", "state": "held", "hold_until": "soon"}', "hold_until"),
    ("192.0.2.5", '{"ip": "192.0.2.5", "pool": "p", "state": "held", "seq": true}', "seq"),
    ("2001:DB8::5", '{"ip": "2001:db8::5", "pool": "p", "state": "held"}', "non-canonical"),
    ("x", '{"ip": "x", "pool": "p", "state": "held"}', "does not appear to be"),
    ("192.0.2.5", "[" * 100000, "recursion"),
])
def test_stored_records_that_do_not_parse_are_quarantined(key, data, why):
    from ipam.reservation import CORRUPT, Reservation
    r = Reservation.decode(key, data)
    assert r.state == CORRUPT and why in r.detail
    assert r.ip == (key.lower() if ":" in key else key)  # keyed by the address it shadows


def test_no_takeover_without_proof_the_old_container_is_gone():
    n = Net(_conf())
    ip = n.add("c1", "web-0", uid="u1")
    for kw in ({"uid": "u1"}, {"uid": "", "node": "n2", "gone": True}, {"uid": "u1", "gone": False},
               {"uid": "u2", "gone": False}):
        with pytest.raises(CNIError) as e:  # its old sandbox may still run: wait for the DEL
            n.add("c2", "web-0", **kw)
        assert e.value.code == 11 and "still attached" in e.value.msg
    assert n.add("c2", "web-0", uid="u1", gone=True) == ip  # its old sandbox on this node is gone
    assert n.records[ip[0]].container_id == "c2"


def test_gc_waits_the_grace_period():
    n = Net(_conf(gcGraceSeconds=60))
    n.add("leak", "l-0")
    assert n.gc(set()) == ([], [])  # too young: an ADD may be in flight
    n.now += 61
    marked, released = n.gc(set())
    assert marked and not released
    assert n.gc(set())[1] == []  # the second pass comes too soon
    n.now += 61
    assert n.gc(set())[1]


def test_deployment_replacement_gets_an_ip_of_its_workload_back():
    n = Net(_conf(sticky="workload"))
    a = n.add("c1", "api-7d9f8b6c5d-x2x4z", sticky="workload")
    n.add("c2", "api-7d9f8b6c5d-kq7wn", sticky="workload")
    n.add("c3", "other-5c9b8d7f6d-tt2jw", sticky="workload")
    n.delete("c1")
    assert n.add("c4", "api-6b8d9c7f5b-pp9lx", sticky="workload") == a  # a new ReplicaSet's pod
    with pytest.raises(CNIError) as e:  # siblings never take each other's active IPs
        n.add("c5", "api-6b8d9c7f5b-mm2lx", sticky="workload", ips=[a[0]])
    assert e.value.code == policy.HELD_BY_OTHER


def test_hold_expiry_then_cooldown_frees_the_ip_for_others():
    n = Net(_conf())
    ip = n.add("c1", "web-0")
    n.delete("c1")
    n.now += 299
    assert n.add("c2", "x-0") != ip
    n.now += 1 + 29  # hold over, still cooling
    assert ip[0] not in n.add("c3", "y-0")
    n.now += 1
    n.gc({"c2", "c3"})
    assert n.add("c4", "z-0") == ip


def test_never_keeps_the_ip_for_its_identity_forever():
    n = Net(_conf(release="never"))
    ip = n.add("c1", "web-0")
    n.delete("c1")
    n.now += 10 ** 7
    n.gc(set())
    assert n.records[ip[0]].state == HELD
    assert ip[0] not in n.add("c2", "other-0")
    assert n.add("c3", "web-0") == ip


def test_immediate_release_still_cools_down():
    n = Net(_conf(release="immediate"))
    ip = n.add("c1", "web-0")
    n.delete("c1")
    assert n.records[ip[0]].state == COOLING
    assert n.add("c2", "x-0") != ip


def test_explicit_ip_conflicts_name_the_holder():
    n = Net(_conf())
    n.add("c1", "web-0", ips=["192.0.2.13"])
    with pytest.raises(CNIError) as e:
        n.add("c2", "web-1", ips=["192.0.2.13"])
    assert e.value.code == 111 and "ns/web-0" in e.value.msg and "c1" in e.value.msg
    for bad, code in (("198.51.100.1", 110), ("192.0.2.12", 110), ("192.0.2.1", 110)):
        with pytest.raises(CNIError) as e:
            n.add("c3", "web-2", ips=[bad])
        assert e.value.code == code


def test_idempotent_add_and_exhaustion():
    n = Net(_conf())
    assert n.add("c1", "a-0") == n.add("c1", "a-0")
    for i in range(3):
        n.add(f"f{i}", f"f-{i}")
    with pytest.raises(CNIError) as e:
        n.add("c9", "z-9")
    assert e.value.code == policy.EXHAUSTED


def test_gc_releases_a_leak_only_on_the_second_pass():
    n = Net(_conf())
    ip = n.add("leak", "l-0")
    marked, released = n.gc(set())
    assert [r.ip for r in marked] == ip and released == []
    marked, released = n.gc(set())
    assert [r.ip for r in released] == ip and n.records[ip[0]].state == HELD


def test_gc_mark_is_void_if_the_reservation_changed_in_between():
    n = Net(_conf())
    ip = n.add("c1", "w-0", uid="u1")
    n.gc(set())  # marked
    n.add("c2", "w-0", uid="u2", gone=True)  # pod re-created: takeover bumps seq
    _, released = n.gc(set())
    assert released == []  # re-validated: the mark was for the old owner
    assert n.records[ip[0]].container_id == "c2" and n.records[ip[0]].state == ACTIVE


def test_dual_stack_gives_one_address_per_family():
    conf = config.parse({"name": "n", "ipam": {"pools": [{"cidr": "192.0.2.0/29"}, {"cidr": "2001:db8::/126"}]}})
    n = Net(conf)
    ips = n.add("c1", "a-0")
    assert [ipaddress.ip_address(i).version for i in ips] == [4, 6]
    assert ips == ["192.0.2.1", "2001:db8::1"]  # ::0 is the subnet-router anycast address


@pytest.mark.parametrize("name,owner", [("api-7d9f8b6c5d-x2x4z", "api"), ("agent-x2x4z", "agent"),
                                        ("web-7d4b9c8f6-24567", "web"),
                                        ("web-0", ""), ("standalone", "standalone")])
def test_workload_from_pod_name(name, owner):
    assert workload_of(name) == owner


def test_annotations_and_explicit_ips():
    nc = {"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"moor.io/ips": "192.0.2.5,2001:db8::5",
                                                                  "moor.io/workload": "payments"}}}
    ident = identify({"K8S_POD_NAMESPACE": "pay", "K8S_POD_NAME": "x-abcde"}, nc, "workload")
    assert ident.key == "workload:pay/payments"
    assert [str(i) for i in ident.explicit] == ["192.0.2.5", "2001:db8::5"]
    assert isinstance(identify({}, {"runtimeConfig": {"IPs": ["192.0.2.7/24"]}}, "pod"), Identity)


@pytest.mark.parametrize("ipam,text", [
    ({"pools": []}, "at least one pool"), ({"pools": [{"cidr": "192.0.2.0/33"}]}, "not a CIDR"),
    ({"pools": [{"cidr": "192.0.2.0/24", "gateway": "198.51.100.1"}]}, "outside"),
    ({"pools": [{"cidr": "192.0.2.0/24"}, {"cidr": "192.0.2.128/25"}]}, "overlap"),
    ({"pools": [{"cidr": "192.0.2.0/24"}], "sticky": "always"}, "sticky"),
    ({"pools": [{"cidr": "192.0.2.0/24", "release": "later"}]}, "release"),
    ({"pools": [{"cidr": "192.0.2.0/24"}], "etcd": {"endpoints": ["localhost:2379"]}}, "http"),
    ({"pools": [{"cidr": "192.0.2.0/24", "blockSize": 20}]}, "'ipam.pools[0].blockSize' 20"),
    ({"pools": [{"cidr": "192.0.2.0/24", "blockSize": 33}]}, "blockSize"),
    ({"pools": [{"cidr": "10.0.0.0/8", "blockSize": 16}]}, "from 22 to 32"),  # one block value stays small
    ({"pools": [{"cidr": "192.0.2.0/24", "blockSize": "26"}]}, "blockSize"),
    ({"pools": [{"cidr": "192.0.2.0/24"}], "strictAffinity": "yes"}, "strictAffinity"),
    ({"pools": [{"cidr": "192.0.2.0/24"}], "blockIdleSeconds": -1}, "blockIdleSeconds"),
])
def test_config_errors_name_the_field(ipam, text):
    with pytest.raises(CNIError) as e:
        config.parse({"name": "n", "ipam": ipam})
    assert e.value.code == 7 and text in e.value.msg


# -- property test: random operation sequences keep the invariants --------------------------
OPS = st.lists(st.tuples(st.sampled_from(["add", "del", "gc", "tick", "explicit"]), st.integers(0, 7),
                         st.integers(0, 400)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(OPS, st.sampled_from(["hold", "never", "immediate"]), st.sampled_from(["pod", "workload", "none"]))
def test_invariants_hold_under_any_sequence(ops, release, sticky):
    n = Net(_conf(release=release, sticky=sticky, holdSeconds=100))
    live: dict[str, str] = {}  # container -> pod name (k8s: one live pod per name)
    next_cid = 0
    for op, k, t in ops:
        name = f"app-{k}" if sticky != "workload" else f"app{k % 3}-7d9f8b6c5d-x2x{k}z"
        if op in ("add", "explicit") and name not in live.values():
            cid = f"c{next_cid}"
            next_cid += 1
            try:
                ips = ["192.0.2.1%d" % (k % 5)] if op == "explicit" else []
                n.add(cid, name, ips=ips, sticky=sticky)
                live[cid] = name
            except CNIError as e:
                assert e.code in (policy.EXHAUSTED, policy.HELD_BY_OTHER, policy.OUTSIDE_POOLS)
        elif op == "del" and live:
            cid = sorted(live)[k % len(live)]
            n.delete(cid)
            del live[cid]
        elif op == "gc":
            n.gc(set(live))
        else:
            n.now += t
        active = [r for r in n.records.values() if r.state == ACTIVE]
        owners = [r.container_id for r in active]
        assert len(owners) == len(set(owners))  # a container holds one IPv4 address
        assert set(owners) == set(live)  # every live container has its IP, no one else does
        for r in n.records.values():
            assert n.conf.pools[0].usable(ipaddress.ip_address(r.ip))


def test_block_size_defaults_and_bounds():
    conf = config.parse({"name": "n", "ipam": {"pools": [{"cidr": "192.0.2.0/24"}, {"cidr": "2001:db8::/64"},
                                                         {"cidr": "198.51.100.0/28"}]}})
    assert [p.block_prefix for p in conf.pools] == [26, 122, 28]  # a pool smaller than a block is one block
    assert not conf.strict_affinity and conf.block_idle_s == 600


@settings(max_examples=300, deadline=None)
@given(v6=st.booleans(), start=st.integers(0, 60), size=st.integers(0, 60),
       excludes=st.lists(st.tuples(st.integers(0, 127), st.integers(28, 32)), max_size=4),
       skip=st.sets(st.integers(0, 127), max_size=40))
def test_candidates_are_the_pool_in_order_without_excluded_and_skipped(v6, start, size, excludes, skip):
    """The integer walk gives exactly the addresses from rangeStart to rangeEnd, in order, that no
    exclude covers and `skip` does not name (one of each family's excludes given in the other
    family never matches)."""
    base = ipaddress.ip_address("2001:db8::" if v6 else "198.51.100.0")
    plen = 121 if v6 else 25
    pool = config.Pool(cidr=ipaddress.ip_network(f"{base}/{plen}"), start=base + start, end=base + start + size,
                       gateway=None, exclude=[ipaddress.ip_network(f"{base + off}/{(p + 96) if v6 else p}", strict=False)
                                               for off, p in excludes] + [ipaddress.ip_network("192.0.2.0/24")
                                                                          if v6 else ipaddress.ip_network("2001:db8::/64")])
    skip_ints = {int(base) + s for s in skip}
    want = [ip for ip in (base + k for k in range(start, start + size + 1))
            if not any(ip.version == n.version and ip in n for n in pool.exclude) and int(ip) not in skip_ints]
    assert list(policy.View({}).candidates(pool, skip_ints)) == want
