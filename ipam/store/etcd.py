"""The cluster store: etcd v3 through its JSON gateway (stdlib HTTP, no gRPC stack to import).

A transaction reads the network's reservations and its version key, and commits with a compare
on the version key's mod_revision: if another node committed in between, nothing is written and
the allocation is recomputed from the new state. Two nodes can never take the same IP. An
unreachable etcd is CNI error 11 (try again later), never a guess."""
from __future__ import annotations

import base64
import json
import random
import time
import urllib.error
import urllib.request

from cni.errors import TRY_AGAIN_LATER, CNIError

from ..policy import View
from ..reservation import Reservation

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, TypeVar

    T = TypeVar("T")

MAX_ATTEMPTS = 50


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _unb64(s: str) -> str:
    return base64.b64decode(s).decode()


def _range_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return base64.b64encode(bytes(b)).decode()


class EtcdStore:
    def __init__(self, endpoints: list[str], prefix: str, timeout_s: float = 5.0):
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.prefix = prefix
        self.timeout = timeout_s

    def close(self) -> None:
        pass

    def _post(self, path: str, body: dict) -> dict:
        errors = []
        for ep in random.sample(self.endpoints, len(self.endpoints)):
            req = urllib.request.Request(ep + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except (urllib.error.URLError, OSError, ValueError) as e:
                errors.append(f"{ep}: {e}")
        raise CNIError(TRY_AGAIN_LATER, "etcd is unreachable", "; ".join(errors))

    def _keys(self, network: str) -> tuple[str, str]:
        base = f"{self.prefix}/{network}"
        return f"{base}/ip/", f"{base}/version"

    def transact(self, network: str, fn: Callable[[View], T]) -> T:
        ip_prefix, version_key = self._keys(network)
        for attempt in range(MAX_ATTEMPTS):
            got = self._post("/v3/kv/txn", {"success": [
                {"requestRange": {"key": _b64(ip_prefix), "range_end": _range_end(ip_prefix)}},
                {"requestRange": {"key": _b64(version_key)}}]})
            responses = got.get("responses") or []
            kvs = (responses[0].get("response_range") or {}).get("kvs") or [] if responses else []
            vkvs = (responses[1].get("response_range") or {}).get("kvs") or [] if len(responses) > 1 else []
            seen = int(vkvs[0].get("mod_revision", 0)) if vkvs else 0
            view = View({_unb64(kv["key"])[len(ip_prefix):]: Reservation.from_dict(json.loads(_unb64(kv["value"])))
                         for kv in kvs})
            result = fn(view)
            if not view.changes:
                return result
            ops = []
            for ip, res in view.changes.items():
                if res is None:
                    ops.append({"requestDeleteRange": {"key": _b64(ip_prefix + ip)}})
                else:
                    ops.append({"requestPut": {"key": _b64(ip_prefix + ip), "value": _b64(json.dumps(res.to_dict()))}})
            ops.append({"requestPut": {"key": _b64(version_key), "value": _b64(str(time.time()))}})
            compare = {"key": _b64(version_key), "result": "EQUAL"}
            compare.update({"target": "MOD", "mod_revision": str(seen)} if seen else
                           {"target": "CREATE", "create_revision": "0"})
            done = self._post("/v3/kv/txn", {"compare": [compare], "success": ops})
            if done.get("succeeded"):
                return result
            time.sleep(random.uniform(0, min(0.2, 0.005 * (attempt + 1))))  # another node won: redo
        raise CNIError(TRY_AGAIN_LATER, f"etcd: network {network} is too contended, gave up after {MAX_ATTEMPTS} attempts")
