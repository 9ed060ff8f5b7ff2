"""moord's YAML config: every value checked at load, every error one line naming its field."""
from __future__ import annotations

import copy
import json
import re
import socket
from pathlib import Path

import pytest

from dataplane.agent import KNOWN, ConfigError, expand_env, load

REPO = Path(__file__).resolve().parents[2]

GOOD = """
bgp:
  asn: 4200000001
  routerId: 192.0.2.2
  listenPort: 1179
  peers:
    - {address: 192.0.2.1, asn: 65000, passive: true, communities: ["65000:42", no-export], gracefulRestart: true}
  gracefulRestart: {restartTime: 60, staleRoutesTime: 200, stateFile: /tmp/x.json}
  installLearned: true
  nextHopIPv6: 2001:db8::2
  advertise: {podRoutes: true, blocks: [203.0.113.0/26]}
"""


def test_good_config():
    c = load(GOOD)
    assert c.local.asn == 4200000001 and c.listen_port == 1179
    assert c.peers[0].passive and c.peers[0].communities == (65000 << 16 | 42, 0xFFFFFF01)
    assert c.peers[0].graceful_restart and c.local.restart_time == 60 and c.stale_time == 200
    assert c.state_file == "/tmp/x.json" and c.install_learned and c.local.next_hop6 == "2001:db8::2"
    assert [str(b) for b in c.advertise_blocks] == ["203.0.113.0/26"]
    # graceful restart starts off: R and F are decided by the agent at start, never configured
    assert not c.local.restarted and not c.local.forwarding
    # eBPF host routing is on unless turned off (moord falls back to the stack when it cannot load)
    assert c.host_routing.enabled and c.host_routing.uplinks == []


def full(tmp: Path) -> dict:
    """Every key moord knows, each set to a value other than its default."""
    (tmp / "net.d").mkdir(exist_ok=True)
    return {
        "bgp": {"asn": 4200000001, "routerId": "192.0.2.2", "listenAddress": "::", "listenPort": 1179,
                "holdTime": 30, "nextHopIPv6": "2001:db8::2", "installLearned": True,
                "peers": [{"address": "192.0.2.1", "asn": 65000, "passive": False, "port": 1790, "holdTime": 9,
                           "communities": ["65000:42", "no-export"], "password": "s3cret", "ttlSecurity": True,
                           "gracefulRestart": True, "maxPrefixes": 1000},
                          {"address": "2001:db8::1", "asn": 65001, "passive": True}],
                "gracefulRestart": {"restartTime": 60, "staleRoutesTime": 200.5,
                                    "stateFile": str(tmp / "run" / "moor" / "gr.json")},
                "advertise": {"podRoutes": False, "blocks": ["203.0.113.0/26", "2001:db8:1::/64"]}},
        "api": {"socket": str(tmp / "run" / "moor" / "moord.sock")},
        "cni": {"socket": str(tmp / "run" / "moor" / "cni.sock")},
        "metrics": {"address": "127.0.0.1", "port": 0},
        "probe": {"enabled": False, "sessionLimit": 500000, "sessionAgingSeconds": 30, "maxSessions": 4096},
        "ipam": {"config": str(tmp / "net.d" / "10-moor.conflist")},
        "node": {"forwarding": "off"},
        "dataplane": {"hostRouting": False, "uplinks": ["up0", "bond0.42"]},
    }


