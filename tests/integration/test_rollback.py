"""A failed ADD leaves nothing behind: no interface, address, route, shared link, record or IP."""
from __future__ import annotations

import re

import pytest

from tests.integration.conftest import MacvlanNet

pytestmark = pytest.mark.integration

# Every step of a macvlan ADD with a host shim and dual stack, in order.
STEPS = ["open-netns", "pending", "ipam", "parent", "link", "sysctls", "addresses", "up", "routes", "shim-routes",
         "announce"]


def _conf(net: MacvlanNet) -> dict:
    return net.conf(ipv6=True, hostShim=True)


def test_the_step_list_covers_every_step_of_add(net: MacvlanNet):
    r = net.cni("ADD", _conf(net), env={"MOOR_TIMING": "1"})
    assert r.code == 0, r.stdout
    ran = re.search(rb"steps: (.*)", r.stderr).group(1).decode().split(", ")
    assert ran == STEPS


@pytest.mark.parametrize("step", STEPS)
def test_failure_after_each_step_is_rolled_back(net: MacvlanNet, step: str):
    net.pod("pod1")
    before = net.snapshot()
    r = net.cni("ADD", _conf(net), env={"MOOR_FAILPOINT": step})
    assert r.code != 0 and r.error_code == 199 and step in r.json["msg"]
    assert net.snapshot() == before
    # the IP lease is gone (the snapshot holds host-local's lease files) and the pod can be retried
    net.add("pod1", _conf(net))


def test_a_real_kernel_refusal_is_rolled_back(net: MacvlanNet):
    net.pod("pod1")
    before = net.snapshot()
    # the uplink's MTU is 1500: the kernel refuses a 9000-byte macvlan after IPAM already ran
    r = net.cni("ADD", net.conf(mtu=9000, hostShim=True))
    assert r.error_code == 100 and "create macvlan link eth0" in r.json["msg"]
    assert net.snapshot() == before
