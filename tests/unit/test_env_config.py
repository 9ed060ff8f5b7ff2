"""Environment and network-config parsing: each error names its field and carries the spec code."""
from __future__ import annotations

import pytest

from cni import config
from cni.spec.env import parse_cni_args, parse_env
from cni.spec.errors import CNIError

BASE = {"cniVersion": "1.0.0", "name": "n", "type": "moor", "master": "eth1"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}


def _code(fn, *a) -> int:
    with pytest.raises(CNIError) as e:
        fn(*a)
    return e.value.code


def test_cni_args_of_a_kubelet():
    args = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;"
                          "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;IP=192.0.2.9;FOO=bar")
    assert args["K8S_POD_NAME"] == "web-0" and args["IP"] == "192.0.2.9" and args["FOO"] == "bar"


def test_unknown_cni_arg_needs_ignore_unknown():
    assert _code(parse_cni_args, "FOO=bar") == 4
    assert parse_cni_args("IgnoreUnknown=true;FOO=bar")["FOO"] == "bar"


def test_env_pod_identity():
    env = parse_env(dict(ENV, CNI_ARGS="K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0"))
    assert env.pod == "ns/web-0"


@pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
def test_add_needs_its_variables(missing):
    e = dict(ENV)
    del e[missing]
    with pytest.raises(CNIError) as exc:
        parse_env(e)
    assert exc.value.code == 4 and missing in exc.value.msg


def test_del_does_not_need_a_netns():
    assert parse_env(dict(ENV, CNI_COMMAND="DEL", CNI_NETNS="")).netns == ""


def test_runtime_config_keys_are_case_insensitive():
    c = config.parse(dict(BASE, runtimeConfig={"Mac": "02:00:00:00:00:01", "HostPort": []}))
    assert c.runtime("mac") == "02:00:00:00:00:01" and c.runtime("hostPort") == []


def test_vlan_parent_name():
    assert config.parse(dict(BASE, vlan=100)).parent == "eth1.100"
    assert _code(config.parse, dict(BASE, master="enp0s31f6abcd", vlan=100)) == 7


@pytest.mark.parametrize("over,code", [
    ({"cniVersion": "0.1.0"}, 1), ({"cniVersion": 1}, 7), ({"mode": "bgpx"}, 2), ({"mtu": True}, 7),
    ({"vlan": 0.5}, 7), ({"macvlanMode": "x"}, 2), ({"ipam": {"type": "../x"}}, 7), ({"ipam": {}}, 7),
    ({"name": "a/b"}, 7), ({"prevResult": {"ips": "x"}}, 6),
])
def test_config_errors(over, code):
    assert _code(config.parse, dict(BASE, **over)) == code


def test_gc_grace_top_level_then_the_ipam_section_then_60():
    assert config.parse(dict(BASE)).gc_grace_s == 60.0
    assert config.parse(dict(BASE, ipam={"type": "moor-ipam", "gcGraceSeconds": 5})).gc_grace_s == 5.0
    assert config.parse(dict(BASE, gcGraceSeconds=0.5,
                             ipam={"type": "moor-ipam", "gcGraceSeconds": 5})).gc_grace_s == 0.5
    # the IPAM section's own bad value is the IPAM plugin's to report: here, the default
    assert config.parse(dict(BASE, ipam={"type": "moor-ipam", "gcGraceSeconds": "x"})).gc_grace_s == 60.0


@pytest.mark.parametrize("bad", [-1, "5", True, [1]])
def test_gc_grace_must_be_a_non_negative_number(bad):
    with pytest.raises(CNIError) as e:
        config.parse(dict(BASE, gcGraceSeconds=bad))
    assert e.value.code == 7 and "gcGraceSeconds" in e.value.msg
