"""moor's image, built here from Debian packages (deploy/image/build.py, `./run image`), imported into a
real containerd (private config, socket and state under tmp; the CRI plugin off) and run with `ctr run`
the way the DaemonSet runs it:

- the init container's `moor install --root /host`, with no capability and a read-only root, installs
  a node whose plugins then run ADD/DEL from their node paths with an empty environment;
- moord from the image, in the node's network namespace, loads the drop probe (bcc in the image, the
  host's kernel headers mounted), answers its health and metrics, and serves a pod's ADD and DEL
  through its CNI socket from inside the container.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from dataplane.nslab import Lab
from tests.helpers import ipj
from tests.integration.conftest import MacvlanNet, net  # noqa: F401 (the fixture)
from tests.integration.test_fast_path import TIMING, _args, _in_process, _routed
from tests.integration.test_install import _root, _run_installed
from tests.interop.conftest import wait_for
from tests.unit.test_deploy import image_builder

pytestmark = pytest.mark.e2e

NS = "moortest"
FETCH = ("import urllib.request,urllib.error,sys\n"
         "try:\n r=urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status); print(r.read().decode())\n"
         "except urllib.error.HTTPError as e: print(e.code); print(e.read().decode())\n")


def _missing() -> str | None:
    for tool in ("mmdebstrap", "containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs mmdebstrap, containerd and runc)"
    return None


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> tuple[Path, str]:
    why = _missing()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("image")
    out = tmp / "moor-image.tar"
    name = image_builder().build(out, work=tmp)
    return out, name


class Containerd:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.sock = tmp / "containerd.sock"
        (tmp / "config.toml").write_text(f"""\
