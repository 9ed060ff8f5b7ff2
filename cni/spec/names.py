"""libcni's rule for network names and container IDs, `^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$`, checked without
`re` (which would cost the plugin ~7 ms of start-up). Unlike Python's `$`, nothing after the last
character is allowed (a trailing newline included), as in Go's regexp that libcni uses."""
from __future__ import annotations

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_REST = _ALNUM | frozenset("_.-")
_HEX = frozenset("0123456789abcdefABCDEF")


def valid_id(s: str) -> bool:
    return bool(s) and s[0] in _ALNUM and all(c in _REST for c in s)


def valid_mac(s: str) -> bool:
    """xx:xx:xx:xx:xx:xx, hex digits of either case."""
    return (len(s) == 17 and all(s[i] == ":" for i in range(2, 17, 3))
            and all(s[i] in _HEX and s[i + 1] in _HEX for i in range(0, 17, 3)))
