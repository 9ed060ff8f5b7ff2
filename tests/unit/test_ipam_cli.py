"""moor-ipam's operator commands on a real embedded store (no privileges needed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ipam.plugin import run
from tests.helpers import REPO


def _moor_ipam(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from ipam.plugin import main; sys.exit(main())",
                           *args], cwd=REPO, capture_output=True, text=True, env=env)


def test_list_release_and_reconcile(tmp_path: Path):
    conf = {"cniVersion": "1.1.0", "name": "ops", "type": "macvlan",
            "ipam": {"type": "moor-ipam", "dataDir": str(tmp_path), "release": "never", "gcGraceSeconds": 0,
                     "pools": [{"cidr": "192.0.2.0/28"}]}}
    path = tmp_path / "net.conflist"
    path.write_text(json.dumps({"cniVersion": "1.1.0", "name": "ops", "plugins": [conf]}))
    env = {"CNI_IFNAME": "eth0", "MOOR_NODE_NAME": "n1"}
    data = json.dumps(conf).encode()
    out, code = run(dict(env, CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_NETNS="/run/netns/gone-1",
                         CNI_ARGS="K8S_POD_NAMESPACE=a;K8S_POD_NAME=db-0"), data)
    assert code == 0, out
    out, code = run(dict(env, CNI_COMMAND="ADD", CNI_CONTAINERID="c2", CNI_NETNS="/run/netns/gone-2",
                         CNI_ARGS="K8S_POD_NAMESPACE=a;K8S_POD_NAME=db-1"), data)
    run(dict(env, CNI_COMMAND="DEL", CNI_CONTAINERID="c2", CNI_NETNS=""), data)
    listing = _moor_ipam("list", str(path))
    assert listing.returncode == 0 and "192.0.2.1 " in listing.stdout and "a/db-0" in listing.stdout
    rows = {r["ip"]: r for r in json.loads(_moor_ipam("list", str(path), "--json").stdout)}
    assert rows["192.0.2.2"]["state"] == "held" and rows["192.0.2.2"]["hold_until"] is None  # never
    busy = _moor_ipam("release", str(path), "192.0.2.1")
    assert busy.returncode != 0 and "in use by a/db-0" in busy.stderr  # c1 still runs
    rel = _moor_ipam("release", str(path), "192.0.2.2")
    assert rel.returncode == 0 and "released" in rel.stdout
    assert json.loads(_moor_ipam("list", str(path), "--json").stdout)[1]["state"] == "cooling"
    # c1's netns does not exist: a crashed runtime; two reconcile runs release it
    first = _moor_ipam("reconcile", str(path), env={"MOOR_NODE_NAME": "n1", "PATH": "/usr/bin:/bin"})
    assert "suspect 192.0.2.1" in first.stdout, first.stderr
    second = _moor_ipam("reconcile", str(path), env={"MOOR_NODE_NAME": "n1", "PATH": "/usr/bin:/bin"})
    assert "released 192.0.2.1" in second.stdout
    bad = _moor_ipam("list", str(tmp_path / "missing.conf"))
    assert bad.returncode != 0 and "cannot read" in bad.stderr


def test_bad_configs_and_unreadable_stores_are_one_line_and_exit_2(tmp_path: Path):
    good = {"cniVersion": "1.1.0", "name": "ops", "type": "macvlan",
            "ipam": {"type": "moor-ipam", "dataDir": str(tmp_path / "data"), "pools": [{"cidr": "192.0.2.0/28"}]}}
    cases = {"not-json.conf": "{", "list.conf": "[1]", "no-ipam.conflist": json.dumps({"name": "x", "plugins": [{}]}),
             "bad-pool.conf": json.dumps(dict(good, ipam=dict(good["ipam"], pools=[{"cidr": "::/0"}]))),
             "deep.conf": "[" * 100000}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        for args in (("list",), ("release", "192.0.2.1"), ("reconcile",)):
            p = _moor_ipam(args[0], str(tmp_path / name), *args[1:])
            assert p.returncode == 2 and "Traceback" not in p.stderr, (name, args, p.stderr)
            assert p.stderr.startswith("moor-ipam: ") and p.stderr.count("\n") == 1, (name, p.stderr)
    (tmp_path / "good.conf").write_text(json.dumps(good))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ipam.sqlite3").write_bytes(b"this is not a database" * 100)
    for args in (("list",), ("release", "192.0.2.1", "--force"), ("reconcile",)):
        p = _moor_ipam(args[0], str(tmp_path / "good.conf"), *args[1:])
        assert p.returncode == 2 and "Traceback" not in p.stderr and "ipam.sqlite3" in p.stderr, (args, p.stderr)
    p = _moor_ipam("release", str(tmp_path / "good.conf"), "not-an-ip")
    assert p.returncode == 2 and "'not-an-ip' is not an IP address" in p.stderr
    p = _moor_ipam("frobnicate")
    assert p.returncode == 2 and "Traceback" not in p.stderr
