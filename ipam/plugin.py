"""moor-ipam, the CNI IPAM plugin: (environment, stdin) -> (stdout, exit code), like `moor`.

Works under moor and under the reference macvlan/bridge/ptp plugins (`"ipam": {"type": "moor-ipam"}`).
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from dataclasses import replace

from cni import config as netconfig
from cni import version
from cni.env import parse_env
from cni.executable import error_reply, serve
from cni.errors import CHECK_FAILED, INVALID_CONFIG, NOT_AVAILABLE, CNIError
from cni.result import IPConfig, Result, RouteConfig

from . import policy
from .config import IPAMConf, parse
from .identity import identify
from .reservation import Reservation
from .store import open_store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping

HOOK_FAILED = 113  # the inventory hook refused or failed an allocation (it was rolled back)
HOOK_TIMEOUT_S = 10.0


def node_name(environ: Mapping[str, str], conf: IPAMConf | None = None) -> str:
    explicit = (conf.node_name if conf else "") or environ.get("MOOR_NODE_NAME", "")
    return explicit or os.uname().nodename  # (socket costs ~4 ms to import)


def _sandbox_gone(r: Reservation) -> bool:
    """A reservation's netns path no longer exists: its container is gone."""
    return bool(r.netns) and not os.path.exists(r.netns)


def _result(conf: IPAMConf, taken: list[Reservation]) -> Result:
    res = Result(dns=dict(conf.dns))
    for r in taken:
        ip = ipaddress.ip_address(r.ip)
        pool = conf.pool_of(ip)
        if pool is None:
            raise CNIError(INVALID_CONFIG, f"this container holds {r.ip}, which is no longer in any pool of "
                           f"network {conf.network}", "restore the pool, or DEL the container first")
        res.ips.append(IPConfig(address=ipaddress.ip_interface((ip, pool.cidr.prefixlen)), gateway=pool.gateway))
        for rt in pool.routes:
            res.routes.append(RouteConfig(dst=ipaddress.ip_network(rt.dst, strict=False),
                                          gw=ipaddress.ip_address(rt.gw) if rt.gw else None))
    return res