def test_good_full_config(tmp_path):
    doc = full(tmp_path)
    c = load(json.dumps(doc))  # JSON is YAML
    assert (c.local.asn, c.local.router_id, c.local.hold_time, c.local.next_hop6) == (
        4200000001, "192.0.2.2", 30, "2001:db8::2")
    assert (c.listen_address, c.listen_port, c.install_learned, c.advertise_pod_routes) == ("::", 1179, True, False)
    p0, p1 = c.peers
    assert (p0.address, p0.asn, p0.passive, p0.port, p0.hold_time, p0.password, p0.ttl_security,
            p0.graceful_restart) == ("192.0.2.1", 65000, False, 1790, 9, "s3cret", True, True)
    assert p0.communities == (65000 << 16 | 42, 0xFFFFFF01)
    assert (p1.address, p1.passive, p1.port, p1.hold_time) == ("2001:db8::1", True, 179, 30)  # the speaker's hold
    assert (c.local.restart_time, c.stale_time) == (60, 200.5)
    assert c.state_file == doc["bgp"]["gracefulRestart"]["stateFile"]  # its parents are made at start
    assert [str(b) for b in c.advertise_blocks] == ["203.0.113.0/26", "2001:db8:1::/64"]
    assert (c.api_socket, c.metrics_address, c.metrics_port) == (doc["api"]["socket"], "127.0.0.1", 0)
    assert (c.probe.enabled, c.probe.session_limit, c.probe.session_aging_s, c.probe.max_sessions) == (
        False, 500000, 30.0, 4096)
    assert c.ipam_config == doc["ipam"]["config"]
    assert (p0.max_prefixes, p1.max_prefixes) == (1000, 0)
    assert c.node.forwarding == "off"
    assert (c.host_routing.enabled, c.host_routing.uplinks) == (False, ["up0", "bond0.42"])


def test_the_schema_covers_every_key_of_the_full_config(tmp_path):
    def keys(doc, schema):
        assert set(doc) == set(KNOWN[schema]), schema
        for k, v in doc.items():
            sub = f"{schema}.{k}" if schema else k
            if isinstance(v, dict):
                keys(v, sub)
            elif k == "peers":
                keys(v[0], "bgp.peers[]")
    keys(full(tmp_path), "")


