"""deploy/systemd/moord.service: `systemd-analyze verify` accepts it against a root where `moor install`
put moor (so its ExecStart is what install writes), and moord runs with exactly the capabilities the
unit bounds it to: the drop probe loads and a pod's ADD and DEL go through its CNI socket."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, ipj
from tests.integration.conftest import MacvlanNet
from tests.integration.test_agent_api import FETCH
from tests.integration.test_fast_path import TIMING, _args, _in_process, _routed
from tests.interop.conftest import wait_for

pytestmark = pytest.mark.integration

UNIT = REPO / "deploy/systemd/moord.service"


CAP_BITS = {"net_bind_service": 10, "net_admin": 12, "net_raw": 13, "sys_admin": 21, "sys_resource": 24,
            "perfmon": 38, "bpf": 39}  # linux/capability.h


def _bounding(pid: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(l for l in status if l.startswith("CapBnd:")).split()[1], 16)


def _directive(name: str) -> str:
    (line,) = [l for l in UNIT.read_text().splitlines() if l.startswith(f"{name}=")]
    return line.split("=", 1)[1]


def _verify(root: Path, unit_text: str) -> subprocess.CompletedProcess:
    (root / "etc/systemd/system/moord.service").write_text(unit_text)
    return subprocess.run(["systemd-analyze", f"--root={root}", "--man=no", "verify", "moord.service"],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (scripts/setup.sh installs Debian's systemd)")
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/python3.11", root / "usr/bin/python3")
    p = subprocess.run([sys.executable, "-m", "cni.install", "--root", str(root), "--no-cni"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    # the units systemd's own targets come from (multi-user.target, network-online.target)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


def test_systemd_analyze_verifies_the_unit_against_an_installed_moor(root: Path):
    p = _verify(root, UNIT.read_text())
    assert p.returncode == 0 and p.stderr == "", p.stderr
    # the check can fail: a moord that install does not write, a directive systemd does not know
    bad = _verify(root, UNIT.read_text().replace("/opt/moor/bin/moord", "/opt/moor/bin/moordd"))
    assert bad.returncode != 0 and "moordd" in bad.stderr, bad.stderr
    bad = _verify(root, UNIT.read_text().replace("KillMode=mixed", "KilMode=mixed"))
    assert "Unknown key 'KilMode'" in bad.stderr, bad.stderr


def test_moord_works_with_only_the_capabilities_the_unit_gives_it(net: MacvlanNet):
    caps = [c.removeprefix("CAP_").lower() for c in _directive("CapabilityBoundingSet").split()]
    assert _directive("NoNewPrivileges") == "yes"
    sock = net.tmp / "cni.sock"
    conf = {"bgp": {"asn": 65001, "routerId": "192.0.2.2"}, "api": {"socket": ""}, "cni": {"socket": str(sock)},
            "metrics": {"address": "127.0.0.1", "port": 9653}, "probe": {"enabled": True}}
    (net.tmp / "moord.yaml").write_text(json.dumps(conf))
    log = net.tmp / "moord.log"
    net.lab.run(net.node, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
    proc = net.lab.spawn(net.node, ["setpriv", "--bounding-set", "-all," + ",".join(f"+{c}" for c in caps),
                                    "--inh-caps", "-all", "--no-new-privs", "--",
                                    sys.executable, "-m", "dataplane.agent", "-v", "--config", str(net.tmp / "moord.yaml")],
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "a"))
    try:
        wait_for(lambda: sock.exists() or proc.poll() is not None, what="moord's CNI socket")
        assert proc.poll() is None, log.read_text()
        # exactly the unit's set (less what this machine's own bounding set lacks: SYS_RESOURCE here)
        want = sum(1 << CAP_BITS[c] for c in caps) & _bounding("self")
        assert _bounding(str(proc.pid)) == want, "moord runs with the unit's capabilities, no more"

        def probe_up() -> bool:
            text = net.lab.run(net.node, sys.executable, "-c", FETCH, "http://127.0.0.1:9653/metrics",
                               check=False).stdout.decode()
            return 'moor_component_up{component="probe.drops"} 1.0' in text
        wait_for(probe_up, timeout=120, what="the drop probe loaded with the unit's capabilities")

        routed = _routed(net, sock)
        add = net.cni("ADD", routed, args=_args("cap-0"), env=TIMING)
        assert add.code == 0 and not _in_process(add), (add.stdout, add.stderr, log.read_text())
        ip = add.json["ips"][0]["address"].split("/")[0]
        assert ip in [r["dst"] for r in ipj(net.node, "route", "show", "proto", "109")]
        dele = net.cni("DEL", routed, args=_args("cap-0"), env=TIMING)
        assert dele.code == 0 and not _in_process(dele), dele.stderr
        assert ipj(net.node, "route", "show", "proto", "109") == []
    finally:
        proc.terminate()
        proc.wait(timeout=60)
