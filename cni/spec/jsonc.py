"""json.loads/dumps/load/dump through the C accelerators in `_json`, without importing `json`.

`import json` costs the plugin ~9 ms of its start-up (json.decoder and json.encoder compile regexes
with `re`, which imports `enum`), a third of a whole ADD of the Go reference plugin. The C scanner
and encoder that `json` itself uses need no regex. Output is byte for byte json.dumps' with default
arguments; anything the fast path does not handle (bad UTF-8, a BOM, a syntax error) goes to `json`
itself, which raises its usual errors. Hot-path modules import this as `json`.
"""
from __future__ import annotations

import _json

# a json.JSONDecodeError is a ValueError; callers catch this name (the real class would need json)
JSONDecodeError = ValueError

_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    """What _json.make_scanner reads off a JSONDecoder: json.loads' defaults."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__
    memo: dict = {}


_scan = _json.make_scanner(_Context())
_WS = " \t\n\r"


def _default(o):
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def loads(s: str | bytes | bytearray):
    text = s
    if isinstance(s, (bytes, bytearray)):
        if s[:3] == b"\xef\xbb\xbf" or (len(s) >= 2 and (s[0] == 0 or s[1] == 0)):
            return _slow_loads(s)  # a BOM or UTF-16/32: json's encoding detection
        try:
            text = s.decode("utf-8")
        except UnicodeDecodeError:
            return _slow_loads(s)
    elif not isinstance(s, str):
        return _slow_loads(s)  # json's TypeError
    start = len(text) - len(text.lstrip(_WS))
    try:
        obj, end = _scan(text, start)
    except (StopIteration, ValueError, RecursionError, SystemError):
        # SystemError: the scanner raises json.decoder.JSONDecodeError, which it looks up in
        # sys.modules without importing it; before anything imported json it fails with "returned
        # NULL without setting an exception". json itself then reports the syntax error.
        return _slow_loads(s)
    if text[end:].strip(_WS):
        return _slow_loads(s)  # "Extra data"
    return obj


def _slow_loads(s):
    import json
    return json.loads(s)


def dumps(obj) -> str:
    if isinstance(obj, str):
        return _json.encode_basestring_ascii(obj)
    encode = _json.make_encoder({}, _default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    return "".join(encode(obj, 0))


def load(f):
    return loads(f.read())


def dump(obj, f) -> None:
    f.write(dumps(obj))