def test_the_readme_config_loads(tmp_path):
    readme = (REPO / "README.md").read_text()
    block = readme.split("## moord and the BGP speaker", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    c = load(block.replace("/run/moor", str(tmp_path / "run")))  # /run may not be writable here
    assert c.local.router_id == "192.0.2.2" and c.peers[0].ttl_security and c.probe.session_limit == 500000


def B(**bgp) -> str:
    """A config with a valid bgp section, changed by `bgp` (None: the key removed)."""
    doc = {"asn": 65001, "routerId": "192.0.2.2", **bgp}
    return json.dumps({"bgp": {k: v for k, v in doc.items() if v is not None}})


def P(*peers, **bgp) -> str:
    return B(peers=[{"address": "192.0.2.1", "asn": 65000, **p} for p in peers], **bgp)


def T(**top) -> str:
    return json.dumps({"bgp": {"asn": 65001, "routerId": "192.0.2.2"}, **top})


BAD = [
    # structure
    ("bgp: 5", "bgp must be a mapping, got 5"),
    ("", "bgp is missing"), ("- bgp", "the config must be a mapping"),
    ("bgp: {routerId: 192.0.2.2}", "bgp.asn is missing"),
    ("bgp: [", "not YAML: line 1, column 7"),
    ("bgp: {asn: 1, asn: 2, routerId: 192.0.2.2}", "duplicate key 'asn'"),
    (B(gracefulRestart=5), "bgp.gracefulRestart must be a mapping, got 5"),
    (B(advertise=[]), "bgp.advertise must be a mapping"),
    (B(peers={"address": "192.0.2.1"}), "bgp.peers must be a list"),
    (B(peers=[5]), "bgp.peers[0] must be a mapping, got 5"),
    (T(api="/run/x.sock"), "api must be a mapping"), (T(metrics=9653), "metrics must be a mapping"),
    (T(probe=True), "probe must be a mapping"), (T(ipam="x"), "ipam must be a mapping"),
    # ASNs
    (B(asn=0), "bgp.asn 0: must be 1..4294967295"), (B(asn=-1), "bgp.asn -1"),
    (B(asn=4294967296), "bgp.asn 4294967296"), (B(asn="65001"), "bgp.asn must be int, got '65001'"),
    (B(asn=True), "bgp.asn must be int, got true"), (B(asn=1.5), "bgp.asn must be int"),
    (P({"asn": -1}), "bgp.peers[0].asn -1"), (P({"asn": 0}), "bgp.peers[0].asn 0"),
    (P({"asn": None}), "bgp.peers[0].asn is missing"), (P({"asn": "x"}), "bgp.peers[0].asn must be int"),
    # addresses
    (B(routerId=""), "bgp.routerId '': not an IPv4 address"), (B(routerId="x"), "bgp.routerId x"),
    (B(routerId="0.0.0.0"), "bgp.routerId 0.0.0.0: must not be zero"),
    (B(routerId="2001:db8::2"), "bgp.routerId 2001:db8::2: not an IPv4"),
    (B(routerId=3221225986), "bgp.routerId must be str"), (B(routerId=None), "bgp.routerId is missing"),
    (B(listenAddress=""), "bgp.listenAddress ''"), (B(listenAddress="localhost"), "bgp.listenAddress localhost"),
    (B(nextHopIPv6="192.0.2.2"), "bgp.nextHopIPv6 192.0.2.2: not an IPv6"),
    (B(nextHopIPv6="nope"), "bgp.nextHopIPv6"), (B(nextHopIPv6="::"), "bgp.nextHopIPv6 ::: not a unicast"),
    (P({"address": "nope"}), "bgp.peers[0].address nope"), (P({"address": ""}), "bgp.peers[0].address ''"),
    (P({"address": "0.0.0.0"}), "bgp.peers[0].address 0.0.0.0: not a unicast"),
    (P({"address": "224.0.0.5"}), "bgp.peers[0].address"), (P({"address": 7}), "bgp.peers[0].address must be str"),
    (P({}, {"address": "192.0.2.3"}, {"address": "192.0.2.1"}), "bgp.peers[2].address 192.0.2.1: appears twice"),
    (P({"address": "2001:db8::1"}, {"address": "2001:DB8:0::1"}), "bgp.peers[1].address"),
    (P({"address": "2001:db8::1", "passive": True}), "bgp.peers[0].passive: the peer must connect to us over IPv6"),
    (P({"passive": True}, listenAddress="2001:db8::2"), "bgp.peers[0].passive"),
    (T(metrics={"address": "nope"}), "metrics.address nope"), (T(metrics={"address": ""}), "metrics.address ''"),
    # ports
    (B(listenPort=0), "bgp.listenPort 0: must be 1..65535"), (B(listenPort=70000), "bgp.listenPort 70000"),
    (B(listenPort="179"), "bgp.listenPort must be int"),
    (P({}, {"address": "192.0.2.3", "port": 70000}), "bgp.peers[1].port 70000: must be 1..65535"),
    (P({"port": 0}), "bgp.peers[0].port 0"), (P({"port": -1}), "bgp.peers[0].port -1"),
    (T(metrics={"port": -1}), "metrics.port -1"), (T(metrics={"port": 65536}), "metrics.port 65536"),
    (T(metrics={"port": "9653"}), "metrics.port must be int"),
    # times
    (B(holdTime=-1), "bgp.holdTime -1: must be 0 or 3..65535"), (B(holdTime=2), "bgp.holdTime 2"),
    (B(holdTime=65536), "bgp.holdTime 65536"), (P({"holdTime": 1}), "bgp.peers[0].holdTime 1"),
    (P({"holdTime": -9}), "bgp.peers[0].holdTime -9"),
    (B(gracefulRestart={"restartTime": 5000}), "bgp.gracefulRestart.restartTime 5000: must be 0..4095"),
    (B(gracefulRestart={"restartTime": -1}), "bgp.gracefulRestart.restartTime -1"),
    (B(gracefulRestart={"staleRoutesTime": -5}), "bgp.gracefulRestart.staleRoutesTime -5: must be >= 0"),
    (B(gracefulRestart={"staleRoutesTime": "x"}), "bgp.gracefulRestart.staleRoutesTime must be a number"),
    ("bgp: {asn: 1, routerId: 192.0.2.2, gracefulRestart: {staleRoutesTime: .inf}}",
     "bgp.gracefulRestart.staleRoutesTime must be a number"),
    (T(probe={"sessionAgingSeconds": 0}), "probe.sessionAgingSeconds 0: must be > 0"),
    (T(probe={"sessionAgingSeconds": -1}), "probe.sessionAgingSeconds -1"),
    (T(probe={"sessionLimit": -1}), "probe.sessionLimit -1"), (T(probe={"maxSessions": 10}), "probe.maxSessions 10"),
    # booleans
    (P({"gracefulRestart": "yes-please"}), "bgp.peers[0].gracefulRestart must be bool"),
    (P({"passive": 1}), "bgp.peers[0].passive must be bool, got 1"),
    (P({"ttlSecurity": "true"}), "bgp.peers[0].ttlSecurity must be bool, got 'true'"),
    (B(installLearned=1), "bgp.installLearned must be bool"),
    (B(advertise={"podRoutes": "no"}), "bgp.advertise.podRoutes must be bool"),
    (T(probe={"enabled": 0}), "probe.enabled must be bool"),
    # communities, blocks, passwords, limits
    (P({"communities": "65000:42"}), "bgp.peers[0].communities must be a list"),
    (P({"communities": ["1:99999"]}), "bgp.peers[0].communities[0]"),
    ("bgp: {asn: 1, routerId: 192.0.2.2, peers: [{address: 192.0.2.1, asn: 2, communities: [65000:42]}]}",
     "bgp.peers[0].communities[0] 3900042: must be a quoted string"),  # YAML 1.1 base 60
    (B(advertise={"blocks": ["10.0.0.1/8"]}), "bgp.advertise.blocks[0]"),
    (B(advertise={"blocks": "10.0.0.0/8"}), "bgp.advertise.blocks must be a list"),
    (B(advertise={"blocks": [10]}), "bgp.advertise.blocks[0] 10"),
    (P({"password": 1234}), "bgp.peers[0].password must be str"),
    (P({"password": "x" * 81}), "bgp.peers[0].password is longer than 80 bytes"),
    (P({"maxPrefixes": -1}), "bgp.peers[0].maxPrefixes -1"), (P({"maxPrefixes": "many"}), "bgp.peers[0].maxPrefixes"),
    # paths
    (B(gracefulRestart={"stateFile": "moord-gr.json"}),
     "bgp.gracefulRestart.stateFile moord-gr.json: must be an absolute path"),
    (B(gracefulRestart={"stateFile": ""}), "bgp.gracefulRestart.stateFile '': must be an absolute path"),
    (B(gracefulRestart={"stateFile": "/tmp/"}), "bgp.gracefulRestart.stateFile /tmp/: must name a file"),
    (B(gracefulRestart={"stateFile": "/tmp"}), "bgp.gracefulRestart.stateFile /tmp: is a directory"),
    (T(api={"socket": "moord.sock"}), "api.socket moord.sock: must be an absolute path"),
    (T(api={"socket": "/tmp"}), "api.socket /tmp: is a directory"),
    (T(api={"socket": "/tmp/" + "s" * 110}), "api.socket /tmp/sss"),
    (T(api={"socket": 5}), "api.socket must be str"),
    (T(ipam={"config": "10-moor.conflist"}), "ipam.config 10-moor.conflist: must be an absolute path"),
    # unknown keys, at every level, with the nearest known key
    (B(instalLearned=True), "bgp.instalLearned: unknown key (did you mean installLearned?)"),
    (T(bgpp={}), "bgpp: unknown key (did you mean bgp?)"),
    (P({"prot": 1179}), "bgp.peers[0].prot: unknown key (did you mean port?)"),
    (P({}, {"address": "192.0.2.3", "asn": 2, "maxprefixes": 5}),
     "bgp.peers[1].maxprefixes: unknown key (did you mean maxPrefixes?)"),
    (B(gracefulRestart={"restarTime": 60}), "bgp.gracefulRestart.restarTime: unknown key (did you mean restartTime?)"),
    (B(advertise={"podroutes": True}), "bgp.advertise.podroutes: unknown key (did you mean podRoutes?)"),
    (T(api={"sock": "/tmp/x.sock"}), "api.sock: unknown key (did you mean socket?)"),
    (T(metrics={"adress": "127.0.0.1"}), "metrics.adress: unknown key (did you mean address?)"),
    (T(probe={"enable": True}), "probe.enable: unknown key (did you mean enabled?)"),
    (T(ipam={"conf": "/x"}), "ipam.conf: unknown key (did you mean config?)"),
    (T(node={"forwardng": "on"}), "node.forwardng: unknown key (did you mean forwarding?)"),
    (B(forwarding="on"), "bgp.forwarding: unknown key here (it belongs in node)"),
    # node
    (T(node="on"), "node must be a mapping, got 'on'"),
    (T(node={"forwarding": "yes"}), "node.forwarding yes: must be auto, on or off"),
    (T(node={"forwarding": ""}), "node.forwarding '': must be auto, on or off"),
    (T(node={"forwarding": "ON"}), "node.forwarding ON: must be auto, on or off"),
    (T(node={"forwarding": 1}), "node.forwarding must be auto, on or off, got 1"),
    (T(node={"forwarding": ["on"]}), "node.forwarding must be auto, on or off, got ['on']"),
    # dataplane
    (T(dataplane={"hostrouting": True}), "dataplane.hostrouting: unknown key (did you mean hostRouting?)"),
    (T(dataplane={"hostRouting": "yes"}), "dataplane.hostRouting must be bool, got 'yes'"),
    (T(dataplane={"uplinks": "up0"}), "dataplane.uplinks must be a list, got 'up0'"),
    (T(dataplane={"uplinks": ["up0", ""]}), "dataplane.uplinks[1] '': not an interface name"),
    (T(dataplane={"uplinks": ["a-name-too-long-for-linux"]}),
     "dataplane.uplinks[0] a-name-too-long-for-linux: not an interface name"),
    (T(dataplane={"uplinks": [7]}), "dataplane.uplinks[0] 7: not an interface name"),
    (B(stateFile="/tmp/gr.json"), "bgp.stateFile: unknown key here (it belongs in bgp.gracefulRestart)"),
    (B(frobnicate=1), "bgp.frobnicate: unknown key (known: asn, routerId,"),
    ("bgp: {asn: 1, routerId: 192.0.2.2, 7: x}", "bgp.7: unknown key"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _t, m in BAD])
def test_bad_configs(text, message):
    with pytest.raises(ConfigError) as e:
        load(text)
    assert message in str(e.value)
    assert "\n" not in str(e.value)  # one line, however YAML words it


def test_unknown_key_hint():
    with pytest.raises(ConfigError) as e:
        load(B(instalLearned=True))
    assert str(e.value) == "bgp.instalLearned: unknown key (did you mean installLearned?)"


def test_paths_whose_parent_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ConfigError) as e:
        load(B(gracefulRestart={"stateFile": f"{f}/gr.json"}))
    assert str(e.value) == f"bgp.gracefulRestart.stateFile {f}/gr.json: parent {f} is not a directory"
    with pytest.raises(ConfigError) as e:
        load(T(api={"socket": f"{f}/run/moord.sock"}))  # the missing parent could not be made
    assert str(e.value) == (f"api.socket {f}/run/moord.sock: parent {f}/run cannot be created: "
                            f"{f} is not a directory")
    with pytest.raises(ConfigError) as e:
        load(T(ipam={"config": f"{f}/10-moor.conflist"}))
    assert "ipam.config" in str(e.value) and "is not a directory" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load(T(api={"socket": str(f)}))  # never removed to make room for the socket
    assert str(e.value) == f"api.socket {f}: exists and is not a socket (moord replaces only a socket)"
    # missing parents are made at start (/run/moor on a fresh node)
    c = load(B(gracefulRestart={"stateFile": str(tmp_path / "a" / "b" / "gr.json")}))
    assert c.state_file.endswith("/a/b/gr.json")


