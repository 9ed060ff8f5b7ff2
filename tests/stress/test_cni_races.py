"""One IP, one live pod, and no route to a missing pod, under a busy kubelet: the harness in
cni_harness.py drives the real plugin with overlapping ADD/DEL, re-creation while the old sandbox
lives, junk GC lists, crashes, SIGKILLs, long container IDs and corrupt store rows, in both modes
and with both stores, at least 1,000 operations each (2,000 per store), checking the invariant
after every round and that nothing is left at the end."""
from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import pytest

from dataplane.nslab import Lab
from tests import etcd_server
from tests.helpers import cni_path
from tests.stress.cni_harness import Harness

pytestmark = pytest.mark.integration

ROUNDS, OPS_PER_ROUND = 10, 100


@pytest.mark.parametrize("store", ["sqlite", "etcd"])
@pytest.mark.parametrize("mode", ["macvlan", "bgp"])
def test_one_ip_one_live_pod_under_overlapping_calls_kills_and_junk(tmp_path: Path, mode: str, store: str):
    if store == "etcd" and shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (scripts/setup.sh installs etcd-server)")
    lab = Lab()
    etcd = None
    try:
        node, peer = lab.ns("node"), lab.ns("peer")
        lab.veth(node, "up0", peer, "pp0")
        lab.addr(node, "up0", "192.0.2.2/24")
        lab.addr(peer, "pp0", "192.0.2.1/24")
        if store == "etcd":
            (tmp_path / "etcd").mkdir()
            etcd = etcd_server.start(tmp_path / "etcd" / "data", netns=node)
        h = Harness(lab=lab, tmp=tmp_path, mode=mode, cni_path=cni_path(tmp_path), node=node,
                    etcd=etcd.endpoint if etcd else None, seed=zlib.crc32(f"{mode}/{store}".encode()))
        for _ in range(ROUNDS):
            h.round(OPS_PER_ROUND)
        h.finish()
        ops = sum(n for k, n in h.stats.items() if k.startswith("op "))
        calls = sum(n for k, n in h.stats.items() if not k.startswith(("op ", "corrupt")))
        print(f"\n{mode}/{store}: {ops} operations, {calls} plugin calls: {dict(sorted(h.stats.items()))}")
        assert ops >= ROUNDS * OPS_PER_ROUND
        # the harness must have exercised what it is for, or it proves nothing
        for what in ("ADD killed", "DEL killed", "ADD 11", "GC 7", "op overlap", "op crash", "corrupt rows repaired"):
            assert h.stats[what] > 0, f"never happened: {what}"
    finally:
        if etcd is not None:
            etcd.stop()
        lab.close()
