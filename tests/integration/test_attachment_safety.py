"""One IP, one live pod, each defect of the review pinned down deterministically (the stress
harness in tests/stress/ finds them at random): ADD and DEL of one container overlapping, a pod
re-created while its old sandbox lives, a corrupt store row, long container IDs, a FIFO as
CNI_NETNS, a full state directory, a closed stdin."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from cni.spec.lock import AttachmentLock, digest
from cni.state import Store
from dataplane.nslab import sh
from tests.helpers import REPO, ipj, kill_cni_at
from tests.integration.conftest import GATEWAY, MacvlanNet

pytestmark = pytest.mark.integration


def _conf(net: MacvlanNet, mode: str, **over) -> dict:
    conf = {"cniVersion": "1.0.0", "name": "safe", "type": "moor", "mode": mode, "stateDir": str(net.tmp / "state"),
            "ipam": {"type": "moor-ipam", "dataDir": str(net.tmp / "ipam"), "holdSeconds": 600,
                     "pools": [{"cidr": "192.0.2.0/24", "rangeStart": "192.0.2.10", "rangeEnd": "192.0.2.60",
                                "gateway": GATEWAY}]}}
    if mode == "macvlan":
        conf["master"] = "up0"
    conf.update(over)
    return conf


def _args(name: str, uid: str = "") -> str:
    return f"IgnoreUnknown=1;K8S_POD_NAMESPACE=s;K8S_POD_NAME={name};K8S_POD_UID={uid or 'uid-' + name}"


def _records(net: MacvlanNet) -> dict:
    path = net.tmp / "ipam" / "ipam.sqlite3"
    if not path.exists():
        return {}
    db = sqlite3.connect(path)
    try:
        return {ip: json.loads(d) for ip, d in db.execute("SELECT ip, data FROM reservations")}
    except sqlite3.OperationalError:  # created, but its table not yet
        return {}
    finally:
        db.close()


def _pod_ips(ns: str) -> list[str]:
    return [i["local"] for a in ipj(ns, "addr", "show") for i in a.get("addr_info", []) if i.get("scope") == "global"]


def _moor_routes(net: MacvlanNet) -> list:
    return [r for r in ipj(net.node, "route", "show", "table", "all") if r.get("protocol") in ("moor", "moor-shim")]


@pytest.mark.parametrize("mode", ["macvlan", "bgp"])
def test_del_during_add_waits_then_undoes_it(net: MacvlanNet, mode: str):
    """kubelet's DEL of a timed-out ADD arrives while the ADD still runs: it waits for the ADD,
    then undoes all of it. Before, DEL returned at once, the ADD finished, and the pod ran with an
    IP the store had freed."""
    conf = _conf(net, mode)
    net.pod("pod1")
    before = net.snapshot()
    order: list[str] = []

    def add() -> None:
        r = net.cni("ADD", conf, "pod1", args=_args("web-0"), env={"MOOR_PAUSE": "ipam:1.5"})
        order.append(f"add {r.code}")
    t = threading.Thread(target=add)
    t.start()
    # the DEL starts while the ADD sleeps after its IPAM step (the pause is long; this is a guard)
    for _ in range(100):
        if (net.tmp / "ipam" / "ipam.sqlite3").exists() and any(
                r["state"] == "active" for r in _records(net).values()):
            break
        threading.Event().wait(0.02)
    r = net.cni("DEL", conf, "pod1", args=_args("web-0"))
    order.append(f"del {r.code}")
    t.join()
    assert order == ["add 0", "del 0"], order  # the DEL returned only after the ADD was done
    assert _pod_ips(net.pods["pod1"]) == [] and _moor_routes(net) == []
    assert not [r for r in _records(net).values() if r["state"] == "active"]
    after = net.snapshot()
    # the IP is held for the pod (its identity), nothing else of the attachment is left
    after["files"] = [f for f in after["files"] if not f[0].endswith("ipam.sqlite3")]
    before["files"] = [f for f in before["files"] if not f[0].endswith("ipam.sqlite3")]
    assert after == before


@pytest.mark.parametrize("mode,mac_from_ip", [("bgp", True), ("macvlan", False), ("macvlan", True)])
def test_recreated_pod_waits_while_its_old_sandbox_lives(net: MacvlanNet, mode: str, mac_from_ip: bool):
    """A force delete or a retried RunPodSandbox: a new sandbox for the pod (new UID) while the
    old one still runs gets code 11 and changes nothing; once the old netns is gone it takes the
    IP. Before, both sandboxes ran with one IP, or the failed ADD's rollback left the IP held by
    a container that never ran and a third pod got it later."""
    conf = _conf(net, mode, macFromIP=mac_from_ip)
    first = net.add("old", conf, args=_args("db-0", "uid-1"))
    ip = first["ips"][0]["address"].split("/")[0]
    rec = _records(net)[ip]
    net.pod("new")
    before = net.snapshot()
    r = net.cni("ADD", conf, "new", args=_args("db-0", "uid-2"))
    assert r.error_code == 11 and "still attached" in r.json["msg"], r.stdout
    assert net.cni("DEL", conf, "new", args=_args("db-0", "uid-2")).code == 0  # kubelet cleans the failed sandbox
    after = net.snapshot()
    assert after == before and _records(net)[ip] == rec  # the old pod's reservation, exactly
    assert _pod_ips(net.pods["old"]) == [ip]
    # the old sandbox dies without a DEL (a crashed runtime): its netns is gone, that is proof
    sh("ip", "netns", "del", net.pods.pop("old"))
    net.lab.namespaces.remove(f"{net.lab.prefix}-old")
    again = net.add_after_netns_gone("new", conf, args=_args("db-0", "uid-2"), container_id="cid-new2")
    assert again["ips"][0]["address"].split("/")[0] == ip
    assert _records(net)[ip]["container_id"] == "cid-new2"


def test_a_failed_add_puts_the_previous_holder_back_exactly(net: MacvlanNet):
    """The pod's held IP taken back by a new sandbox whose ADD then fails (here: after its routes):
    the reservation returns to exactly what it was (held, old container, seq)."""
    conf = _conf(net, "bgp")
    net.add("a", conf, args=_args("db-0"))
    assert net.cni("DEL", conf, "a", args=_args("db-0")).code == 0
    held = {ip: r for ip, r in _records(net).items()}
    assert [r["state"] for r in held.values()] == ["held"]
    r = net.cni("ADD", conf, "b", args=_args("db-0"), env={"MOOR_FAILPOINT": "pod-routes"})
    assert r.code != 0
    assert _records(net) == held


@pytest.mark.parametrize("store", ["sqlite", "etcd"])
def test_a_corrupt_row_is_quarantined_reported_and_blocks_nothing(net: MacvlanNet, store: str):
    conf = _conf(net, "macvlan")
    etcd = None
    if store == "etcd":
        from tests import etcd_server
        etcd = etcd_server.start(net.tmp / "etcd", netns=net.node)
        conf["ipam"]["etcd"] = {"endpoints": [etcd.endpoint], "prefix": "/corrupt"}
    try:
        net.add("pod1", conf, args=_args("web-0"))  # the store exists now
        bad = '{"ip": "192.0.2.11", "pool": "192.0.2.0/24", "state": "active", "seq": "eleven"}'
        if etcd:  # into the record's block (the network is in blocks since pod1's ADD)
            from tests.stress.cni_harness import ETCD_ROWS
            net.lab.run(net.node, "python3", ETCD_ROWS, "corrupt", etcd.endpoint, "/corrupt", "safe", "192.0.2.11")
        else:  # a hand-written row (no index columns): it still shadows its IP
            db = sqlite3.connect(net.tmp / "ipam" / "ipam.sqlite3")
            db.execute("INSERT INTO reservations (network, ip, data) VALUES ('safe', '192.0.2.11', ?)", (bad,))
            db.commit()
            db.close()
        r = net.cni("ADD", conf, "pod2", args=_args("web-1"))
        assert r.code == 0, r.stdout
        assert r.json["ips"][0]["address"] == "192.0.2.12/24"  # .11 is in doubt: never handed out
        assert (b"record under key '192.0.2.11' is corrupt" in r.stderr
                or b"record '192.0.2.11' in block 192.0.2.0/26 is corrupt" in r.stderr) and b"network safe" in r.stderr
        assert net.cni("DEL", conf, "pod1", args=_args("web-0")).code == 0  # DELs are not blocked either
        path = net.tmp / "net.conf"
        path.write_text(json.dumps(conf))
        exe = os.path.join(net.path, "moor-ipam")
        listed = net.lab.run(net.node, exe, "list", str(path))
        assert "192.0.2.11" in listed.stdout.decode() and "corrupt" in listed.stdout.decode()
        diag = net.lab.run(net.node, str(REPO / ".venv" / "bin" / "netdiag"), "ipam", "--ipam-config", str(path),
                           "--source", "kernel", "--json")
        states = {r["ip"]: r["state"] for r in json.loads(diag.stdout)["reservations"]}
        assert states["192.0.2.11"] == "corrupt"
        ref = subprocess.run(["ip", "netns", "exec", net.node, exe, "release", str(path), "192.0.2.11"],
                             capture_output=True, text=True)
        assert ref.returncode == 2 and "--force" in ref.stderr and "Traceback" not in ref.stderr
        net.lab.run(net.node, exe, "release", str(path), "192.0.2.11", "--force")
        rows = {r["ip"]: r for r in json.loads(net.lab.run(net.node, exe, "list", str(path), "--json").stdout)}
        assert rows["192.0.2.11"]["state"] == "cooling"
    finally:
        if etcd is not None:
            etcd.stop()


@pytest.mark.parametrize("mode", ["macvlan", "bgp"])
def test_container_ids_longer_than_a_file_name(net: MacvlanNet, mode: str):
    conf = _conf(net, mode)
    cid = "c" + "0123456789abcdef" * 16  # 257 bytes: valid for libcni
    net.pod("pod1")
    before = net.snapshot()
    r = net.cni("ADD", conf, "pod1", container_id=cid, args=_args("long-0"))
    assert r.code == 0, r.stdout
    for _ in range(2):  # DEL, and DEL again with nothing left
        assert net.cni("DEL", conf, "pod1", container_id=cid, args=_args("long-0")).code == 0
    assert net.cni("DEL", conf, "pod1", container_id=cid + "x", args=_args("long-0")).code == 0
    after = net.snapshot()
    after["files"] = [f for f in after["files"] if not f[0].endswith("ipam.sqlite3")]
    assert after == before


def test_a_fifo_as_netns_is_refused_at_once(net: MacvlanNet):
    fifo = net.tmp / "fifo"
    os.mkfifo(fifo)
    conf = _conf(net, "macvlan")
    r = net.cni("ADD", conf, "pod1", netns=str(fifo))  # run_cni's 60 s timeout is the hang guard
    assert r.error_code == 4 and "not a network namespace" in r.json["msg"]
    assert net.cni("DEL", conf, "pod1", netns=str(fifo)).code == 0


def test_a_full_state_dir_is_an_error_naming_the_path_and_leaves_nothing(net: MacvlanNet):
    state = net.tmp / "small"
    state.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=4k,nr_inodes=8", "tmpfs", str(state))
    try:
        conf = _conf(net, "bgp", stateDir=str(state))
        # fill it up: every inode taken
        n = 0
        while True:
            try:
                (state / f"f{n}").touch()
                n += 1
            except OSError:
                break
        net.pod("pod1")
        before = net.snapshot()
        r = net.cni("ADD", conf, "pod1", args=_args("web-0"))
        assert r.error_code == 5 and str(state) in r.json["msg"], r.stdout
        assert not list(state.rglob("*.tmp"))
        after = net.snapshot()
        after["files"] = [f for f in after["files"] if not f[0].endswith("ipam.sqlite3")]
        before["files"] = [f for f in before["files"] if not f[0].endswith("ipam.sqlite3")]
        assert after == before
        assert not [r for r in _records(net).values() if r["state"] == "active"]
    finally:
        sh("umount", str(state))


def test_closed_stdin_is_a_decode_error_in_json(net: MacvlanNet, tmp_path: Path):
    exe = os.path.join(net.path, "moor")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": net.pod("pod1"), "CNI_IFNAME": "eth0",
           "CNI_PATH": net.path, "PATH": os.environ["PATH"]}
    p = subprocess.run(["sh", "-c", f"exec {exe} <&-"], env=env, capture_output=True, timeout=60)
    assert p.returncode == 1 and b"Traceback" not in p.stderr
    assert json.loads(p.stdout)["code"] == 6


@pytest.mark.parametrize("mode", ["macvlan", "bgp"])
def test_gc_removes_the_lock_file_of_an_add_killed_before_its_record(net: MacvlanNet, mode: str):
    """A plugin SIGKILLed early in ADD (after it created the attachment's lock file, before any
    record) for a sandbox whose runtime then crashed: no DEL ever comes, and the file is in no
    list. GC sweeps it; the lock of an ADD still running stays, and that ADD completes."""
    conf = _conf(net, mode)
    gc_conf = dict(conf, cniVersion="1.1.0",
                   **{"cni.dev/valid-attachments": [{"containerID": "cid-pod2", "ifname": "eth0"}]})
    locks = net.tmp / "state" / "locks"

    def held_by(cid: str) -> bool:
        return locks.exists() and any(f.read_bytes() == f"safe\0{cid}\0eth0".encode() for f in locks.glob("att-*"))
    net.pod("pod1"), net.pod("pod2")
    got: dict = {}
    running = threading.Thread(target=lambda: got.setdefault("add", net.cni(
        "ADD", conf, "pod2", args=_args("pod2-0"), env={"MOOR_PAUSE": "open-netns:5"})))
    running.start()
    try:
        kill_cni_at(net.node, conf, path=net.path, pause="open-netns", container_id="cid-pod1",
                    netns=net.pod("pod1"), args=_args("pod1-0"),
                    ready=lambda: held_by("cid-pod1") and held_by("cid-pod2"))
        assert held_by("cid-pod2"), "pod2's ADD is not in its pause: the test proves nothing"
        r = net.cni("GC", gc_conf, "pod1", container_id="cid-gc")
        assert r.code == 0, r.stdout
        left = [f.read_bytes() for f in locks.glob("att-*.lock")]
        assert left == [b"safe\0cid-pod2\0eth0"], left  # the killed ADD's file went, the running one's stayed
    finally:
        running.join()
    assert got["add"].code == 0, got["add"].stdout
    assert _pod_ips(net.pods["pod2"]) and not _pod_ips(net.pods["pod1"])
    assert net.cni("DEL", conf, "pod2", args=_args("pod2-0")).code == 0
    assert not list(locks.glob("att-*.lock"))


@pytest.mark.parametrize("mode", ["macvlan", "bgp"])
def test_gc_gives_back_the_host_local_ip_of_an_add_killed_after_ipam(net: MacvlanNet, mode: str):
    """host-local has no GC: an ADD killed after its IPAM step, for a sandbox whose runtime
    crashed (no DEL), left a lease no record named, lost for good. The ADD now records the
    attachment as pending before IPAM; GC releases it through IPAM DEL."""
    conf = _conf(net, mode, cniVersion="1.1.0", gcGraceSeconds=0,
                 ipam={"type": "host-local", "dataDir": str(net.tmp / "hl"),
                       "ranges": [[{"subnet": "192.0.2.0/24", "gateway": GATEWAY}]]})
    leases = net.tmp / "hl" / "safe"
    net.pod("pod1")
    before = net.snapshot()
    kill_cni_at(net.node, conf, path=net.path, pause="ipam", container_id="cid-pod1", netns=net.pod("pod1"),
                ready=lambda: leases.exists() and any(f.name.startswith("192.") for f in leases.iterdir()))
    for _ in range(2):  # a leak is released on the second pass
        r = net.cni("GC", dict(conf, **{"cni.dev/valid-attachments": []}), "pod1", container_id="cid-gc")
        assert r.code == 0, r.stdout
    assert not [f.name for f in leases.iterdir() if f.name.startswith("192.")]
    assert net.snapshot() == before


@pytest.mark.parametrize("cleanup", ["DEL", "GC"])
@pytest.mark.parametrize("mode", ["macvlan", "bgp"])
def test_a_killed_writers_temp_record_without_a_record_is_cleared(net: MacvlanNet, mode: str, cleanup: str):
    """A plugin killed inside its first record write leaves `<record>.json.tmp` and a lock file,
    and no record for anything to list: the sandbox's DEL clears them, or GC when no DEL comes."""
    conf = _conf(net, mode, cniVersion="1.1.0")
    store = Store(str(net.tmp / "state"))
    path = store._path("safe", "cid-pod1", "eth0")
    os.makedirs(os.path.dirname(path))
    Path(path + ".tmp").write_text('{"network": "safe", "contai')  # torn mid-write
    lock = AttachmentLock(str(net.tmp / "state" / "locks" / f"att-{digest('safe', 'cid-pod1', 'eth0')}.lock"),
                          ("safe", "cid-pod1", "eth0"))
    assert lock.acquire(0.0)
    lock.release()  # as its killed writer left it: created, named, not held
    net.pod("pod1")
    if cleanup == "DEL":
        assert net.cni("DEL", conf, "pod1").code == 0
    else:
        r = net.cni("GC", dict(conf, **{"cni.dev/valid-attachments": []}), "pod1", container_id="cid-gc")
        assert r.code == 0, r.stdout
    assert not os.path.exists(path + ".tmp")
    assert not list((net.tmp / "state" / "locks").glob("att-*"))
