"""Test helpers: run the real `moor` executable as a runtime would, and snapshot node state."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cni.install import write_launcher

REPO = Path(__file__).resolve().parent.parent
REF_PLUGINS = "/usr/lib/cni"


@dataclass
class Reply:
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    @property
    def error_code(self) -> Optional[int]:
        doc = self.json
        return doc.get("code") if isinstance(doc, dict) and self.code else None


def cni_path(tmp: Path) -> str:
    """A CNI_PATH holding moor, installed as a node would get it (the -IS launcher of
    `python -m cni.install`), next to the reference plugins, as in /opt/cni/bin."""
    d = tmp / "cni-bin"
    if not d.exists():
        d.mkdir()
        write_launcher(d, "moor")
        write_launcher(d, "moor-ipam")
        for p in Path(REF_PLUGINS).iterdir():
            os.symlink(p, d / p.name)
    return str(d)


def run_cni(node_ns: Optional[str], command: str, conf: Any, *, path: str, container_id: str = "c1",
            netns: str = "", ifname: str = "eth0", args: str = "", env: Optional[dict] = None,
            exe: Optional[str] = None) -> Reply:
    """Execute the plugin as a runtime does; `exe` defaults to the config's `type` found in `path`."""
    if exe is None:  # the plugin the config names, as libcni finds it
        kind = conf.get("type") if isinstance(conf, dict) else None
        exe = os.path.join(path, kind if isinstance(kind, str) and kind else "moor")
    e = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
         "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": path}
    if args:
        e["CNI_ARGS"] = args
    e.update(env or {})
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    cmd = ["ip", "netns", "exec", node_ns, exe] if node_ns else [exe]
    p = subprocess.run(cmd, input=data, env=e, capture_output=True, timeout=60)
    return Reply(p.returncode, p.stdout, p.stderr)


def kill_cni_at(node_ns: str, conf: Any, *, path: str, pause: str, ready, container_id: str, netns: str,
                ifname: str = "eth0", args: str = "") -> None:
    """Run an ADD that pauses at the named step (MOOR_PAUSE), wait until `ready()` says it is
    there, and SIGKILL it: a plugin killed at that point, as kubelet's timeout or an OOM does."""
    e = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": "ADD",
         "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": path,
         "MOOR_PAUSE": f"{pause}:60"}
    if args:
        e["CNI_ARGS"] = args
    p = subprocess.Popen(["ip", "netns", "exec", node_ns, os.path.join(path, conf["type"])], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
    try:
        assert p.stdin is not None
        p.stdin.write(json.dumps(conf).encode())
        p.stdin.close()
        for _ in range(2000):  # a hang guard: the pause is far longer
            if ready():
                break
            if p.poll() is not None:
                raise AssertionError(f"the ADD ended before its pause at {pause}: {p.stderr.read()!r}")
            time.sleep(0.01)
        else:
            raise AssertionError(f"the ADD never reached its pause at {pause}")
    finally:
        p.kill()
        p.wait()
        for f in (p.stdout, p.stderr):
            f.close()


def ipj(ns: str, *args: str) -> Any:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, check=True).stdout
    return json.loads(out or b"[]")


def ns_state(ns: str) -> dict:
    """Links, addresses and routes of a netns, as `ip -j` sees them (an independent netlink client)."""
    links = sorted((l["ifname"], l.get("link_type", ""), l.get("address", ""), tuple(l.get("flags", [])))
                   for l in ipj(ns, "link", "show"))
    addrs = sorted((a["ifname"], i["local"], i["prefixlen"]) for a in ipj(ns, "addr", "show")
                   for i in a.get("addr_info", []) if i.get("scope") != "link")
    routes = sorted(json.dumps(r, sort_keys=True) for fam in ("-4", "-6") for r in
                    json.loads(subprocess.run(["ip", "-n", ns, "-j", fam, "route", "show", "table", "all"],
                                              capture_output=True, check=True).stdout or b"[]"))
    return {"links": links, "addrs": addrs, "routes": routes}


def files(*dirs: Path) -> list[tuple[str, str]]:
    """Files under dirs with their contents (IPAM leases, moor's attachment records); lock files
    and host-local's round-robin cursor are not allocations."""
    out = []
    for d in dirs:
        if not d.exists():
            continue
        for p in sorted(d.rglob("*")):
            if not p.is_file() or p.suffix == ".lock" or p.name == "lock" or p.name.startswith("last_reserved_ip"):
                continue
            if p.name.startswith("ipam.sqlite3"):  # moor-ipam: compare reservations, not pages
                if p.name == "ipam.sqlite3":
                    out.append((str(p.relative_to(d)), reservations(p)))
                continue
            out.append((str(p.relative_to(d)), p.read_text(errors="replace")))
    return out


def reservations(db: Path) -> str:
    """moor-ipam's reservations in a SQLite store, without the timestamps."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT network, ip, data FROM reservations ORDER BY network, ip").fetchall()
    finally:
        con.close()
    out = []
    for net, ip, data in rows:
        doc = json.loads(data)
        doc.pop("updated", None)
        out.append(f"{net} {ip} {json.dumps(doc, sort_keys=True)}")
    return "\n".join(out)


def have_reference_plugins() -> bool:
    return os.path.exists(os.path.join(REF_PLUGINS, "host-local")) and shutil.which("ip") is not None