version = 2
root = "{tmp / 'root'}"
state = "{tmp / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
""")
        self.log = open(tmp / "containerd.log", "ab")
        self.proc = subprocess.Popen(["containerd", "--config", str(tmp / "config.toml")],
                                     stdout=self.log, stderr=self.log)
        wait_for(lambda: self.sock.exists() or self.proc.poll() is not None, what="containerd's socket")
        assert self.proc.poll() is None, (tmp / "containerd.log").read_text()

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        p = subprocess.run(["ctr", "--address", str(self.sock), "--namespace", NS, *args],
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def stop_task(self, name: str, sig: str = "SIGINT") -> None:
        self("task", "kill", "--signal", sig, name, check=False)
        try:
            wait_for(lambda: "RUNNING" not in self("task", "ls", check=False).stdout, timeout=60,
                     what=f"task {name} to stop")
        except TimeoutError:
            self("task", "kill", "--signal", "SIGKILL", name, check=False)
        self("task", "delete", name, check=False)
        self("container", "delete", name, check=False)

    def close(self) -> None:
        for line in self("container", "ls", "--quiet", check=False).stdout.split():
            self.stop_task(line, "SIGKILL")
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # the shims this containerd started (they outlive it by design): ours only, by our socket path
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"containerd-shim" in cmd and os.fsencode(str(self.sock)) in cmd:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.log.close()
        subprocess.run(["umount", "-R", str(self.tmp / "root")], capture_output=True)  # nothing, normally


@pytest.fixture(scope="module")
def ctr(image, tmp_path_factory) -> Iterator[Containerd]:
    c = Containerd(tmp_path_factory.mktemp("containerd"))
    try:
        c("images", "import", str(image[0]))
        assert image[1] in c("images", "ls", "--quiet").stdout.split()
        yield c
    finally:
        c.close()


# what runtimes grant a container by default; the init container drops every one of them
DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
                "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")


def test_the_init_container_installs_a_working_node(image, ctr: Containerd, tmp_path: Path, net: MacvlanNet):
    host = _root(tmp_path)  # the node's /, with its /usr/bin/python3
    confdir = tmp_path / "configmap"
    confdir.mkdir()
    conf = {"cniVersion": "1.0.0", "name": "img", "type": "moor", "mode": "bgp", "stateDir": str(tmp_path / "state"),
            "ipam": {"type": "moor-ipam", "dataDir": str(tmp_path / "ipam"), "pools": [{"cidr": "203.0.113.0/24"}]}}
    (confdir / "10-moor.conflist").write_text(json.dumps(conf))
    drops = [a for c in DEFAULT_CAPS for a in ("--cap-drop", f"CAP_{c}")]
    p = ctr("run", "--rm", "--read-only", *drops,
            "--mount", f"type=bind,src={confdir},dst=/etc/moor,options=rbind:ro",
            "--mount", f"type=bind,src={host},dst=/host,options=rbind:rw",
            image[1], "install-cni", "sh", "-c",
            "grep CapEff /proc/self/status; exec /opt/moor/bin/moor install --root /host --conf /etc/moor/10-moor.conflist")
    assert "CapEff:\t0000000000000000" in p.stdout, p.stdout
    assert p.stdout.splitlines()[-1] == "/host/etc/cni/net.d/10-moor.conflist", "the config is written last"
    _run_installed(host, conf, net)


def _fetch(net: MacvlanNet, path: str) -> tuple[int, str]:
    out = net.lab.run(net.node, sys.executable, "-c", FETCH, f"http://127.0.0.1:9653{path}", check=False).stdout.decode()
    code, _, body = out.partition("\n")
    return (int(code) if code.isdigit() else 0), body


def test_moord_from_the_image_loads_the_probe_and_serves_cni(image, ctr: Containerd, net: MacvlanNet):
    tmp = net.tmp
    (tmp / "etc").mkdir()
    (tmp / "run").mkdir()
    sock = "/run/moor/cni.sock"
    (tmp / "etc/moord.yaml").write_text(
        "bgp: {asn: 65001, routerId: '${NODE_IP}'}\n"
        f"cni: {{socket: {sock}}}\napi: {{socket: /run/moor/moord.sock}}\n"
        "metrics: {address: 127.0.0.1, port: 9653}\nprobe: {enabled: true}\n")
    net.lab.run(net.node, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
    net.pod("pod1")  # before the container starts: its /run/netns view is a bind of the host's
    mounts = [("etc", "/etc/moor", "ro"), ("run", "/run/moor", "rw"), ("/lib/modules", "/lib/modules", "ro"),
              ("/usr/src", "/usr/src", "ro"), ("/run/netns", "/run/netns", "ro"), (str(tmp), str(tmp), "rw")]
    args = []
    for src, dst, mode in mounts:
        args += ["--mount", f"type=bind,src={tmp / src if not src.startswith('/') else src},dst={dst},options=rbind:{mode}"]
    ctr("run", "--detach", "--privileged", "--with-ns", f"network:{Lab.path(net.node)}", "--env", "NODE_IP=192.0.2.2",
        "--log-uri", f"file://{tmp / 'moord.log'}", *args, image[1], "moord", "/opt/moor/bin/moord",
        "--config", "/etc/moor/moord.yaml")
    try:
        def log() -> str:
            return (tmp / "moord.log").read_text(errors="replace") if (tmp / "moord.log").exists() else ""

        def probe_up() -> bool:
            code, body = _fetch(net, "/metrics")
            return code == 200 and 'moor_component_up{component="probe.drops"} 1.0' in body
        wait_for(probe_up, timeout=180, what="moord in the image with its probe loaded")
        # what the DaemonSet's liveness and readiness probes ask
        assert _fetch(net, "/healthz")[0] == 200
        code, body = _fetch(net, "/readyz")
        assert code == 200, body

        # the host-side client hands the call to the agent in the container: the client's socket path
        # is the container's /run/moor (the same directory, bound)
        conf = _routed(net, tmp / "run/cni.sock")
        add = net.cni("ADD", conf, args=_args("img-0"), env=TIMING)
        assert add.code == 0 and not _in_process(add), (add.stdout, add.stderr, log())
        ip = add.json["ips"][0]["address"].split("/")[0]
        assert ip in [r["dst"] for r in ipj(net.node, "route", "show", "proto", "109")]
        assert net.cni("DEL", conf, args=_args("img-0"), env=TIMING).code == 0
        assert ipj(net.node, "route", "show", "proto", "109") == []
    finally:
        ctr.stop_task("moord")
    assert not (tmp / "run/cni.sock").exists(), "moord removed its socket on the way out"
