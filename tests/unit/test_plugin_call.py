"""The plugin as a library call, for what needs no privileges."""
from __future__ import annotations

import json

from cni.plugin import run


def test_version():
    out, code = run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}')
    assert code == 0 and json.loads(out)["cniVersion"] == "0.4.0"
    assert "1.1.0" in json.loads(out)["supportedVersions"]


def test_errors_are_json_on_stdout_with_the_config_version():
    out, code = run({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0"},
                    b'{"cniVersion":"0.4.0","name":"n","type":"moor","mode":"ipvlan","master":"e"}')
    doc = json.loads(out)
    assert code == 1 and doc == {"cniVersion": "0.4.0", "code": 2, "msg": "unsupported field 'mode': 'ipvlan'",
                                 "details": "modes: macvlan, bgp"}


def test_no_command():
    out, code = run({}, b"{}")
    assert code == 1 and json.loads(out)["code"] == 4