def _hook(conf: IPAMConf, event: str, reservations: list[Reservation]) -> None:
    """Tell the inventory (CMDB, source-IP authorisation) about a binding; raises on failure."""
    if not conf.inventory_hook or not reservations:
        return
    import subprocess  # only with a hook: keeps the plugin's start-up lean
    doc = {"event": event, "network": conf.network, "reservations": [r.to_dict() for r in reservations]}
    try:
        p = subprocess.run(conf.inventory_hook, input=json.dumps(doc).encode(), capture_output=True,
                           timeout=HOOK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CNIError(HOOK_FAILED, f"inventory hook {conf.inventory_hook[0]} could not run: {e}") from e
    if p.returncode != 0:
        raise CNIError(HOOK_FAILED, f"inventory hook {conf.inventory_hook[0]} refused {event} (exit {p.returncode})",
                       p.stderr.decode(errors="replace").strip()[-500:])


def _add(environ: Mapping[str, str], env, netconf: dict, conf: IPAMConf, store) -> Result:
    ident = identify(env.args, netconf, conf.sticky)
    req = policy.Request(container_id=env.container_id, ifname=env.ifname, ident=ident, netns=env.netns,
                         node=node_name(environ, conf), now=time.time(), sandbox_gone=_sandbox_gone)
    before: dict[str, Reservation | None] = {}

    def alloc(view: policy.View) -> list[Reservation]:
        taken = policy.allocate(view, conf, req)
        before.clear()
        before.update({ip: view.records.get(ip) for ip in view.changes})
        return taken

    taken = store.transact(conf.network, alloc)
    # the inventory learns every binding it has not acknowledged, also after a crash between the
    # commit and the hook (the runtime's retry of ADD then announces it)
    unannounced = [r for r in taken if not r.announced]
    if conf.inventory_hook and unannounced:
        try:
            _hook(conf, "allocate", unannounced)
        except CNIError:
            _undo_add(conf, store, taken, before)
            raise
        store.transact(conf.network, lambda v: [v.put(replace(r, announced=True)) for r in unannounced
                                                if (cur := v.get(r.ip)) is not None and cur.seq == r.seq])
    return _result(conf, taken)


def _undo_add(conf: IPAMConf, store, taken: list[Reservation], before: dict) -> None:
    """Give back what this ADD took (the hook refused it), if nobody changed it since. The old
    record comes back with a newer seq, so sequence numbers only ever grow."""
    def undo(view: policy.View) -> None:
        for r in taken:
            cur = view.get(r.ip)
            if r.ip in before and cur is not None and cur.seq == r.seq:
                old = before[r.ip]
                if old is None:
                    view.delete(r.ip)
                else:
                    view.put(replace(old, seq=r.seq + 1))
    try:
        store.transact(conf.network, undo)
    except CNIError as e:  # the hook's refusal is the error to report; GC reclaims the rest
        print(f"moor-ipam: could not undo the refused allocation: {e.msg}", file=sys.stderr)


def _del(env, conf: IPAMConf, store) -> None:
    released = store.transact(conf.network, lambda v: policy.release(v, conf, env.container_id, env.ifname, time.time()))
    try:
        _hook(conf, "release", released)
    except CNIError as e:  # DEL must stay idempotent: the inventory learns on the next event
        print(f"moor-ipam: {e.msg}", file=sys.stderr)


def _check(env, conf: IPAMConf, store) -> None:
    mine = store.transact(conf.network, lambda v: [r for r in v.values() if r.state == "active"
                                                  and r.container_id == env.container_id and r.ifname == env.ifname])
    if not mine:
        raise CNIError(CHECK_FAILED, f"no active reservation for container {env.container_id} {env.ifname}")


def gc(environ: Mapping[str, str], netconf: dict, conf: IPAMConf, store, valid: set | None) -> tuple[list, list]:
    """Release this node's leaked reservations (two-pass). `valid` is the runtime's list of
    attachments (CNI GC); None means reconcile: an attachment whose netns is gone is a leak."""
    if conf.etcd_endpoints and not (conf.node_name or environ.get("MOOR_NODE_NAME")):
        # with a shared store, a guessed node name could collect another node's pods
        raise CNIError(INVALID_CONFIG, "GC with an etcd store needs the node's name: set 'ipam.nodeName' "
                       "or MOOR_NODE_NAME")
    node = node_name(environ, conf)
    limit = 60 if conf.etcd_endpoints else 10 ** 9  # etcd caps a transaction at 128 operations

    def live(r: Reservation) -> bool:
        if valid is not None:
            return (r.container_id, r.ifname) in valid
        return bool(r.netns) and os.path.exists(r.netns)

    marked, released = store.transact(conf.network, lambda v: policy.collect(v, conf, node, live, time.time(), limit))
    try:
        _hook(conf, "release", released)
    except CNIError as e:
        print(f"moor-ipam: {e.msg}", file=sys.stderr)
    return marked, released


def valid_attachments(netconf: dict) -> set:
    """The runtime's attachments for GC. libcni sends cni.dev/valid-attachments; SPEC 1.1.0 named
    it cni.dev/attachments. Without a list GC refuses: an empty guess would free every pod's IP."""
    lists = [netconf[k] for k in ("cni.dev/valid-attachments", "cni.dev/attachments") if k in netconf]
    if not lists or not all(isinstance(lst, list) for lst in lists):
        raise CNIError(INVALID_CONFIG, "invalid network config: GC needs the list 'cni.dev/valid-attachments'")
    return {(a.get("containerID"), a.get("ifname")) for lst in lists for a in lst if isinstance(a, dict)}


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[bytes, int]:
    cni_version = None
    try:
        if environ.get("CNI_COMMAND") == "VERSION":
            return version.reply(stdin), 0
        env = parse_env(environ)
        netconf = netconfig.decode(stdin)
        if isinstance(netconf.get("cniVersion"), str):
            cni_version = netconf["cniVersion"]
        if not isinstance(netconf.get("cniVersion"), str):
            raise CNIError(INVALID_CONFIG, "invalid network config: missing 'cniVersion'")
        version.require_supported(netconf["cniVersion"])
        if env.command == "CHECK":
            version.require_at_least(cni_version, "0.4.0", "CHECK")
        if env.command in ("GC", "STATUS"):
            version.require_at_least(cni_version, "1.1.0", env.command)
        if not isinstance(netconf.get("name"), str) or not netconf["name"] or "/" in netconf["name"]:
            raise CNIError(INVALID_CONFIG, "invalid network config: 'name' must be a non-empty string without '/'")
        conf = parse(netconf)
        try:
            store = open_store(conf)
        except CNIError as e:
            if env.command == "STATUS":
                raise CNIError(NOT_AVAILABLE, f"IPAM store unavailable: {e.msg}", e.details) from e
            raise
        try:
            if env.command == "ADD":
                return json.dumps(_add(environ, env, netconf, conf, store).to_dict(cni_version)).encode() + b"\n", 0
            if env.command == "DEL":
                _del(env, conf, store)
            elif env.command == "CHECK":
                _check(env, conf, store)
            elif env.command == "GC":
                gc(environ, netconf, conf, store, valid_attachments(netconf))
            elif env.command == "STATUS":
                try:
                    store.transact(conf.network, lambda v: None)
                except CNIError as e:
                    raise CNIError(NOT_AVAILABLE, f"IPAM store unavailable: {e.msg}", e.details) from e
            return b"", 0
        finally:
            store.close()
    except Exception as e:
        return error_reply(e, cni_version)


def main() -> int:
    if len(sys.argv) > 1:  # an operator, not a runtime (runtimes pass no arguments)
        from .cli import main as cli_main
        return cli_main(sys.argv[1:])
    return serve(run)
