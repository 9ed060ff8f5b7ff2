"""moor-ipam, the CNI IPAM plugin: (environment, stdin) -> (stdout, exit code), like `moor`.

Works under moor and under the reference macvlan/bridge/ptp plugins (`"ipam": {"type": "moor-ipam"}`).
"""
from __future__ import annotations

import ipaddress
import sys
import time

from cni.spec import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)
from cni.spec import netconf as netconfig
from cni.spec import version
from cni.spec.env import parse_env
from cni.spec.errors import CHECK_FAILED, INVALID_CONFIG, NOT_AVAILABLE, CNIError
from cni.spec.executable import error_reply, serve
from cni.spec.record import replace
from cni.spec.result import IPConfig, Result, RouteConfig

from . import hook, lock, policy
from .collect import gc, node_name, sandbox_gone
from .config import IPAMConf, parse
from .identity import identify
from .inprocess import UNDO_ENV
from .reservation import Reservation
from .store import open_store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping

HOOK_FAILED = hook.HOOK_FAILED


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


def _add(environ: Mapping[str, str], env, netconf: dict, conf: IPAMConf, store) -> Result:
    ident = identify(env.args, netconf, conf.sticky)
    req = policy.Request(container_id=env.container_id, ifname=env.ifname, ident=ident, netns=env.netns,
                         node=node_name(environ, conf), now=time.time(), sandbox_gone=sandbox_gone)
    taken = store.transact(conf.network, lambda view: policy.allocate(view, conf, req))
    # the inventory learns every binding it has not acknowledged, also after a crash between the
    # commit and the hook (the runtime's retry of ADD then announces it)
    unannounced = [r for r in taken if not r.announced]
    if conf.inventory_hook and unannounced:
        try:
            hook.tell(conf, "allocate", unannounced)
        except CNIError:
            _undo(conf, store, env, {r.ip: r.seq for r in unannounced})
            raise
        store.transact(conf.network, lambda v: [v.put(replace(r, announced=True)) for r in unannounced
                                                if (cur := v.get(r.ip)) is not None and cur.seq == r.seq])
    return _result(conf, taken)


def _undo(conf: IPAMConf, store, env, only: dict[str, int] | None = None) -> None:
    """Give back what this container's ADD took (the CNI plugin rolled back, or the inventory
    refused): each IP exactly as it was before, its previous holder included."""
    try:
        store.transact(conf.network, lambda v: policy.undo(v, env.container_id, env.ifname, only))
    except CNIError as e:  # the refusal is the error to report; GC reclaims the rest
        if only is None:
            raise
        print(f"moor-ipam: could not undo the refused allocation: {e.msg}", file=sys.stderr)


def _del(environ: Mapping[str, str], env, conf: IPAMConf, store) -> None:
    if environ.get(UNDO_ENV):
        _undo(conf, store, env)
        return
    released = store.transact(conf.network, lambda v: policy.release(v, conf, env.container_id, env.ifname, time.time()))
    try:
        hook.tell(conf, "release", released)
    except CNIError as e:  # DEL must stay idempotent: the inventory learns on the next event
        print(f"moor-ipam: {e.msg}", file=sys.stderr)


def _check(env, conf: IPAMConf, store) -> None:
    mine = store.transact(conf.network, lambda v: v.of_container(env.container_id, env.ifname))
    if not mine:
        raise CNIError(CHECK_FAILED, f"no active reservation for container {env.container_id} {env.ifname}")


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
        valid = netconfig.gc_attachments(netconf) if env.command == "GC" else None  # before any change
        try:
            store = open_store(conf, node=node_name(environ, conf))
        except CNIError as e:
            if env.command == "STATUS":
                raise CNIError(NOT_AVAILABLE, f"IPAM store unavailable: {e.msg}", e.details) from e
            raise
        try:
            if env.command in ("ADD", "DEL", "CHECK"):
                with lock.attachment(conf, env.container_id, env.ifname) as held:
                    if env.command == "ADD":
                        res = _add(environ, env, netconf, conf, store)
                        return json.dumps(res.to_dict(cni_version)).encode() + b"\n", 0
                    if env.command == "DEL":
                        _del(environ, env, conf, store)
                        held.discard()  # the attachment is gone: so is its lock file
                    else:
                        _check(env, conf, store)
            elif env.command == "GC":
                gc(environ, conf, store, valid)
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
