"""The network config, generically: stdin decoded to a JSON object, typed field access whose errors
name the field, and GC's list of the attachments still valid. What a plugin makes of its own keys is
its own (cni/config.py for moor, ipam/config.py for moor-ipam)."""
from __future__ import annotations

from . import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)
from .errors import DECODE, INVALID_CONFIG, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Any

GC_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")  # libcni sends both (SPEC 1.1.0 renamed it)


def decode(stdin: bytes) -> dict:
    try:
        doc = json.loads(stdin)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CNIError(DECODE, f"cannot decode network config: {e}") from e
    except RecursionError:
        raise CNIError(DECODE, "cannot decode network config: nested too deeply") from None
    if not isinstance(doc, dict):
        raise CNIError(DECODE, "network config is not a JSON object")
    return doc


def get(doc: dict, key: str, typ: type | tuple, default: Any = None, required: bool = False) -> Any:
    """doc[key] when it has the type, `default` when absent or null; else code 7 naming the key."""
    if key not in doc or doc[key] is None:
        if required:
            raise CNIError(INVALID_CONFIG, f"invalid network config: missing {key!r}")
        return default
    val = doc[key]
    # bool is an int in Python; a JSON true must not pass as a number
    if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise CNIError(INVALID_CONFIG, f"invalid network config: {key!r} must be {names}, got {json.dumps(val)}")
    return val


def gc_attachments(doc: dict) -> set[tuple[str, str]]:
    """The runtime's list of attachments that are still valid, for GC, as (container ID, ifname).
    Anything malformed is code 7: a GC must never delete on a list it could not read (junk
    entries dropped would make the list look empty, and every pod a leak)."""
    present = [k for k in GC_KEYS if k in doc]
    if not present:
        raise CNIError(INVALID_CONFIG, "invalid network config: GC needs the list 'cni.dev/valid-attachments'")
    out: set[tuple[str, str]] = set()
    for k in present:
        lst = doc[k]
        if not isinstance(lst, list):
            raise CNIError(INVALID_CONFIG, f"invalid network config: {k!r} must be a list, got {json.dumps(lst)[:80]}")
        for i, a in enumerate(lst):
            cid = a.get("containerID") if isinstance(a, dict) else None
            ifname = a.get("ifname") if isinstance(a, dict) else None
            if not (isinstance(cid, str) and cid and isinstance(ifname, str) and ifname):
                raise CNIError(INVALID_CONFIG, f"invalid network config: {k}[{i}] must be an object with "
                               f"non-empty string 'containerID' and 'ifname', got {json.dumps(a)[:80]}")
            out.add((cid, ifname))
    return out
