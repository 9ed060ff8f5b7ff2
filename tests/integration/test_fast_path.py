"""The fast path: the `moor` executable hands its call to moord's CNI socket, with the same bytes out
as when it works alone; moord stopped or killed in the middle of an ADD leaves the attachment complete
or absent; a DEL during an agent's ADD waits for it and undoes it; a client in another network
namespace does the work itself. Real moord, real plugin, network namespaces.

A call that ran in the executable prints its MOOR_TIMING line on the executable's stderr; one the
agent ran prints it on the agent's: that is how a test tells which did the work."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane.nslab import Lab
from tests.helpers import REPO, ipj, run_cni
from tests.integration.conftest import MacvlanNet
from tests.interop.conftest import wait_for

pytestmark = pytest.mark.integration

TIMING = {"MOOR_TIMING": "1"}


def _in_process(r) -> bool:
    return b"moor: " in r.stderr and b" took " in r.stderr


class Agent:
    def __init__(self, net: MacvlanNet, ns: str | None = None):
        self.net, self.ns = net, ns or net.node
        self.sock = net.tmp / f"cni-{self.ns[-6:]}.sock"
        self.log = net.tmp / f"moord-{self.ns[-6:]}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Agent":
        conf = {"bgp": {"asn": 65001, "routerId": "192.0.2.2"}, "api": {"socket": ""},
                "cni": {"socket": str(self.sock)}, "metrics": {"port": 0}, "probe": {"enabled": False}}
        path = self.net.tmp / f"moord-{self.ns[-6:]}.yaml"
        path.write_text(json.dumps(conf))
        self.proc = self.net.lab.spawn(self.ns, [sys.executable, "-m", "dataplane.agent", "-v", "--config", str(path)],
                                       cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(self.log, "a"))
        wait_for(lambda: self.sock.exists() or self.proc.poll() is not None, what="moord's CNI socket")
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def stop(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)


def _routed(net: MacvlanNet, sock: str | Path, **over) -> dict:
    conf = {"cniVersion": "1.0.0", "name": "fast", "type": "moor", "mode": "bgp", "agentSocket": str(sock),
            "stateDir": str(net.tmp / "state"),
            "ipam": {"type": "moor-ipam", "dataDir": str(net.tmp / "ipam"), "gcGraceSeconds": 0,
                     "pools": [{"cidr": "203.0.113.0/24"}, {"cidr": "2001:db8:9::/64"}]}}
    conf.update(over)
    return conf


def _args(name: str) -> str:
    return f"IgnoreUnknown=1;K8S_POD_NAMESPACE=f;K8S_POD_NAME={name};K8S_POD_UID=u-{name}"


def _start(net: MacvlanNet, conf: dict, env: dict, exe: str | None = None) -> subprocess.Popen:
    """The executable (the Python client, or `exe`), started as a runtime starts it, without waiting."""
    stdin = net.tmp / f"stdin-{env['CNI_CONTAINERID']}.json"
    stdin.write_text(json.dumps(conf))
    with open(stdin, "rb") as f:
        return subprocess.Popen(["ip", "netns", "exec", net.node, exe or os.path.join(net.path, "moor")],
                                stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


@pytest.fixture
def routed(net: MacvlanNet) -> MacvlanNet:
    net.lab.run(net.node, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
    return net


def test_the_agent_answers_byte_for_byte_what_the_executable_answers(net: MacvlanNet):
    agent = Agent(net).start()
    # macvlan + moor-ipam: the MAC follows the IP and the IP the pod, so two ADDs of one pod give
    # one result; the agent makes it, the executable makes it again after a DEL
    conf = net.conf(ipam={"type": "moor-ipam", "dataDir": str(net.tmp / "ipam"),
                          "pools": [{"cidr": "192.0.2.0/24", "rangeStart": "192.0.2.10", "gateway": "192.0.2.1"},
                                    {"cidr": "2001:db8:1::/64", "rangeStart": "2001:db8:1::10"}]})
    via = {"agent": dict(conf, agentSocket=str(agent.sock)), "alone": dict(conf, agentSocket="")}
    seen = {}
    for who in ("agent", "alone", "agent"):
        add = net.cni("ADD", via[who], args=_args("web-0"), env=TIMING)
        assert add.code == 0, (add.stdout, add.stderr)
        assert _in_process(add) == (who == "alone"), (who, add.stderr)
        check = net.cni("CHECK", dict(via[who], prevResult=add.json), args=_args("web-0"), env=TIMING)
        dele = net.cni("DEL", via[who], args=_args("web-0"), env=TIMING)
        seen.setdefault(who, []).append((add.code, add.stdout, check.code, check.stdout, dele.code, dele.stdout))
        assert _in_process(dele) == (who == "alone")
    assert seen["agent"][0] == seen["alone"][0] == seen["agent"][1]

    # errors too: the same JSON, the same exit code
    bad = [("ADD", dict(conf, mtu=9), {}),                       # out of range: 7
           ("ADD", dict(conf, master="nope0"), {}),              # no such master: 7
           ("ADD", conf, {"netns": "/run/netns/moor-missing"}),  # gone: 3
           ("CHECK", dict(conf, cniVersion="0.3.1"), {}),        # too old for CHECK: 1
           ("DEL", dict(conf, ipam={"type": "no-such-ipam"}), {}),
           ("VERSION", conf, {})]
    for command, c, kw in bad:
        out = {}
        for who, sock in (("agent", str(agent.sock)), ("alone", "")):
            r = net.cni(command, dict(c, agentSocket=sock), args=_args("web-1"), env=TIMING, **kw)
            out[who] = (r.code, r.stdout)
        assert out["agent"] == out["alone"], (command, out)
    assert [l["ifname"] for l in ipj(net.pods["pod1"], "link", "show")] == ["lo"]


@pytest.mark.parametrize("client", ["python", "c"])
def test_moord_killed_in_the_middle_of_an_add_leaves_it_complete(routed: MacvlanNet, client: str, request):
    """The Python client finishes the call itself; the C client hands it to the Python client
    (MOOR_AGENT_INTERRUPTED), which finishes it the same way."""
    net = routed
    exe = request.getfixturevalue("cclient") if client == "c" else None
    agent = Agent(net).start()
    conf = _routed(net, agent.sock)
    pod = net.pod("pod1")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": pod, "CNI_IFNAME": "eth0",
           "CNI_PATH": net.path, "CNI_ARGS": _args("db-0"), "PATH": os.environ["PATH"],
           "MOOR_PAUSE": "veth:3", **TIMING}
    client = _start(net, conf, env, exe)
    # the agent has made the veth and sleeps before the rest: kill it there
    wait_for(lambda: any(l["ifname"].startswith("moor") for l in ipj(net.node, "link", "show")),
             what="the agent's veth")
    agent.stop(signal.SIGKILL)
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, (out, err)
    assert b" took " in err, "the executable finished the call itself"
    res = json.loads(out)
    ip4 = next(i["address"].split("/")[0] for i in res["ips"] if ":" not in i["address"])
    # complete: one veth, its routes, the pod's interface and address, the IP held for this container
    veths = [l["ifname"] for l in ipj(net.node, "link", "show") if l["ifname"].startswith("moor")]
    assert veths == [res["interfaces"][0]["name"]]
    assert [r["dst"] for r in ipj(net.node, "-4", "route", "show", "proto", "109")] == [ip4]
    addrs = [a["local"] for l in ipj(net.pods["pod1"], "addr", "show") for a in l.get("addr_info", [])]
    assert ip4 in addrs
    # a later DEL (the executable: the agent is dead) removes every piece
    d = net.cni("DEL", conf, container_id="c1", args=_args("db-0"), exe=exe)
    assert d.code == 0, d.stdout
    assert not [l for l in ipj(net.node, "link", "show") if l["ifname"].startswith("moor")]
    assert ipj(net.node, "route", "show", "proto", "109") == []


def test_moord_stopped_in_the_middle_of_an_add_finishes_it_first(routed: MacvlanNet):
    net = routed
    agent = Agent(net).start()
    conf = _routed(net, agent.sock)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c2", "CNI_NETNS": net.pod("pod2"), "CNI_IFNAME": "eth0",
           "CNI_PATH": net.path, "CNI_ARGS": _args("db-1"), "PATH": os.environ["PATH"], "MOOR_PAUSE": "veth:2",
           **TIMING}
    client = _start(net, conf, env)
    wait_for(lambda: any(l["ifname"].startswith("moor") for l in ipj(net.node, "link", "show")),
             what="the agent's veth")
    agent.stop(signal.SIGINT)  # a full stop: the call in flight ends first, then the agent exits
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0 and b" took " not in err, (out, err)  # the agent answered
    assert not agent.sock.exists()
    assert len(ipj(net.node, "-4", "route", "show", "proto", "109")) == 1
    # with the agent gone, the executable works alone (its socket is gone: connect fails at once)
    d = net.cni("DEL", conf, pod="pod2", container_id="c2", args=_args("db-1"), env=TIMING)
    assert d.code == 0 and _in_process(d), d.stderr
    assert ipj(net.node, "route", "show", "proto", "109") == []


def test_a_del_during_the_agents_add_waits_for_it_and_undoes_it(routed: MacvlanNet):
    net = routed
    agent = Agent(net).start()
    conf = _routed(net, agent.sock)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c3", "CNI_NETNS": net.pod("pod3"), "CNI_IFNAME": "eth0",
           "CNI_PATH": net.path, "CNI_ARGS": _args("db-2"), "PATH": os.environ["PATH"], "MOOR_PAUSE": "veth:2"}
    client = _start(net, conf, env)
    wait_for(lambda: any(l["ifname"].startswith("moor") for l in ipj(net.node, "link", "show")),
             what="the agent's veth")
    # kubelet gave up on the ADD: its DEL, done by the executable alone, waits for the agent's ADD
    d = net.cni("DEL", dict(conf, agentSocket=""), pod="pod3", container_id="c3", args=_args("db-2"))
    assert d.code == 0, d.stdout
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, (out, err)  # the ADD finished before the DEL began
    assert not [l for l in ipj(net.node, "link", "show") if l["ifname"].startswith("moor")]
    assert ipj(net.node, "route", "show", "proto", "109") == []
    assert [l["ifname"] for l in ipj(net.pods["pod3"], "link", "show")] == ["lo"]
    assert agent.proc.poll() is None


def test_a_client_in_another_network_namespace_works_alone(routed: MacvlanNet):
    net = routed
    agent = Agent(net).start()
    other = net.lab.ns("other")
    net.lab.run(other, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
    conf = _routed(net, agent.sock)
    r = run_cni(other, "ADD", conf, path=net.path, container_id="c4", netns=net.pod("pod4"),
                args=_args("db-4"), env=TIMING)
    assert r.code == 0 and _in_process(r), (r.stdout, r.stderr)
    assert len(ipj(other, "-4", "route", "show", "proto", "109")) == 1  # made here, not in the agent's
    assert ipj(net.node, "route", "show", "proto", "109") == []
    r = run_cni(other, "DEL", conf, path=net.path, container_id="c4", netns=net.pod("pod4"), args=_args("db-4"))
    assert r.code == 0


def test_agent_socket_key(net: MacvlanNet):
    from cni.entry import DEFAULT_SOCKET, socket_path
    assert socket_path(b'{"name": "x"}') == DEFAULT_SOCKET
    assert socket_path(b'{"agentSocket": ""}') == ""
    assert socket_path(b'{"agentSocket": "/run/x.sock"}') == "/run/x.sock"
    assert socket_path(b'{"agentSocket": "rel.sock"}') == ""  # the plugin itself refuses it (below)
    r = net.cni("ADD", net.conf(agentSocket="rel.sock"))
    assert r.code == 1 and r.json["code"] == 7 and "agentSocket" in r.json["msg"]
    r = net.cni("ADD", net.conf(agentSocket=5))
    assert r.code == 1 and r.json["code"] == 7
    # a socket path nobody listens on: the executable works alone, at once
    r = net.cni("ADD", net.conf(agentSocket=str(net.tmp / "nobody.sock")), env=TIMING)
    assert r.code == 0 and _in_process(r)


# -- the C client (cni/client.c): the same exchange without an interpreter start --------------------
@pytest.fixture
def cclient(net: MacvlanNet) -> str:
    """The C client built as `moor install` builds it, handing what it cannot do to the Python
    launcher in the test's CNI_PATH (as PREFIX/bin/moor on a node)."""
    from cni.client import build
    exe = net.tmp / "cbin" / "moor"
    why = build(exe, os.path.join(net.path, "moor"))
    if why:
        pytest.skip(f"the C client cannot be built here: {why}")
    return str(exe)


