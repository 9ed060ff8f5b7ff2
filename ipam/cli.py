"""Operator commands of moor-ipam (run with arguments; without, it is the CNI plugin):

    moor-ipam list CONFIG                 every reservation of the network, as a table or --json
    moor-ipam release CONFIG IP           end a hold (e.g. release "never"): the IP cools down, then
                                          is free; an IP in use needs --force
    moor-ipam reconcile CONFIG            two-pass release of this node's attachments whose netns
                                          is gone (a crashed runtime never sent DEL)

CONFIG is the network config file (a .conf, or a .conflist whose first moor-ipam plugin is used).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time

from cni.errors import CNIError

from . import policy
from .config import IPAMConf, parse
from .store import open_store


def read_netconf(path: str) -> tuple[dict, IPAMConf]:
    """The network config file (a .conf, or a .conflist whose first moor-ipam plugin is used) and
    its IPAM part; ValueError naming what is wrong."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if isinstance(doc.get("plugins"), list):  # a conflist: the plugin that uses moor-ipam
        plugin = next((p for p in doc["plugins"] if isinstance(p, dict)
                       and (p.get("ipam") or {}).get("type") == "moor-ipam"), None)
        if plugin is None:
            raise ValueError(f"no plugin in {path} uses moor-ipam")
        doc = dict(plugin, name=doc.get("name"), cniVersion=doc.get("cniVersion"))
    try:
        return doc, parse(doc)
    except CNIError as e:
        raise ValueError(f"{path}: {e.msg}") from e


def _load(path: str) -> tuple[dict, IPAMConf]:
    try:
        return read_netconf(path)
    except ValueError as e:
        raise SystemExit(f"moor-ipam: {e}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="moor-ipam", description="moor's static IPAM: operator commands")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_list = sub.add_parser("list", help="list reservations")
    p_list.add_argument("config")
    p_list.add_argument("--json", action="store_true")
    p_rel = sub.add_parser("release", help="release one IP")
    p_rel.add_argument("config")
    p_rel.add_argument("ip")
    p_rel.add_argument("--force", action="store_true", help="release it even while a container uses it")
    p_rel.add_argument("--seq", type=int, help="only if its sequence number is still this (from list)")
    p_rec = sub.add_parser("reconcile", help="release attachments whose netns is gone (two passes)")
    p_rec.add_argument("config")
    a = ap.parse_args(argv)
    netconf, conf = _load(a.config)
    store = open_store(conf)
    try:
        if a.cmd == "list":
            rows = sorted(store.transact(conf.network, lambda v: v.values()), key=lambda r: r.ip)
            if a.json:
                print(json.dumps([r.to_dict() for r in rows], indent=2))
            else:
                print(f"{'IP':<24} {'STATE':<8} {'POD':<32} {'CONTAINER':<14} {'NODE':<12} SEQ")
                for r in rows:
                    print(f"{r.ip:<24} {r.state:<8} {r.pod or r.identity:<32} {r.container_id[:12]:<14} "
                          f"{r.node:<12} {r.seq}")
            return 0
        if a.cmd == "release":
            try:
                ip = str(ipaddress.ip_address(a.ip))
            except ValueError:
                raise SystemExit(f"moor-ipam: {a.ip!r} is not an IP address")
            old = store.transact(conf.network, lambda v: v.get(ip))
            store.transact(conf.network, lambda v: policy.release_ip(v, conf, ip, time.time(), a.force, a.seq))
            print(f"{ip} released (was {old.holder() if old else 'free'}); free for anyone after "
                  f"{conf.cooldown_s:g} s")
            return 0
        from .plugin import gc
        marked, released = gc(os.environ, netconf, conf, store, None)
        for r in marked:
            print(f"suspect {r.ip} ({r.holder()}): netns {r.netns or '-'} is gone; released on the next run")
        for r in released:
            print(f"released {r.ip} ({r.holder()})")
        return 0
    except CNIError as e:
        print(f"moor-ipam: {e.msg}" + (f" ({e.details})" if e.details else ""), file=sys.stderr)
        return 1
    finally:
        store.close()
