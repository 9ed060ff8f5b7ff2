"""The cluster store: etcd v3 through its JSON gateway (stdlib HTTP, no gRPC stack to import).

A transaction reads the network's reservations and commits with a compare on the revision of
every key it writes: if another node changed one of them in between, nothing is written and the
allocation is recomputed from the new state. Two nodes can never take the same IP. An
unreachable etcd is CNI error 11 (try again later), never a guess."""
from __future__ import annotations

import base64
import http.client
from cni import jsonc as json  # json without its regex start-up cost (cni/jsonc.py)
import random
import time
import urllib.error
import urllib.request

from cni.errors import IO_FAILURE, TRY_AGAIN_LATER, CNIError

from . import decode_rows
from ..policy import View
from ..reservation import Reservation

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, TypeVar

    T = TypeVar("T")

MAX_ATTEMPTS = 50


def _b64(s: str) -> str:
    return base64.b64encode(s.encode(errors="surrogateescape")).decode()


def _unb64(s: str) -> str:
    # a key that is not UTF-8 (written by hand) must still be readable, reportable and deletable
    return base64.b64decode(s).decode(errors="surrogateescape")


def _range_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return base64.b64encode(bytes(b)).decode()


class EtcdStore:
    def __init__(self, endpoints: list[str], prefix: str, timeout_s: float = 5.0):
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.prefix = prefix
        self.timeout = timeout_s
        # the runtime's HTTP(S)_PROXY must not route the node's store traffic
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def close(self) -> None:
        pass

    def _post(self, path: str, body: dict) -> dict:
        errors = []
        for ep in random.sample(self.endpoints, len(self.endpoints)):
            req = urllib.request.Request(ep + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if 400 <= e.code < 500:  # etcd refused the request itself: no other member will take it
                    raise CNIError(IO_FAILURE, f"etcd refused {path} (HTTP {e.code})", detail) from e
                errors.append(f"{ep}: HTTP {e.code} {detail}")
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
                errors.append(f"{ep}: {e.__class__.__name__}: {e}")
        raise CNIError(TRY_AGAIN_LATER, "etcd is unreachable", "; ".join(errors))

    def _range(self, network: str) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
        """The network's stored (key, value) rows and each key's mod revision."""
        prefix = f"{self.prefix}/{network}/ip/"
        got = self._post("/v3/kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        rows, revs = [], {}
        for kv in got.get("kvs") or []:
            try:
                key = _unb64(kv["key"])[len(prefix):]
                value = base64.b64decode(kv.get("value", ""))
            except (KeyError, ValueError, TypeError) as e:  # not what etcd sends: the gateway is broken
                raise CNIError(IO_FAILURE, f"etcd returned an unreadable key of network {network}: {e}") from e
            rows.append((key, value))
            revs[key] = kv.get("mod_revision", "0")
        return rows, revs

    def read(self, network: str) -> list[Reservation]:
        rows, _revs = self._range(network)
        return list(decode_rows(network, rows, quiet=True)[0].values())

    def transact(self, network: str, fn: Callable[[View], T]) -> T:
        prefix = f"{self.prefix}/{network}/ip/"
        for attempt in range(MAX_ATTEMPTS):
            rows, revs = self._range(network)
            records, stray = decode_rows(network, rows)
            view = View(records)
            result = fn(view)
            if not view.changes:
                return result
            # compare-and-swap on exactly the keys written: each must be as we read it (or still
            # absent), so two nodes can never both take one IP, while allocations of different
            # IPs do not conflict with each other
            compare, ops = [], []
            for ip, res in view.changes.items():
                for key in stray.get(ip, []):  # a non-canonical copy of this IP goes with the write
                    compare.append({"key": _b64(prefix + key), "target": "MOD", "result": "EQUAL",
                                    "mod_revision": revs[key]})
                    ops.append({"requestDeleteRange": {"key": _b64(prefix + key)}})
                key = _b64(prefix + ip)
                if ip in revs:
                    compare.append({"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": revs[ip]})
                else:
                    compare.append({"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
                if res is None:
                    ops.append({"requestDeleteRange": {"key": key}})
                else:
                    ops.append({"requestPut": {"key": key, "value": _b64(json.dumps(res.to_dict()))}})
            done = self._post("/v3/kv/txn", {"compare": compare, "success": ops})
            if done.get("succeeded"):
                return result
            time.sleep(random.uniform(0, min(0.05, 0.002 * (attempt + 1))))  # another writer won: redo
        raise CNIError(TRY_AGAIN_LATER, f"etcd: network {network} is too contended, gave up after {MAX_ATTEMPTS} attempts")
