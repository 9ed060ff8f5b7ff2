"""Garbage collection of this node's leaked reservations, shared by the CNI GC verb (the
runtime's list of live attachments) and `moor-ipam reconcile` (attachments whose netns is gone)."""
from __future__ import annotations

import os
import sys
import time

from cni.spec.errors import INVALID_CONFIG, CNIError
from cni.netlink import netns as nsmod

from . import hook, policy
from .lock import busy, sweep_stale
from .reservation import ACTIVE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping

    from .config import IPAMConf
    from .reservation import Reservation

ETCD_TXN_LIMIT = 60  # etcd caps a transaction at 128 operations (two per changed key)


NODE_ENV = ("MOOR_NODE_NAME", "NODE_NAME", "KUBERNETES_NODE_NAME")


def explicit_node_name(environ: Mapping[str, str], conf: IPAMConf | None = None) -> str:
    """The node's name as configured: 'ipam.nodeName', else the first of NODE_ENV set (the
    downward API's spec.nodeName), else "" (unknown)."""
    return (conf.node_name if conf else "") or next((environ[k] for k in NODE_ENV if environ.get(k)), "")


def node_name(environ: Mapping[str, str], conf: IPAMConf | None = None) -> str:
    return explicit_node_name(environ, conf) or os.uname().nodename  # (socket costs ~4 ms to import)


def sandbox_gone(r: Reservation) -> bool:
    """Proof that a reservation's container is gone on this node: its netns path no longer holds
    a network namespace. Anything short of that (no path recorded, no permission) is no proof."""
    if not r.netns:
        return False
    try:
        os.close(nsmod.open_netns(r.netns))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return True
    except OSError:
        return False
    return False


def gc(environ: Mapping[str, str], conf: IPAMConf, store, valid: set | None) -> tuple[list, list]:
    """Release this node's leaked reservations (two-pass). `valid` is the runtime's list of
    attachments (CNI GC); None means reconcile: an attachment whose netns is gone is a leak.
    An attachment that an ADD or DEL is working on right now is never a leak."""
    if conf.etcd_endpoints and not explicit_node_name(environ, conf):
        # with a shared store, a guessed node name could collect another node's pods
        raise CNIError(INVALID_CONFIG, "GC with an etcd store needs the node's name: set 'ipam.nodeName' "
                       "or one of " + ", ".join(NODE_ENV))
    node = node_name(environ, conf)
    limit = ETCD_TXN_LIMIT if conf.etcd_endpoints else 10 ** 9

    def live(r: Reservation) -> bool:
        if busy(conf, r.container_id, r.ifname):
            return True
        if valid is not None:
            return (r.container_id, r.ifname) in valid
        return not sandbox_gone(r)

    marked, released = store.transact(conf.network, lambda v: policy.collect(v, conf, node, live, time.time(), limit))
    # the lock files of attachments whose DEL never came go too (a leak released, an IP taken over)
    # (this node's reservations: a store with blocks reads only the node's blocks)
    holders = store.transact(conf.network, lambda v: {(r.container_id, r.ifname) for r in v.values()
                                                      if r.state == ACTIVE})
    sweep_stale(conf, holders)
    if hasattr(store, "tidy"):  # empty blocks go back to the pool after their idle time
        store.tidy(conf.network, time.time())
    try:
        hook.tell(conf, "release", released)
    except CNIError as e:
        print(f"moor-ipam: {e.msg}", file=sys.stderr)
    return marked, released
