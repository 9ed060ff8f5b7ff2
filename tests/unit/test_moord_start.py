"""The real `moord` with bad configs and endpoints it cannot bind: one line on stderr naming the
config key, exit 2, never a traceback; every endpoint bound before any BGP session starts, and a
failed start undoes what it started. Loopback addresses, high ports and private temp paths: no
root, no network namespace."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataplane import agent
from dataplane.agent import StartError, load
from tests.helpers import REPO

TEST_NET = "203.0.113.9"  # TEST-NET-3: on no interface


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listener(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(8)
    return s


def config(tmp: Path, *, peers: list | None = None, metrics: dict | None = None, **bgp) -> dict:
    return {"bgp": {"asn": 65001, "routerId": "192.0.2.2", "listenAddress": "127.0.0.1", "listenPort": free_port(),
                    "peers": peers or [], "advertise": {"podRoutes": False},
                    "gracefulRestart": {"stateFile": str(tmp / "state" / "gr.json")}, **bgp},
            "api": {"socket": str(tmp / "run" / "moord.sock")}, "cni": {"socket": str(tmp / "run" / "cni.sock")},
            "metrics": metrics or {"port": 0}, "probe": {"enabled": False},
            "node": {"forwarding": "off"}}  # the host's netns: read, never written


def moord(path: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dataplane.agent", "--config", str(path), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def write(tmp: Path, conf) -> Path:
    path = tmp / "moord.yaml"
    path.write_text(conf if isinstance(conf, str) else json.dumps(conf))
    return path


def refused(p: subprocess.CompletedProcess, message: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert message in last, p.stderr
    return last


def nonlocal_bind() -> bool:
    try:
        return Path("/proc/sys/net/ipv4/ip_nonlocal_bind").read_text().strip() != "0"
    except OSError:
        return False


# -- bad configs ------------------------------------------------------------------------------------
BAD_FILES = [
    ("bgp:\n  asn: 65001\n  routerId: ''\n", "bgp.routerId '': not an IPv4 address"),
    ("bgp: {asn: 65001, routerId: 192.0.2.2, peers: [{address: 192.0.2.1, asn: 1}, "
     "{address: 192.0.2.3, asn: 1, port: 70000}]}", "bgp.peers[1].port 70000: must be 1..65535"),
    ("bgp: {asn: -1, routerId: 192.0.2.2}", "bgp.asn -1"),
    ("bgp: {asn: 65001, routerId: 192.0.2.2, holdTime: -3}", "bgp.holdTime -3"),
    ("bgp: {asn: 65001, routerId: 192.0.2.2, instalLearned: true}",
     "bgp.instalLearned: unknown key (did you mean installLearned?)"),
    ("bgp: {asn: 65001, routerId: 192.0.2.2, listenPort: 0}", "bgp.listenPort 0"),
    ("bgp: {asn: 65001, routerId: 192.0.2.2, listenAddress: 'my node'}", "bgp.listenAddress 'my node'"),
    ("bgp: {asn: 65001, routerId: 192.0.2.2}\nmetrics: {address: everywhere}", "metrics.address everywhere"),
    ("bgp: {asn: 65001, routerId: 192.0.2.2}\napi: {socket: /tmp}", "api.socket /tmp: is a directory"),
    ("bgp: {asn: 65001, routerId: 192.0.2.2\n", "not YAML"),
    ("", "bgp is missing"),
]


@pytest.mark.parametrize("text,message", BAD_FILES, ids=[m for _t, m in BAD_FILES])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, text, message):
    path = write(tmp_path, text)
    line = refused(moord(path), message)
    assert line.startswith(f"moord: {path}: ")
    assert len(moord(path).stderr.strip().splitlines()) == 1


def test_a_state_file_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("")
    conf = config(tmp_path, gracefulRestart={"stateFile": str(tmp_path / "file" / "gr.json")})
    refused(moord(write(tmp_path, conf)), f"bgp.gracefulRestart.stateFile {tmp_path}/file/gr.json: parent "
                                          f"{tmp_path}/file is not a directory")


def test_files_that_are_no_config(tmp_path):
    refused(moord(tmp_path / "absent.yaml"), "No such file or directory")
    refused(moord(tmp_path), "Is a directory")
    (tmp_path / "bin.yaml").write_bytes(b"bgp: \xff\xfe\x00")
    refused(moord(tmp_path / "bin.yaml"), "not UTF-8")


def test_the_installed_moord_script(tmp_path):
    exe = Path(sys.executable).with_name("moord")
    if not exe.exists():
        pytest.skip(f"{exe} is not installed (pip install -e .)")
    path = write(tmp_path, "bgp: {asn: 65001, routerId: 192.0.2.2, instalLearned: true}")
    p = subprocess.run([str(exe), "--config", str(path)], capture_output=True, text=True, timeout=30)
    refused(p, "bgp.instalLearned: unknown key (did you mean installLearned?)")


# -- bind failures ----------------------------------------------------------------------------------
def test_bgp_port_in_use(tmp_path):
    busy = listener()
    try:
        port = busy.getsockname()[1]
        conf = config(tmp_path, listenPort=port, peers=[{"address": "127.0.0.2", "asn": 65000, "passive": True,
                                                         "gracefulRestart": True}],
                      metrics={"address": "127.0.0.1", "port": free_port()})
        refused(moord(write(tmp_path, conf)),
                f"bgp.listenPort {port}: cannot bind on 127.0.0.1: Address already in use")
    finally:
        busy.close()
    # the API that had started is gone again; the graceful-restart state was never touched
    assert not Path(conf["api"]["socket"]).exists()
    assert not (tmp_path / "state" / "gr.json").exists()


@pytest.mark.skipif(nonlocal_bind(), reason="net.ipv4.ip_nonlocal_bind is set: any address can be bound")
def test_bgp_address_not_on_the_node(tmp_path):
    conf = config(tmp_path, listenAddress=TEST_NET)
    refused(moord(write(tmp_path, conf)), f"bgp.listenAddress {TEST_NET}: cannot bind: Cannot assign requested address")


@pytest.mark.skipif(nonlocal_bind(), reason="net.ipv4.ip_nonlocal_bind is set: any address can be bound")
def test_metrics_address_fails_before_any_bgp_session_starts(tmp_path):
    peer = listener()  # an active peer: a started session would connect here at once
    peer.settimeout(1.0)
    try:
        conf = config(tmp_path, peers=[{"address": "127.0.0.1", "asn": 65000, "port": peer.getsockname()[1]}],
                      metrics={"address": TEST_NET, "port": free_port()})
        line = refused(moord(write(tmp_path, conf)), f"metrics.address {TEST_NET}: cannot bind: ")
        assert line == f"moord: metrics.address {TEST_NET}: cannot bind: Cannot assign requested address"
        with pytest.raises(socket.timeout):
            peer.accept()
    finally:
        peer.close()
    assert not Path(conf["api"]["socket"]).exists()


def test_metrics_port_in_use(tmp_path):
    busy = listener()
    try:
        port = busy.getsockname()[1]
        conf = config(tmp_path, metrics={"address": "127.0.0.1", "port": port})
        refused(moord(write(tmp_path, conf)), f"metrics.port {port}: cannot bind on 127.0.0.1: Address already in use")
    finally:
        busy.close()
    assert not Path(conf["api"]["socket"]).exists()


def test_api_socket_of_a_running_agent_is_left_alone(tmp_path):
    path = tmp_path / "run" / "moord.sock"
    path.parent.mkdir()
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen(1)
    try:
        refused(moord(write(tmp_path, config(tmp_path))),
                f"api.socket {path}: another process (a running moord?) listens on it")
        assert path.is_socket()  # not removed under the agent that owns it
    finally:
        live.close()


def test_a_stale_api_socket_is_replaced(tmp_path):
    path = tmp_path / "run" / "moord.sock"
    path.parent.mkdir()
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(path))
    old.close()  # a killed agent's socket: nobody listens
    p = start(write(tmp_path, config(tmp_path)))
    try:
        wait_log(tmp_path, p, "BGP on")
    finally:
        assert stop(p) == 0


# -- a good start ------------------------------------------------------------------------------------
def start(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dataplane.agent", "--config", str(path), "-v"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(path.with_suffix(".log"), "w"))


def wait_log(tmp: Path, p: subprocess.Popen, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = (tmp / "moord.log").read_text()
        if text in log:
            return log
        assert p.poll() is None, log
        if time.monotonic() > deadline:  # a hang guard, not a speed check
            raise TimeoutError(f"{text!r} never appeared in moord's log: {log[-2000:]}")
        time.sleep(0.05)


def stop(p: subprocess.Popen) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    return p.wait(20)


def test_a_good_start_binds_everything_logs_each_endpoint_and_stops_clean(tmp_path):
    peer = listener()  # the session connects here: sessions start once everything is bound
    peer.settimeout(10)
    mport = free_port()
    conf = config(tmp_path, peers=[{"address": "127.0.0.1", "asn": 65000, "port": peer.getsockname()[1],
                                    "gracefulRestart": True}],
                  metrics={"address": "127.0.0.1", "port": mport})
    conf["bgp"]["gracefulRestart"]["stateFile"] = str(tmp_path / "new" / "dir" / "gr.json")  # made at start
    p = start(write(tmp_path, conf))
    try:
        log = wait_log(tmp_path, p, "BGP on")
        assert f"API on unix:{conf['api']['socket']}" in log
        assert f"metrics on http://127.0.0.1:{mport}/metrics" in log
        assert f"BGP on 127.0.0.1:{conf['bgp']['listenPort']}, 1 peer(s)" in log
        assert f"creating {tmp_path}/new/dir for bgp.gracefulRestart.stateFile" in log
        assert (tmp_path / "new" / "dir" / "gr.json").exists()
        conn, _ = peer.accept()
        conn.close()
        with socket.create_connection(("127.0.0.1", mport), timeout=10) as m:
            m.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert m.recv(64).startswith(b"HTTP/1.1 200 OK")
    finally:
        rc = stop(p)
        peer.close()
    log = (tmp_path / "moord.log").read_text()
    assert rc == 0 and "Traceback" not in log, log
    assert not Path(conf["api"]["socket"]).exists()
    assert not (tmp_path / "new" / "dir" / "gr.json").exists()  # a full shutdown


# -- a start that fails after the API, the metrics and the state file: all undone -------------------
def test_a_failed_start_undoes_what_it_started(tmp_path, monkeypatch):
    previous = json.dumps({"bootId": "another-boot", "pid": 1})
    monkeypatch.setattr(agent, "_check_bgp_bind", lambda address, port: None)
    began: list = []
    real = agent.restart.begin
    monkeypatch.setattr(agent.restart, "begin", lambda path: began.append(path) or real(path))
    for state in (previous, None):
        conf = config(tmp_path, peers=[{"address": "127.0.0.2", "asn": 65000, "passive": True,
                                        "gracefulRestart": True}],
                      metrics={"address": "127.0.0.1", "port": free_port()})
        sf = tmp_path / "state" / "gr.json"
        sf.parent.mkdir(exist_ok=True)
        if state is None:
            sf.unlink(missing_ok=True)
        else:
            sf.write_text(state)
        c = load(json.dumps(conf))
        busy = listener(c.listen_port)  # taken between the check and the speaker's own bind
        began.clear()
        try:
            with pytest.raises(StartError) as e:
                asyncio.run(agent.run(c, asyncio.Event()))
        finally:
            busy.close()
        assert str(e.value) == f"bgp.listenPort {c.listen_port}: cannot bind on 127.0.0.1: Address already in use"
        assert began == [c.state_file]  # it had got that far
        assert not Path(c.api_socket).exists()
        with socket.socket() as s:  # the metrics listener is closed
            s.bind((c.metrics_address, c.metrics_port))
        # the graceful-restart state is as the previous agent left it (or absent, as it was)
        assert (sf.read_text() if sf.exists() else None) == state
