"""Operator commands of moor-ipam (run with arguments; without, it is the CNI plugin):

    moor-ipam list CONFIG                 every reservation of the network and its pools, as a
                                          table or --json; corrupt records are listed with why
    moor-ipam release CONFIG IP           end a hold (e.g. release "never"): the IP cools down, then
                                          is free; an IP in use, or a corrupt record, needs --force
    moor-ipam reconcile CONFIG            two-pass release of this node's attachments whose netns
                                          is gone (a crashed runtime never sent DEL)
    moor-ipam migrate CONFIG              convert an etcd network from one key an IP to blocks, in
                                          place, while nodes allocate (they wait for it)

CONFIG is the network config file (a .conf, or a .conflist whose first moor-ipam plugin is used).
Bad input or an unreadable store is a one-line message and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time

from cni.spec.errors import CNIError

from . import policy
from .collect import gc
from .read import read_netconf, snapshot
from .reservation import CORRUPT
from .store import open_store


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: exit 2 as well, one line
        self.exit(2, f"moor-ipam: {message}\n")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="moor-ipam", description="moor's static IPAM: operator commands")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    p_list = sub.add_parser("list", help="list reservations")
    p_list.add_argument("config")
    p_list.add_argument("--json", action="store_true")
    p_rel = sub.add_parser("release", help="release one IP")
    p_rel.add_argument("config")
    p_rel.add_argument("ip")
    p_rel.add_argument("--force", action="store_true",
                       help="release it even while a container uses it, or when its record is corrupt")
    p_rel.add_argument("--seq", type=int, help="only if its sequence number is still this (from list)")
    p_rec = sub.add_parser("reconcile", help="release attachments whose netns is gone (two passes)")
    p_rec.add_argument("config")
    p_mig = sub.add_parser("migrate", help="convert an etcd network to the blocks layout")
    p_mig.add_argument("config")
    return ap


class Failed(Exception):
    """A message for the operator; exit 2."""


def _list(conf, as_json: bool) -> None:
    snap = snapshot(conf)
    if snap.error:
        raise Failed(snap.error)
    if as_json:
        print(json.dumps([r.to_dict() for r in snap.reservations], indent=2))
        return
    print(f"{'IP':<24} {'STATE':<8} {'POD':<32} {'CONTAINER':<14} {'NODE':<12} SEQ")
    for r in snap.reservations:
        who = r.detail[:60] if r.state == CORRUPT else (r.pod or r.identity)
        print(f"{r.ip:<24} {r.state:<8} {who:<32} {r.container_id[:12]:<14} {r.node:<12} {r.seq}")
    print()
    for p in snap.pools:
        extra = f", {p.corrupt} corrupt" if p.corrupt else ""
        print(f"pool {p.cidr}: {p.active} active, {p.held} held{extra} of {p.size} addresses")
    if conf.etcd_endpoints:
        _list_blocks(conf)
    for r in snap.corrupt:
        print(f"corrupt record {r.ip!r} in {snap.where}: {r.detail}; it is in use for everyone until "
              f"`moor-ipam release CONFIG {r.ip} --force`", file=sys.stderr)


def _list_blocks(conf) -> None:
    """The etcd blocks: which node each is affine to, and how full."""
    store = open_store(conf, readonly=True)
    if store.layout(conf.network)[0] != "blocks":
        print(f"network {conf.network} is in the first etcd layout (one key an IP): `moor-ipam migrate` converts it")
        return
    print()
    print(f"{'BLOCK':<28} {'NODE':<20} {'ACTIVE':>6} {'OTHER':>6}")
    for b in sorted(store.blocks(conf.network), key=lambda b: b.cidr):
        active = sum(r.state == "active" for r in b.records.values())
        node = b.node or "-" if not b.corrupt else f"corrupt: {b.corrupt[:40]}"
        print(f"{b.cidr:<28} {node:<20} {active:>6} {len(b.records) - active:>6}")


def _release(conf, store, key: str, force: bool, seq: int | None) -> None:
    try:
        ip = str(ipaddress.ip_address(key))
    except ValueError:
        ip = key  # only a corrupt record sits under a key that is no address
        if not force or not any(r.ip == key and r.state == CORRUPT for r in store.read(conf.network)):
            raise Failed(f"{key!r} is not an IP address") from None
    old = store.transact(conf.network, lambda v: v.get(ip))
    store.transact(conf.network, lambda v: policy.release_ip(v, conf, ip, time.time(), force, seq))
    print(f"{ip} released (was {old.holder() if old else 'free'}); free for anyone after {conf.cooldown_s:g} s")


def main(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    try:
        try:
            netconf, conf = read_netconf(a.config)
        except ValueError as e:
            raise Failed(str(e)) from None
        if a.cmd == "list":
            _list(conf, a.json)
            return 0
        if a.cmd == "release" and not a.force:  # bad arguments before the store is touched
            try:
                ipaddress.ip_address(a.ip)
            except ValueError:
                raise Failed(f"{a.ip!r} is not an IP address") from None
        if a.cmd == "migrate" and not conf.etcd_endpoints:
            raise Failed(f"{a.config}: network {conf.network} has no etcd store: there is nothing to migrate")
        store = open_store(conf)
        try:
            if a.cmd == "migrate":
                from .store.migrate import migrate
                got = migrate(store, conf)
                if got.get("already"):
                    print(f"network {conf.network} is already in blocks")
                else:
                    print(f"network {conf.network}: {got['records']} records in {got['blocks']} blocks, "
                          f"{got['handles']} handles, {got['nodes']} node indexes"
                          + (f"; {got['skipped']} keys in no pool left out" if got.get("skipped") else ""))
                return 0
            if a.cmd == "release":
                _release(conf, store, a.ip, a.force, a.seq)
                return 0
            marked, released = gc(os.environ, conf, store, None)
            for r in marked:
                print(f"suspect {r.ip} ({r.holder()}): netns {r.netns or '-'} is gone; released on the next run")
            for r in released:
                print(f"released {r.ip} ({r.holder()})")
            return 0
        finally:
            store.close()
    except CNIError as e:
        print(f"moor-ipam: {e.msg}" + (f" ({e.details})" if e.details else ""), file=sys.stderr)
        return 2
    except Failed as e:
        print(f"moor-ipam: {e}", file=sys.stderr)
        return 2
