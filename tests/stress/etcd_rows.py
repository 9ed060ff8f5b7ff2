"""The storm harness's independent view of a network in etcd (stdlib only: it runs with the
system python3 inside the node's netns, where the private etcd listens).

    etcd_rows.py read ENDPOINT PREFIX NETWORK          -> JSON {stored key: stored record}
    etcd_rows.py corrupt ENDPOINT PREFIX NETWORK IP    -> puts a record that does not parse

Both layouts: the first one (one key an IP) and blocks (records inside each block's value)."""
from __future__ import annotations

import base64
import ipaddress
import json
import sys
import urllib.request


def _post(ep: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(ep + path, data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _range(ep: str, prefix: str) -> list[tuple[str, bytes, str]]:
    end = base64.b64encode(prefix[:-1].encode() + bytes([prefix.encode()[-1] + 1])).decode()
    got = _post(ep, "/v3/kv/range", {"key": _b64(prefix), "range_end": end})
    return [(base64.b64decode(kv["key"]).decode()[len(prefix):], base64.b64decode(kv.get("value", "")),
             kv["mod_revision"]) for kv in got.get("kvs") or []]


def read(ep: str, prefix: str, network: str) -> dict:
    out = {k: v.decode(errors="replace") for k, v, _ in _range(ep, f"{prefix}/{network}/ip/")}
    for _cidr, value, _rev in _range(ep, f"{prefix}/{network}/block/"):
        try:
            recs = json.loads(value)["records"]
        except (ValueError, KeyError, TypeError):
            continue  # a whole block unreadable: the harness never writes one
        out.update({ip: json.dumps(r) for ip, r in recs.items()})
    return out


def corrupt(ep: str, prefix: str, network: str, ip: str) -> None:
    """A record that does not parse, only where no record is (a live pod's record spoiled is not
    what this simulates), in the layout the network has."""
    layout = _range(ep, f"{prefix}/{network}/layout")
    if not layout or layout[0][1] != b"blocks":
        key = _b64(f"{prefix}/{network}/ip/{ip}")
        bad = '{"ip": "%s", "state": "active", "seq": "x"' % ip  # torn write
        _post(ep, "/v3/kv/txn", {"compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                                 "success": [{"requestPut": {"key": key, "value": _b64(bad)}}]})
        return
    for cidr, value, rev in _range(ep, f"{prefix}/{network}/block/"):
        if ipaddress.ip_address(ip) not in ipaddress.ip_network(cidr):
            continue
        doc = json.loads(value)
        if ip in doc["records"]:
            return
        doc["records"][ip] = {"ip": ip, "state": "active", "seq": "x"}  # a field of the wrong type
        key = _b64(f"{prefix}/{network}/block/{cidr}")
        _post(ep, "/v3/kv/txn", {"compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": rev}],
                                 "success": [{"requestPut": {"key": key, "value": _b64(json.dumps(doc))}}]})


if __name__ == "__main__":
    cmd, ep, prefix, network, *rest = sys.argv[1:]
    if cmd == "read":
        sys.stdout.write(json.dumps(read(ep, prefix, network)))
    else:
        corrupt(ep, prefix, network, rest[0])
