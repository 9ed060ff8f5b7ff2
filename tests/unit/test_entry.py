"""cni/entry.py's reading of agentSocket: the byte scan that spares the client importing json gives
what json gives, and leaves to json whatever it cannot read plainly."""
from __future__ import annotations

import json

import pytest

from cni.entry import DEFAULT_SOCKET, _scan_string, socket_path


@pytest.mark.parametrize("doc", [
    {"cniVersion": "1.0.0", "name": "n", "type": "moor"},
    {"agentSocket": "/run/x/cni.sock", "name": "n"},
    {"agentSocket": "", "name": "n"},
    {"agentSocket": "relative.sock"},
    {"agentSocket": "/run/caf\u00e9/cni.sock"},
    {"agentSocket": "/run/a\"b/cni.sock"},      # an escape: json reads it
    {"agentSocket": 5},
    {"agentSocket": None},
    {"agentSocket": ["/x"]},
    {"name": "agentSocket", "agentSocket": "/a"},  # the word twice: json reads it
])
@pytest.mark.parametrize("indent", [None, 2])
def test_scan_agrees_with_json(doc, indent):
    raw = json.dumps(doc, indent=indent, ensure_ascii=False).encode()
    v = doc.get("agentSocket", DEFAULT_SOCKET if "agentSocket" not in doc else None)
    want = v if isinstance(v, str) and v.startswith("/") else ""
    if "agentSocket" not in doc:
        want = DEFAULT_SOCKET
    assert socket_path(raw) == want


def test_scan_reads_only_plain_strings():
    assert _scan_string(b'{"agentSocket" : "/a/b"}', b'"agentSocket"') == "/a/b"
    assert _scan_string(b'{"agentSocket": "/a\\u0062"}', b'"agentSocket"') is None
    assert _scan_string(b'{"agentSocket": "/a', b'"agentSocket"') is None  # unterminated
    assert _scan_string(b'{"agentSocket": 1}', b'"agentSocket"') is None
    assert _scan_string(b'{"agentSocket"}', b'"agentSocket"') is None
    assert socket_path(b'{"agentSocket": "/a') == ""  # not JSON: the plugin itself reports it