def test_the_c_client_answers_byte_for_byte_what_the_python_client_answers(net: MacvlanNet, cclient: str):
    agent = Agent(net).start()
    conf = net.conf(agentSocket=str(agent.sock),
                    ipam={"type": "moor-ipam", "dataDir": str(net.tmp / "ipam"),
                          "pools": [{"cidr": "192.0.2.0/24", "rangeStart": "192.0.2.10", "gateway": "192.0.2.1"}]})
    seen = {}
    for who, exe in (("c", cclient), ("py", None), ("c", cclient)):
        add = net.cni("ADD", conf, args=_args("web-0"), env=TIMING, exe=exe)
        assert add.code == 0 and not _in_process(add), (who, add.stdout, add.stderr)  # the agent did it
        check = net.cni("CHECK", dict(conf, prevResult=add.json), args=_args("web-0"), exe=exe)
        dele = net.cni("DEL", conf, args=_args("web-0"), env=TIMING, exe=exe)
        assert dele.code == 0 and not _in_process(dele)
        seen.setdefault(who, []).append((add.code, add.stdout, check.code, check.stdout, dele.code, dele.stdout))
    assert seen["c"][0] == seen["py"][0] == seen["c"][1]
    for command, c in (("ADD", dict(conf, mtu=9)), ("ADD", dict(conf, master="nope0")), ("VERSION", conf)):
        out = {who: net.cni(command, c, args=_args("web-1"), exe=exe)
               for who, exe in (("c", cclient), ("py", None))}
        assert (out["c"].code, out["c"].stdout) == (out["py"].code, out["py"].stdout), (command, out)
        assert out["c"].code == (0 if command == "VERSION" else 1)