def test_an_old_socket_at_the_api_path_is_fine(tmp_path):
    path = tmp_path / "moord.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    assert load(T(api={"socket": str(path)})).api_socket == str(path)
    assert load(T(api={"socket": ""})).api_socket == ""  # no API


def test_cni_socket(tmp_path):
    assert load(T()).cni_socket == "/run/moor/cni.sock"
    assert load(T(cni={"socket": ""})).cni_socket == ""  # the plugin always works alone
    assert load(T(cni={"socket": str(tmp_path / "c.sock")})).cni_socket == str(tmp_path / "c.sock")
    with pytest.raises(ConfigError, match="cni.socket run/c.sock: must be an absolute path"):
        load(T(cni={"socket": "run/c.sock"}))
    with pytest.raises(ConfigError, match="cni.sockt: unknown key"):
        load(T(cni={"sockt": "/x"}))


def test_node_forwarding():
    assert load(T()).node.forwarding == "auto"  # the default: IPv4, and IPv6 once it is in use
    for mode in ("auto", "on", "off"):
        assert load(T(node={"forwarding": mode})).node.forwarding == mode
    # YAML 1.1 reads on/off unquoted as booleans: they mean what they say
    base = "bgp: {asn: 65001, routerId: 192.0.2.2}\n"
    assert load(base + "node: {forwarding: off}").node.forwarding == "off"
    assert load(base + "node: {forwarding: on}").node.forwarding == "on"
    assert load(base + "node: {forwarding: auto}").node.forwarding == "auto"
    assert load(base + "node: {}").node.forwarding == "auto"


