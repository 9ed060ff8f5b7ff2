"""Spec versions moor speaks and which verbs each allows."""
from __future__ import annotations

from . import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)

from .errors import INCOMPATIBLE_VERSION, CNIError

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"


def key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def require_supported(v: str) -> None:
    if v not in SUPPORTED:
        raise CNIError(INCOMPATIBLE_VERSION, f"incompatible CNI version {v!r}",
                       f"moor supports {', '.join(SUPPORTED)}")


def require_at_least(v: str, minimum: str, verb: str) -> None:
    if key(v) < key(minimum):
        raise CNIError(INCOMPATIBLE_VERSION, f"config version {v} does not allow {verb}",
                       f"{verb} needs cniVersion {minimum} or later")


def reply(stdin: bytes) -> bytes:
    """The VERSION answer, in the version the caller asked for when moor speaks it."""
    asked = LATEST
    try:
        doc = json.loads(stdin) if stdin.strip() else {}
        if isinstance(doc, dict) and isinstance(doc.get("cniVersion"), str):
            asked = doc["cniVersion"]
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        pass
    if asked not in SUPPORTED:
        asked = LATEST
    return json.dumps({"cniVersion": asked, "supportedVersions": list(SUPPORTED)}).encode() + b"\n"