def test_the_c_client_hands_the_python_client_what_it_cannot_do(net: MacvlanNet, cclient: str):
    # no agent on the socket: the Python client does the work, stdin replayed, same result
    conf = net.conf(agentSocket=str(net.tmp / "nobody.sock"))
    r = net.cni("ADD", conf, args=_args("web-2"), env=TIMING, exe=cclient)
    assert r.code == 0 and _in_process(r), (r.stdout, r.stderr)
    assert net.cni("DEL", conf, args=_args("web-2"), exe=cclient).code == 0
    # agentSocket "" (off), and one only JSON can read (an escape): the Python client decides
    for sock in ("", "\\/nowhere.sock"):
        raw = json.dumps(net.conf(agentSocket="X")).replace('"X"', f'"{sock}"').encode()
        r = net.cni("ADD", raw, args=_args("web-3"), env=TIMING, exe=cclient)
        assert r.code == 0 and _in_process(r), (sock, r.stdout, r.stderr)
        assert net.cni("DEL", raw, args=_args("web-3"), exe=cclient).code == 0
    # arguments: an operator's command, not a CNI call
    r = subprocess.run([cclient, "install", "--help"], capture_output=True, timeout=60)
    assert r.returncode == 0 and b"usage: moor install" in r.stdout, r
    # an empty config: the Python client's error, byte for byte
    outs = [subprocess.run([exe], capture_output=True, timeout=60, input=b"",
                           env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x", "CNI_IFNAME": "eth0",
                                "CNI_NETNS": net.pod("pod1"), "CNI_PATH": net.path, "PATH": os.environ["PATH"]})
            for exe in (cclient, os.path.join(net.path, "moor"))]
    assert outs[0].returncode == outs[1].returncode == 1 and outs[0].stdout == outs[1].stdout, outs