def test_max_prefixes_reaches_the_peer_config():
    assert load(P({"maxPrefixes": 5})).peers[0].max_prefixes == 5
    assert load(P({})).peers[0].max_prefixes == 0


def test_node_addresses_come_from_the_kernel():
    from dataplane.agent import NodeAddresses
    own = NodeAddresses()
    assert own("127.0.0.1") and not own("192.0.2.254")


WRONG = [None, -1, 0, 1.5, 70000, "", "x", "/", True, [], {}, ["x"], [{"k": 1}], float("nan")]


def _leaves(doc, path=""):
    if isinstance(doc, dict):
        items = [(f"{path}.{k}" if path else k, k, v) for k, v in doc.items()]
    else:
        items = [(f"{path}[{i}]", i, v) for i, v in enumerate(doc)]
    for name, key, val in items:
        yield name, doc, key
        if isinstance(val, (dict, list)):
            yield from _leaves(val, name)


def test_every_value_swapped_for_a_wrong_one_is_refused_by_name_or_accepted(tmp_path):
    """No value anywhere makes load() fail with anything but a one-line ConfigError naming it."""
    base = full(tmp_path)
    n = 0
    for name, _parent, key in list(_leaves(base)):
        for wrong in WRONG:
            doc = copy.deepcopy(base)
            target = doc
            for part in re.findall(r"[^.\[\]]+", name)[:-1]:
                target = target[int(part)] if isinstance(target, list) else target[part]
            target[int(key) if isinstance(target, list) else key] = wrong
            try:
                load(json.dumps(doc, allow_nan=True))
            except ConfigError as e:
                msg = str(e)
                assert "\n" not in msg, msg
                # the field itself, a field inside it (a list replaced by a list of junk), or the
                # field named as the other side of a conflict
                assert name in msg, (name, wrong, msg)
                n += 1
    assert n > 300


def test_environment_variables_fill_in_per_node_values():
    text = "bgp: {asn: 65001, routerId: ${NODE_IP}, peers: [{address: '${TOR}', asn: 65000}]}\n"
    conf = load(expand_env(text, {"NODE_IP": "192.0.2.7", "TOR": "192.0.2.1"}))
    assert conf.local.router_id == "192.0.2.7" and conf.peers[0].address == "192.0.2.1"
    with pytest.raises(ConfigError, match=r"\$\{NODE_IP\}: not set in moord's environment"):
        expand_env(text, {"TOR": "192.0.2.1"})
    assert expand_env("a: $NODE_IP $ {X}", {}) == "a: $NODE_IP $ {X}"  # only ${NAME} is a reference
